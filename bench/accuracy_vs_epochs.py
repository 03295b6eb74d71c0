"""Validation accuracy against training length for a CIFAR config, the data held on the device.

Answers in minutes on an accelerator whether an accuracy target is a matter of this machine's
speed or of the model and the data (issue #7): ResNet-20 from 15 to 182 epochs is ~10 M images,
hours on 2 CPU cores, minutes on one GPU. Two steps:

    # where jresnet.data runs (TensorFlow): the config's two splits, still encoded, and its recipe
    python -m bench.accuracy_vs_epochs --mode=pack --config=configs/cifar10_resnet20_budget.py \
        --config.data.path=../shared/datasets/cifar10_jpeg --pack=/tmp/cifar10_split.npz
    # anywhere with jax, flax, optax, ml_collections and Pillow (TensorFlow is not imported)
    python -m bench.accuracy_vs_epochs --pack=/tmp/cifar10_split.npz --epochs=15,30,60 \
        [--config=bench/packed_config.py:/tmp/cifar10_split.npz --config.key=value ...]

Training follows the recipe with jresnet's own model, optimiser, schedule and jitted train step
(`parallel.JitMesh` over every device). Only the input differs from train.py: Pillow decodes the
images (JPEG values differ from TensorFlow's by about a level, at most 5 on CIFAR-10), each epoch
is a seeded permutation with batches running across epoch boundaries, and the 'cifar' augmentation
(zero padding, random crop, flip) runs in JAX on the device. Every validation image is counted
(the last batch padded and masked). One JSON line per evaluation; each run is appended to --out.
"""

import json
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from bench import device_batches, report
from jresnet.training import huge_pages, recipe

config_flags.DEFINE_config_file(
    "config", None, "pack: the config whose splits and recipe are packed; train: the recipe "
    "(default: the packed one; change it with bench/packed_config.py:<pack>).", lock_config=True)
flags.DEFINE_enum("mode", "train", ["pack", "train"], "Write the pack, or train from it.")
flags.DEFINE_string("pack", None, "The .npz written by --mode=pack.")
flags.DEFINE_list("epochs", [], "Training lengths in epochs, one run each (default: the "
                  "recipe's num_epochs).")
flags.DEFINE_integer("evals", 10, "Evaluations per run, evenly spaced; the last at the end.")
flags.DEFINE_string("out", "bench/results.jsonl", "JSON lines file each run is appended to.")
flags.mark_flag_as_required("pack")
FLAGS = flags.FLAGS


def train_run(cfg: ConfigDict, data: dict, num_classes: int, epochs: float,
              evals: int) -> dict:
  """One run of `epochs` epochs; its curve and final validation accuracy."""
  cfg = ConfigDict(cfg.to_dict())
  cfg.num_epochs, cfg.num_train_steps = epochs, None
  if cfg.parallel != "jit":
    raise app.UsageError(f"parallel={cfg.parallel!r}: the batches made on the device are global "
                         "arrays on the jit path's mesh; use --config.parallel=jit")
  r = recipe.build(cfg, num_classes, data["train"][0].shape[1:], len(data["train"][1]))
  runner, total, steps_per_epoch = r.runner, r.total_steps, r.steps_per_epoch
  state = r.create_state()
  batches = device_batches.Batches(runner, data, cfg)
  eval_at = {max(1, round(total * k / evals)) for k in range(1, evals + 1)}

  curve, train_s, first_step_s = [], 0.0, None
  start = time.perf_counter()
  for step in range(1, total + 1):
    state, metrics = runner.train_step(state, batches.train(step - 1))
    if step == 1:
      jax.block_until_ready(state)
      first_step_s = time.perf_counter() - start  # compiling, mostly
      start = time.perf_counter()
    if step not in eval_at:
      continue
    host = jax.device_get(metrics)
    train_s += time.perf_counter() - start
    val = r.evaluate(state.eval_variables(r.use_ema), batches.evaluation())
    row = {"epoch": round(step / steps_per_epoch, 2), "step": step,
           "train_loss": round(float(host["loss"]), 4),
           "train_accuracy": round(float(host["accuracy"]), 4),
           "val_loss": round(val["loss"], 4), "val_accuracy": val["accuracy"],
           "images_per_s": round((step - 1) * cfg.batch_size / max(train_s, 1e-9), 1),
           "eta_min": round((total - step) * train_s / max(step - 1, 1) / 60, 1)}
    curve.append(row)
    print(json.dumps(row), flush=True)
    if not np.isfinite(host["loss"]):
      print(f"non-finite loss at step {step}: run stopped")
      break
    start = time.perf_counter()
  return {"bench": "accuracy_vs_epochs", "config": r.config.to_dict(), "epochs": epochs,
          "steps": curve[-1]["step"], "precision": r.config.precision,
          "device_count": jax.device_count(), "first_step_s": round(first_step_s, 2),
          "train_minutes": round(train_s / 60, 2), "val_accuracy": curve[-1]["val_accuracy"],
          "curve": curve}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # tfds narrates every split it builds at INFO
  if FLAGS.mode == "pack":
    if FLAGS.config is None:
      raise app.UsageError("--mode=pack needs --config, the config whose splits are packed.")
    device_batches.pack(FLAGS.config, FLAGS.pack)
    return
  with np.load(FLAGS.pack) as f:
    cfg = FLAGS.config if FLAGS.config is not None else ConfigDict(json.loads(str(f["config"])))
    data = {name: device_batches.load_split(f, name) for name in device_batches.SPLITS}
    num_classes = int(f["num_classes"])
  results = []
  for epochs in [float(e) for e in FLAGS.epochs] or [cfg.num_epochs]:
    conditions = report.conditions()
    result = {**train_run(cfg, data, num_classes, epochs, FLAGS.evals),
              "machine": report.machine(), **conditions}
    report.append_jsonl(FLAGS.out, [result])
    results.append(result)
  print(report.table([{**r, "epochs": f"{r['epochs']:g}"} for r in results],
                     ["epochs", "steps", "precision", "first_step_s", "train_minutes",
                      "val_accuracy"]))
  print(f"# {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  app.run(main)
