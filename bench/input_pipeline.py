"""Throughput of the training input stream of an image folder (CIFAR or ImageNet preset), in
images/s.

    python -m bench.input_pipeline --folder /work/shared/datasets/cifar10_jpeg/train \
        --batch 128 --steps 50 --threads 2 [--cold]

--folder is one split of an image folder (the directory holding the class directories). The first
load (listing, decoding or reading the decoded cache, first batch) is timed apart; --cold decodes
into a fresh cache directory, as the very first run on a machine does. Then, after --warmup
batches, --windows windows of --steps batches are timed and their median rate printed. One JSON
line per run is appended to --results.

In the same run, the consumer: the project's jitted CIFAR ResNet-20 train step at the same batch
(on a device-resident batch, so it is the step alone), and the ratio input/consumer: how many times
over the pipeline can feed the model on this machine (--no-consumer skips it).
"""

import argparse
import os
import statistics
import tempfile
import time

import jresnet.data as jd
from bench import report
from configs import default
from jresnet.training import huge_pages


def folder_config(folder: str, threads: int | None, cache_dir: str, preset: str = "cifar"):
  root, split = os.path.split(os.path.abspath(folder.rstrip("/")))
  cfg = default.data_config()
  cfg.update(source="folder", path=root, train_split=split, eval_split=split, preprocess=preset,
             threads=threads, cache_dir=cache_dir)
  if preset == "imagenet":  # as on ImageNet, which fits no memory: decode every file, every epoch
    cfg.update(cache=False, cache_dir="")
  return cfg


def first_load(cfg, batch: int, seed: int = 0):
  """The train iterator after its first batch, and how long that took."""
  start = time.perf_counter()
  batches = jd.train_batches(cfg, global_batch_size=batch, seed=seed)
  next(batches)
  return batches, {"first_load_s": round(time.perf_counter() - start, 3)}


def input_rate(batches, batch: int, steps: int, windows: int, warmup: int) -> dict:
  """Steady-state images/s of the iterator: median (and spread) over timed windows."""
  for _ in range(warmup):
    next(batches)
  rates = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(steps):
      next(batches)
    rates.append(steps * batch / (time.perf_counter() - start))
  return {"input_images_per_s": round(statistics.median(rates), 1),
          "input_images_per_s_min": round(min(rates), 1),
          "input_images_per_s_max": round(max(rates), 1)}


def consumer_rate(batch: int, steps: int, windows: int) -> dict:
  """Images/s of the CIFAR ResNet-20 train step that this stream feeds."""
  import jresnet  # noqa: PLC0415 (keeps the input-only run free of JAX compilation)
  from bench import project_step, timing  # noqa: PLC0415

  _, step, sync = project_step.train(jresnet.CifarResNet20(), batch, 32)
  rate = timing.throughput(step, sync, batch, windows, min_steps=steps, max_steps=steps)
  return {"train_step_images_per_s": round(rate["images_per_s"], 1)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--folder", required=True, help="<root>/<split> of an image folder")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=50, help="batches per timed window")
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=20, help="batches before timing")
  parser.add_argument("--threads", type=int, default=None, help="TF threads (default: half)")
  parser.add_argument("--preset", default="cifar", help="cifar, or imagenet (random-resized "
                      "crops to 224 from the JPEG files, streamed: see bench.make_jpegs)")
  parser.add_argument("--cache-dir", default=default.data_config().cache_dir)
  parser.add_argument("--cold", action="store_true", help="decode into a fresh cache directory")
  parser.add_argument("--results", default="bench/results.jsonl")
  parser.add_argument("--no-consumer", dest="consumer", action="store_false",
                      help="skip the ResNet-20 train-step measurement")
  parser.add_argument("--consumer-steps", type=int, default=5, help="train steps per window")
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as fresh:
    cfg = folder_config(args.folder, args.threads, fresh if args.cold else args.cache_dir,
                        args.preset)
    batches, load = first_load(cfg, args.batch)
    print(f"first load ({'cold' if args.cold else 'cache ' + cfg.cache_dir}): "
          f"{load['first_load_s']:.1f} s")
    rate = input_rate(batches, args.batch, args.steps, args.windows, args.warmup)
    print(f"input: {rate['input_images_per_s']:.0f} images/s (median of {args.windows} windows "
          f"of {args.steps} x {args.batch}; min {rate['input_images_per_s_min']:.0f}, "
          f"max {rate['input_images_per_s_max']:.0f}), threads={args.threads or 'default'}")
  if args.consumer:
    rate.update(consumer_rate(args.batch, args.consumer_steps, args.windows))
    rate["input_over_train_step"] = round(
        rate["input_images_per_s"] / rate["train_step_images_per_s"], 1)
    print(f"CIFAR ResNet-20 train step: {rate['train_step_images_per_s']:.0f} images/s "
          f"(median of {args.windows} windows of {args.consumer_steps} x {args.batch}); the "
          f"input stream delivers {rate['input_over_train_step']:.1f}x that")

  report.append_jsonl(args.results, [{"bench": "input_pipeline", "machine": report.machine(),
                                       **report.conditions(), **vars(args), **load, **rate}])


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  main()
