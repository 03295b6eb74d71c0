"""train.py's loop against its own step: images/s of a run after compilation, beside its step
alone, in one run.

    python -m bench.loop_rate                                  # ResNet-20 CIFAR, batch 128
    python -m bench.loop_rate --workloads resnet50 --steps 120  # ResNet-50, batch 256 (a GPU)
    python -m bench.loop_rate --arrays runs/gpu_carry/cifar10_45k5k.npz   # CIFAR's own images
    python -m bench.loop_rate --config.steps_per_call=16       # any train.py field, for both

Each workload is first trained by `train.py` itself for `--steps` steps (a subprocess, as a user
runs it: huge pages, the device path, records), with a log every `--log-every` steps and one
evaluation and checkpoint at the end; `loop` is the median images/s of its metrics.jsonl after
the first log (compilation and warm-up excluded). Then, in this process, the run's own
config.json builds the same runner and dataset (`loop.build`, `Dataset.train_batches`), its
steps loaded from the run's compilation cache, and times:
  step       the train step alone, on one batch already on the devices;
  with_data  the step fed by `train_batches`, a new batch gathered and augmented on the devices
             each step (what the loop adds to it: logging, the stop check, the progress bar).
`loop_vs_step` is loop over step; a loop that keeps pace with its step is >= 0.95.
Workloads:
  resnet20  configs/cifar10_resnet20.py at batch 128: CIFAR-10's images from `--arrays` (an array
            file of `train.py --mode=write_arrays`), or synthetic 32x32 images without it.
  resnet50  configs/imagenet_resnet50.py at batch 256 on synthetic 224x224 images held on the
            devices, the imagenet preset's crops made there.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import jax

from bench import report, timing
from configs import default
from jresnet import data
from jresnet.training import huge_pages, loop, records, run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = {
    "resnet20": ("configs/cifar10_resnet20.py", 128),
    "resnet50": ("configs/imagenet_resnet50.py", 256),
}


def overrides(workload: str, batch: int, steps: int, log_every: int, arrays: str | None,
              cache: str) -> list:
  """The command-line fields of the workload's run: `steps` steps, logged every `log_every`, one
  evaluation and checkpoint at the end, on data held in memory, compiled into `cache`."""
  common = [f"--config.batch_size={batch}", f"--config.num_train_steps={steps}",
            f"--config.log_every_steps={log_every}", f"--config.eval_every_steps={steps}",
            f"--config.checkpoint_every_steps={steps}", f"--config.compilation_cache_dir={cache}"]
  if workload == "resnet20" and arrays:
    return common + ["--config.data.source=arrays", f"--config.data.path={arrays}"]
  shape = "(32, 32, 3)" if workload == "resnet20" else "(224, 224, 3)"
  return common + ["--config.data.source=synthetic", f"--config.data.image_shape={shape}",
                   f"--config.data.num_examples={8 * batch}", "--config.data.train_split=train",
                   "--config.data.eval_split=test"]


def loop_rate(workdir: str) -> float:
  """Median train images/s of a finished run's records, after its first log."""
  rates = [row["images_per_sec"] for row in records.read_metrics(
      os.path.join(workdir, records.METRICS_FILE)) if row["split"] == "train"][1:]
  if not rates:
    raise SystemExit(f"{workdir}: fewer than two train logs; give more --steps")
  return statistics.median(rates)


def step_rates(workdir: str, repeats: int) -> dict:
  """images/s of the run's step alone and fed by its dataset, built from its config.json."""
  config = run_config.from_workdir(default.get_config(), workdir)
  jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
  dataset = data.open(config.data)
  config, runner = loop.build(config, dataset.info)
  state = [loop.init_state(config, runner, dataset.info.image_shape)]
  batches, train_call = loop.train_batches(config, runner, dataset)  # as the loop calls its step
  batch = next(batches)

  def step():
    state[0], _ = train_call(state[0], batch)

  def step_with_data():
    state[0], _ = train_call(state[0], next(batches))

  def sync():
    jax.block_until_ready(state[0])

  images = config.batch_size * runner.replicas * config.steps_per_call
  return {"step": timing.throughput(step, sync, images, repeats)["images_per_s"],
          "with_data": timing.throughput(step_with_data, sync, images, repeats)["images_per_s"]}


def measure(workload: str, args, fields: list[str]) -> dict:
  config_file, batch = WORKLOADS[workload]
  batch = args.batch or batch
  workdir = os.path.join(args.workdirs, f"loop_{workload}")
  cache = os.path.join(args.workdirs, "xla_cache")
  command = [sys.executable, "train.py", "--config", config_file, "--workdir", workdir,
             *overrides(workload, batch, args.steps, args.log_every, args.arrays, cache), *fields]
  subprocess.run(command, cwd=REPO, env=args.run_env, check=True)
  rates = {"loop": round(loop_rate(workdir), 2), **step_rates(workdir, args.repeats)}
  return {"bench": "loop_rate", "workload": workload, "batch": batch, "steps": args.steps,
          "log_every": args.log_every, **rates,
          "loop_vs_step": round(rates["loop"] / rates["step"], 3),
          "with_data_vs_step": round(rates["with_data"] / rates["step"], 3),
          "command": " ".join(command[1:])}


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workloads", default="resnet20", help=f"of {', '.join(WORKLOADS)}")
  parser.add_argument("--batch", type=int, help="instead of the workload's")
  parser.add_argument("--steps", type=int, default=60, help="steps of each run")
  parser.add_argument("--log-every", type=int, default=10)
  parser.add_argument("--arrays", help="resnet20: CIFAR-10 as an array file (default: synthetic)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workdirs", help="the runs' workdirs (default: a temporary directory)")
  parser.add_argument("--out", default="bench/results.jsonl", help="JSON lines appended here")
  args, fields = parser.parse_known_args(argv)
  if any(not field.startswith("--config.") for field in fields):
    parser.error(f"unrecognised arguments {fields}: besides its own, --config.<field>=<value> of "
                 "train.py")
  workloads = args.workloads.split(",")
  if set(workloads) - set(WORKLOADS):
    parser.error(f"--workloads takes {', '.join(WORKLOADS)}; got {args.workloads!r}")
  if args.steps < 3 * args.log_every:
    parser.error("--steps must be at least 3 x --log-every (the first log is warm-up)")
  args.workdirs = args.workdirs or tempfile.mkdtemp(prefix="loop_rate_")
  # train.py runs in the environment given; this process, which measures each step after its run
  # (before the next), takes the device's memory only as it needs it: the next run gets the rest.
  args.run_env = dict(os.environ)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # (read when jax starts)
  machine = report.machine()
  rows = [{**report.conditions(), **measure(workload, args, fields), **machine}
          for workload in workloads]
  print(report.table(rows, ["workload", "batch", "step", "with_data", "loop", "loop_vs_step",
                            "with_data_vs_step", "loadavg_1m"]))
  print(f"# images/s; {machine['jax_device']}, {machine['cpu_model']}, {machine['cores']} cores, "
        f"jax {machine['jax']}")
  report.append_jsonl(args.out, rows)
  return rows


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  main()
