"""ImageNet-style JPEG preprocessing on the host, images/s on one core and on all cores, on the
same files in one run: the raw decode, the previous preset (bench.previous_imagenet_preset),
jresnet's train and eval streams on the full-size files and on resized copies, a PyTorch
DataLoader worker (bench.torchvision_worker), and where the train stream's time goes.

    python -m bench.make_jpegs --out /tmp/imagenet_like --per-class 150
    python -m bench.jpeg_input --folder /tmp/imagenet_like [--sides 256,320] [--alt-quality 95]
                               [--feed 5600]

The streams are the product's (`jresnet.data.train_batches` / `eval_batches` with data.threads
= the thread count, folder source, imagenet preset, streamed); the other rows run the same
tf.data settings (`tf_runtime.options`) over the same files. The copies are written at the
copy's default JPEG quality (resized_copy.QUALITY), the first side also at --alt-quality.
Every row is timed once in each of ROUNDS rounds over all the rows, so that a slow spell of the
machine does not hit every measurement of one row; a row's figure is its best round, printed
beside its worst round over its best. --feed: the images/s a consumer takes (an H100's
ResNet-50 bf16 step, BENCHMARKS.md), to say how many cores feed it.
"""

import argparse
import functools
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from PIL import Image

import jresnet.data as jd
from bench import previous_imagenet_preset as previous
from bench import report
from configs import default
from jresnet.data import presets, resized_copy, tf_runtime
from jresnet.data import transforms as T

BATCH = 128
ROUNDS = 3  # each row's figure is its best round
MIN_BATCHES = 8  # per epoch: a stream is timed over at least 5 batches after 2, inside one epoch
PRESET = presets.Preset("imagenet", (224, 224, 3), presets.IMAGENET_MEAN, presets.IMAGENET_STD,
                        presets.RANDOM_RESIZED, True, presets.CENTER)


def _encoded(data: tf.Tensor) -> T.Encoded:
  return T.Encoded(data, lambda e: tf.io.decode_image(e, 3, expand_animations=False), 3)


def _seed(i):
  return tf.stack([i, tf.constant(0, tf.int64)])


def window_only(i, data):
  return T.crop(_encoded(data), T.inception_window(_seed(i)))


def window_and_resize(i, data):
  return T.resize_crop(window_only(i, data), (224, 224))


def window_resize_antialiased(i, data):
  return tf.image.resize(window_only(i, data), (224, 224), antialias=True)


def window_fast_idct(i, data):
  box = T.inception_window(_seed(i))(tf.io.extract_jpeg_shape(data)[:2])
  crop = tf.io.decode_and_crop_jpeg(data, box, channels=3, dct_method="INTEGER_FAST")
  return T.resize_crop(crop, (224, 224))


def eval_antialiased(i, data):
  window = T.crop(_encoded(data), T.center_window((224, 224), presets.CENTER_CROP_FRACTION))
  return T.to_uint8(tf.image.resize(window, (224, 224), antialias=True))


def train_normalised_on_host(i, data):
  image = tf.cast(T.train_image(PRESET, _encoded(data), _seed(i)), tf.float32)
  return (image - previous.MEAN) / previous.STD


# name -> one example's work, (index, file bytes) -> image; run over the files with tf.data.
PER_EXAMPLE = {
    "raw decode (tf.io.decode_jpeg)": lambda i, data: tf.io.decode_jpeg(data, channels=3),
    "previous train preset": lambda i, data: previous.train_image(data, _seed(i)),
    "train: window decode only": window_only,
    "train: window + bilinear resize": window_and_resize,
    "train: jresnet transform (uint8 out)": lambda i, d: T.train_image(PRESET, _encoded(d),
                                                                       _seed(i)),
    "alt: train resize always antialiased": window_resize_antialiased,
    "alt: INTEGER_FAST IDCT": window_fast_idct,
    "alt: float32 normalised on host": train_normalised_on_host,
    "previous eval preset": lambda i, data: previous.eval_image(data),
    "eval: jresnet transform (uint8 out)": lambda i, d: T.eval_image(PRESET, _encoded(d)),
    "alt: eval resize always antialiased": eval_antialiased,
}


def _rate(batches, images: int) -> float:
  """Images/s of one pass over `batches` (an iterable of `images` images)."""
  start = time.perf_counter()
  for _ in batches:
    pass
  return images / (time.perf_counter() - start)


def _batchable(fn):
  """Images of differing sizes (a decode, a window) reduced to their shape, which needs them."""
  def example(i, data):
    image = fn(i, data)
    return image if image.shape.is_fully_defined() else tf.shape(image)
  return example


def per_example_rate(files: list[str], fn, threads: int, options=None,
                     parallel_calls=tf.data.AUTOTUNE) -> float:
  """`fn` over the files, with jresnet's tf.data options for `threads` unless `options`: one
  pass over them, timed after three batches."""
  ds = tf.data.Dataset.from_tensor_slices(files).repeat().map(tf.io.read_file).enumerate()
  ds = ds.map(_batchable(fn), num_parallel_calls=parallel_calls).batch(BATCH)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(options or tf_runtime.options(threads))
  batches = iter(ds)
  for _ in range(3):  # graph building, first files, the autotuner's first settings
    next(batches)
  steps = len(files) // BATCH
  return _rate((next(batches) for _ in range(steps)), steps * BATCH)


def settings_timers(files: list[str], threads: int) -> dict[str, Callable[[], float]]:
  """The train transform under other tf.data settings than jresnet's (tf_runtime.options)."""
  fn = PER_EXAMPLE["train: jresnet transform (uint8 out)"]
  shared_intra_op = tf_runtime.options(threads)
  shared_intra_op.threading.max_intra_op_parallelism = 0  # tf.data's default
  global_pool = tf.data.Options()
  global_pool.deterministic = True
  rate = functools.partial(per_example_rate, files, fn, threads)
  return {
      "settings: jresnet's (private pool, intra-op 1, AUTOTUNE)": rate,
      "settings: intra-op parallelism unbounded": functools.partial(rate, shared_intra_op),
      "settings: TensorFlow's global pool": functools.partial(rate, global_pool),
      "settings: parallel calls = threads": functools.partial(rate, parallel_calls=threads),
  }


def stream_config(root: str, threads: int):
  cfg = default.data_config()
  cfg.update(source="folder", path=root, train_split="train", eval_split="train",
             preprocess="imagenet", cache=False, cache_dir="", threads=threads)
  return cfg


def stream_rate(stream, images: int) -> float:
  """Images/s of a fresh stream, timed inside its first epoch after two batches (so neither
  the pipeline's start nor an epoch boundary is timed: on ImageNet they happen once in 10,000
  batches)."""
  steps = images // BATCH - 3
  next(stream), next(stream)
  return _rate((next(stream) for _ in range(steps)), steps * BATCH)


def train_stream_rate(root: str, threads: int, images: int) -> float:
  cfg = stream_config(root, threads)
  return stream_rate(jd.train_batches(cfg, global_batch_size=BATCH, seed=0), images)


def eval_stream_rate(root: str, threads: int, images: int) -> float:
  cfg = stream_config(root, threads)
  return stream_rate(iter(jd.eval_batches(cfg, global_batch_size=BATCH)), images)


def torchvision_rate(files: list[str], threads: int, uint8: bool) -> float:
  import torch  # noqa: PLC0415 (only these rows need torch)

  from bench import torchvision_worker  # noqa: PLC0415

  torch.set_num_threads(1)
  loader = torchvision_worker.loader(files, BATCH, 0 if threads == 1 else threads, uint8)
  next(iter(loader))
  return _rate(loader, len(files))


def copy_name(side: int, quality: int = resized_copy.QUALITY) -> str:
  return f"copy <= {side} px" + ("" if quality == resized_copy.QUALITY else f", quality {quality}")


def measure(root: str, files: list[str], copies: dict[str, str]) -> dict[str, list[float]]:
  """Every row's images/s in each of ROUNDS rounds over all rows (so that a slow spell of the
  machine does not take every measurement of one row), with as many threads (DataLoader
  workers) as this process has cores."""
  threads = report.cores()
  tf_runtime.configure(threads)
  n = len(files)
  timers = {name: functools.partial(per_example_rate, files, fn, threads)
            for name, fn in PER_EXAMPLE.items()}
  timers["jresnet train stream"] = functools.partial(train_stream_rate, root, threads, n)
  for name, copy in copies.items():
    timers[f"jresnet train stream, {name}"] = functools.partial(train_stream_rate, copy, threads, n)
  timers["jresnet eval stream"] = functools.partial(eval_stream_rate, root, threads, n)
  timers["PIL + torchvision worker"] = functools.partial(torchvision_rate, files, threads, False)
  timers["PIL + torchvision worker, uint8 out"] = functools.partial(torchvision_rate, files,
                                                                    threads, True)
  if threads > 1:
    timers.update(settings_timers(files, threads))
  rounds = {name: [] for name in timers}
  for _ in range(ROUNDS):
    for name, timer in timers.items():
      rounds[name].append(timer())
  return rounds


def measure_on(cores: set[int], args, copies: dict[str, str],
               scratch: str) -> dict[str, list[float]]:
  """`measure` in a fresh process pinned to `cores` (every thread it starts inherits that), so
  that one thread's rows are one core's."""
  out = os.path.join(scratch, f"rows{len(cores)}.json")
  command = [sys.executable, "-m", "bench.jpeg_input", "--folder", args.folder,
             "--copies", json.dumps(copies), "--rows-out", out]
  subprocess.run(command, check=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
  with open(out) as f:
    return json.load(f)


def describe(files: list[str]) -> dict:
  sizes = [os.path.getsize(f) for f in files]
  shapes = [Image.open(f).size for f in files]
  return {"files": len(files), "mean_kb": round(np.mean(sizes) / 1e3, 1),
          "mean_width": round(np.mean([w for w, _ in shapes])),
          "mean_height": round(np.mean([h for _, h in shapes]))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--folder", required=True, help="an image folder with a 'train' split")
  parser.add_argument("--sides", default="256,320", help="resized copies to measure")
  parser.add_argument("--alt-quality", type=int, default=95,
                      help="the first side's copy also at this JPEG quality (0: not)")
  parser.add_argument("--feed", type=float, default=5600, help="images/s the consumer takes")
  parser.add_argument("--results", default="bench/results.jsonl")
  parser.add_argument("--copies", help=argparse.SUPPRESS)  # a measuring subprocess's inputs
  parser.add_argument("--rows-out", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  root = os.path.abspath(args.folder)
  files = sorted(glob.glob(os.path.join(root, "train", "*", "*.jp*g")))
  if not files:
    raise SystemExit(f"no JPEG files in {root}/train/<class>/: make them with bench.make_jpegs")
  if len(files) < MIN_BATCHES * BATCH:
    raise SystemExit(f"{len(files)} files make too few batches of {BATCH} to time a stream "
                     f"(it needs {MIN_BATCHES * BATCH}): write more with bench.make_jpegs "
                     "--per-class")
  if args.rows_out:
    copies = json.loads(args.copies)
    with open(args.rows_out, "w") as f:
      json.dump(measure(root, files, copies), f)
    return
  cores = os.sched_getaffinity(0)
  all_cores = len(cores)
  described = describe(files)
  print(f"{described['files']} JPEGs, mean {described['mean_kb']} KB, mean "
        f"{described['mean_width']}x{described['mean_height']}; batches of {BATCH}")

  with tempfile.TemporaryDirectory() as scratch:
    sides = [int(side) for side in args.sides.split(",")]
    written = [(side, resized_copy.QUALITY) for side in sides]
    written += [(sides[0], args.alt_quality)] if args.alt_quality else []
    copies = {}
    for side, quality in written:
      name, out = copy_name(side, quality), os.path.join(scratch, f"resized{side}q{quality}")
      resized_copy.write(stream_config(root, all_cores), out, side, quality)
      copied = describe(glob.glob(os.path.join(out, "*", "*", "*")))
      print(f"{name}: mean {copied['mean_kb']} KB, mean "
            f"{copied['mean_width']}x{copied['mean_height']}")
      copies[name] = out
    rounds = {}  # name -> cores -> images/s of each round
    for part in ({min(cores)}, cores) if all_cores > 1 else (cores,):
      for name, rates in measure_on(part, args, copies, scratch).items():
        rounds.setdefault(name, {})[len(part)] = rates
  rows = {name: {t: max(rates) for t, rates in by_cores.items()}
          for name, by_cores in rounds.items()}

  threads = sorted({1, all_cores})
  print(f"\nimages/s, the best of {ROUNDS} rounds (the worst round over the best)")
  print(f"{'':56s}" + "".join(f"{f'{t} core(s)':>22s}" for t in threads))
  for name, by_cores in rounds.items():
    cells = [f"{max(by_cores[t]):14.1f} ({min(by_cores[t]) / max(by_cores[t]):.2f})"
             if t in by_cores else "" for t in threads]
    print(f"{name:56s}" + "".join(f"{c:>22s}" for c in cells))
  one = {name: rates[1] for name, rates in rows.items() if 1 in rates}
  stream, decode = one["jresnet train stream"], one["raw decode (tf.io.decode_jpeg)"]
  ratios = {
      "train_stream_over_raw_decode": stream / decode,
      "train_stream_over_torchvision": stream / one["PIL + torchvision worker"],
      "train_stream_over_torchvision_uint8": stream / one["PIL + torchvision worker, uint8 out"],
      "eval_stream_over_previous_eval": one["jresnet eval stream"] / one["previous eval preset"],
      **{f"copy{side}_over_full_size": one[f"jresnet train stream, {copy_name(side)}"] / stream
         for side in sides},
      "cores_to_feed": args.feed / stream,
      **{f"cores_to_feed_copy{side}": args.feed / one[f"jresnet train stream, {copy_name(side)}"]
         for side in sides},
  }
  print("\none thread: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
  report.append_jsonl(args.results, [{
      "bench": "jpeg_input", "machine": report.machine(), **report.conditions(), **described,
      "feed": args.feed, "rounds": {name: {str(t): [round(r, 1) for r in rates]
                                           for t, rates in by_cores.items()}
                                    for name, by_cores in rounds.items()},
      "rates": {name: {str(t): round(r, 1) for t, r in rates.items()}
                for name, rates in rows.items()},
      **{k: round(v, 3) for k, v in ratios.items()}}])


if __name__ == "__main__":
  main()
