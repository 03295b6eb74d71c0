"""train.py's step fed by each input path, side by side in one process: tf.data on the host
against the split batched on the devices (config.data.on_device), alternating blocks of steps so
that both see the same machine.

    python -m bench.input_paths --config configs/cifar10_resnet20_budget.py \
        --config.data.path=../shared/datasets/cifar10_jpeg [--blocks 6] [--steps 20]

Both paths run the config's own recipe, runner and step (`loop.plan`), from their own stream
(`data.train_batches` through `runner.feed`; `DeviceSplit.train_batches`); images/s per block,
median over the blocks after one warm-up block each (compilation, the pipeline filling up).
"""

import statistics
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from bench import report
from jresnet import data
from jresnet.training import huge_pages, loop, recipe

config_flags.DEFINE_config_file("config", None, "The training config.", lock_config=True)
flags.DEFINE_integer("blocks", 6, "Timed blocks per path (alternating), after a warm-up block.")
flags.DEFINE_integer("steps", 20, "Train steps per block.")
flags.DEFINE_string("out", "bench/results.jsonl", "JSON lines appended here.")
FLAGS = flags.FLAGS


def streams(p: recipe.Recipe) -> dict:
  cfg = p.config
  on_device, _ = data.open_device_splits(_with(cfg.data, on_device="true"),
                                         p.runner.batch_sharding, (cfg.data.train_split,))
  host = loop.feed_host_batches(p, data.train_batches(cfg.data, global_batch_size=cfg.batch_size,
                                                     seed=cfg.seed))
  device = on_device[cfg.data.train_split].train_batches(global_batch_size=cfg.batch_size,
                                                         seed=cfg.seed)
  return {"host (tf.data)": host, "device": device}


def _with(cfg, **fields):
  copy = cfg.copy_and_resolve_references()
  copy.update(fields)
  return copy


def main(argv):
  del argv
  p = loop.plan(FLAGS.config)
  paths = streams(p)
  states = {name: p.create_state() for name in paths}
  rates = {name: [] for name in paths}
  for block in range(FLAGS.blocks + 1):
    for name, batches in paths.items():
      start = time.perf_counter()
      for _ in range(FLAGS.steps):
        states[name], metrics = p.runner.train_step(states[name], next(batches))
      jax.block_until_ready(metrics)
      rate = FLAGS.steps * p.config.batch_size / (time.perf_counter() - start)
      if block:  # block 0 compiles and fills the pipelines
        rates[name].append(round(rate, 1))
  rows = [{"path": name, "images_per_s": statistics.median(r), "blocks": r,
           "steps_per_block": FLAGS.steps, "batch": p.config.batch_size} for name, r in
          rates.items()]
  host, device = (row["images_per_s"] for row in rows)
  rows[1]["vs_host"] = round(device / host, 3)
  machine, conditions = report.machine(), report.conditions()
  report.append_jsonl(FLAGS.out, [{**row, "bench": "input_paths", "machine": machine,
                                   **conditions} for row in rows])
  print(f"# {machine['cpu_model']}, {machine['cores']} cores; load {conditions['loadavg_1m']}")
  print(report.table(rows, ["path", "batch", "images_per_s", "vs_host", "blocks"]))


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  app.run(main)
