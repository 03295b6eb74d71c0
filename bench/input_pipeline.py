"""The input pipeline's rates on the host in images/s, on CIFAR's folder and ImageNet-like JPEGs.

    python -m bench.input_pipeline stream --folder /work/shared/datasets/cifar10_jpeg/train \
        --batch 128 --steps 50 --threads 2 [--cold]
    python -m bench.input_pipeline make-jpegs --out /tmp/imagenet_like --per-class 150
    python -m bench.input_pipeline jpeg --folder /tmp/imagenet_like [--sides 256,320] [--feed 5600]

stream: the training stream of one split of an image folder (`--preset` cifar or imagenet). The
first load (listing, decoding or reading the decoded cache, first batch) is timed apart; --cold
decodes into a fresh cache directory, as the very first run on a machine does. Then, after
--warmup batches, --windows windows of --steps batches are timed and their median rate printed.
In the same run, the consumer: the project's jitted CIFAR ResNet-20 train step at the same batch
on a device-resident batch, and how many times over the stream can feed it (--no-consumer skips
it).

make-jpegs: ImageNet-like JPEGs made from real photographs (`imagenet_like`), in an image folder
`<out>/train/<class>/<n>.jpg`. Entropy decoding, the bulk of a JPEG decode, scales with the file's
bytes, so smooth, upsampled small images (CIFAR-10 at 500x375 is ~20 KB a file) would overstate
what a real dataset decodes.

jpeg: on those files, one core and all cores: the raw decode, jresnet's train and eval streams
(`Dataset.host_train_batches` / `host_eval_batches`, folder source, imagenet preset, streamed) on
the full-size files and on resized copies (`Dataset.write_resized`, as `--mode=write_resized`),
and a PyTorch
DataLoader worker (PIL decode, RandomResizedCrop(224), flip, ToTensor and Normalize, or uint8
out). Every row is timed once in each of ROUNDS rounds over all rows, so that a slow spell of the
machine does not hit every measurement of one row; a row's figure is its best round, printed
beside its worst round over its best. --feed: the images/s a consumer takes (a GPU's ResNet-50
step), to say how many cores feed it.

stream and jpeg append one JSON line a run to --results.
"""

import argparse
import functools
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import jresnet.data as jd
from bench import report
from configs import default
from jresnet.data import presets, resized_copy

BATCH = 128  # of the jpeg rows
ROUNDS = 3  # each jpeg row's figure is its best round
MIN_BATCHES = 8  # per epoch: a stream is timed over at least 5 batches after 2, inside one epoch


# stream: one split of an image folder, beside the train step it feeds.

def folder_config(root: str, split: str, threads: int | None, cache_dir: str, preset: str):
  cfg = default.data_config()
  cfg.update(source="folder", path=root, train_split=split, eval_split=split, preprocess=preset,
             threads=threads, cache_dir=cache_dir)
  if preset == "imagenet":  # as on ImageNet, which fits no memory: decode every file, every epoch
    cfg.update(cache=False, cache_dir="")
  return cfg


def train_batches(cfg, batch: int, seed: int):
  """What the train step takes from config.data's train split: tf.data's rows of a streamed
  split, or a split held in memory batched on the first device (each batch waited for)."""
  dataset = jd.open(cfg)
  if not dataset.in_memory(cfg.train_split):
    return dataset.host_train_batches(global_batch_size=batch, seed=seed)
  import jax  # noqa: PLC0415
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: PLC0415

  sharding = NamedSharding(Mesh(jax.devices()[:1], ("data",)), PartitionSpec("data"))
  return map(jax.block_until_ready, dataset.train_batches(sharding, batch_size=batch, seed=seed))


def first_load(cfg, batch: int, seed: int = 0):
  """The train iterator after its first batch, and how long that took."""
  start = time.perf_counter()
  batches = train_batches(cfg, batch, seed)
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


def stream(args) -> dict:
  with tempfile.TemporaryDirectory() as fresh:
    root, split = os.path.split(os.path.abspath(args.folder.rstrip("/")))
    cfg = folder_config(root, split, args.threads, fresh if args.cold else args.cache_dir,
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
  return {**load, **rate}


# make-jpegs: ImageNet-like files.

def imagenet_like(photos: list[np.ndarray], rng: np.random.Generator, size=(375, 500)):
  """One image: a random crop of one of scikit-learn's photographs, resized to `size` (H, W;
  ImageNet's typical 500x375, transposed to portrait a quarter of the time), its colour,
  brightness and sensor-like noise perturbed."""
  from PIL import Image  # noqa: PLC0415

  photo = photos[rng.integers(len(photos))]
  h, w = size if rng.random() < 0.75 else size[::-1]
  ph, pw = photo.shape[:2]
  scale = rng.uniform(0.55, 1.0) * min(ph / h, pw / w)  # the crop, in photograph pixels
  ch, cw = int(h * scale), int(w * scale)
  top, left = rng.integers(ph - ch + 1), rng.integers(pw - cw + 1)
  crop = Image.fromarray(photo[top:top + ch, left:left + cw])
  if rng.random() < 0.5:
    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  pixels = np.asarray(crop.resize((w, h), Image.Resampling.BICUBIC), np.float32)
  pixels = pixels * rng.uniform(0.75, 1.25, 3) + rng.uniform(-20, 20)  # colour, brightness
  pixels += rng.normal(0, rng.uniform(2, 5), pixels.shape)  # sensor-like noise
  return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


def make_jpegs(args) -> None:
  from sklearn.datasets import load_sample_images  # noqa: PLC0415

  photos = load_sample_images().images
  rng = np.random.default_rng(args.seed)
  sizes = []
  for c in range(args.classes):
    directory = os.path.join(args.out, "train", f"class{c:02d}")
    os.makedirs(directory, exist_ok=True)
    for n in range(args.per_class):
      path = os.path.join(directory, f"{n:04d}.jpg")
      imagenet_like(photos, rng).save(path, quality=args.quality)
      sizes.append(os.path.getsize(path))
  print(f"wrote {len(sizes)} JPEGs to {args.out}/train: mean {np.mean(sizes) / 1e3:.1f} KB "
        f"(min {min(sizes) / 1e3:.1f}, max {max(sizes) / 1e3:.1f}), quality {args.quality}")


# jpeg: the rows on ImageNet-like files.

def _rate(batches, images: int) -> float:
  """Images/s of one pass over `batches` (an iterable of `images` images)."""
  start = time.perf_counter()
  for _ in batches:
    pass
  return images / (time.perf_counter() - start)


def raw_decode_rate(files: list[str], threads: int) -> float:
  """`tf.io.decode_jpeg` over the files and nothing else (the shapes batched), with the streams'
  tf.data options: one pass, timed after three batches."""
  import tensorflow as tf  # noqa: PLC0415

  from jresnet.data import tf_runtime  # noqa: PLC0415

  ds = tf.data.Dataset.from_tensor_slices(files).repeat().map(tf.io.read_file)
  ds = ds.map(lambda data: tf.shape(tf.io.decode_jpeg(data, channels=3)),
              num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH)
  batches = iter(ds.prefetch(tf.data.AUTOTUNE).with_options(tf_runtime.options(threads)))
  for _ in range(3):  # graph building, first files, the autotuner's first settings
    next(batches)
  steps = len(files) // BATCH
  return _rate((next(batches) for _ in range(steps)), steps * BATCH)


def stream_config(root: str, threads: int):
  return folder_config(root, "train", threads, "", "imagenet")


def stream_rate(batches, images: int) -> float:
  """Images/s of a fresh stream, timed inside its first epoch after two batches (so neither
  the pipeline's start nor an epoch boundary is timed: on ImageNet they happen once in 10,000
  batches)."""
  steps = images // BATCH - 3
  next(batches), next(batches)
  return _rate((next(batches) for _ in range(steps)), steps * BATCH)


def train_stream_rate(root: str, threads: int, images: int) -> float:
  cfg = stream_config(root, threads)
  return stream_rate(jd.open(cfg).host_train_batches(global_batch_size=BATCH, seed=0), images)


def eval_stream_rate(root: str, threads: int, images: int) -> float:
  cfg = stream_config(root, threads)
  return stream_rate(iter(jd.open(cfg).host_eval_batches(global_batch_size=BATCH)), images)


def torchvision_loader(files: list[str], workers: int, uint8: bool):
  """What a PyTorch DataLoader worker does to an ImageNet training JPEG: PIL decode,
  torchvision's RandomResizedCrop(224) (antialiased bilinear), RandomHorizontalFlip, then
  ToTensor + Normalize, or PILToTensor (uint8: normalising left to the GPU, as jresnet does).
  workers=0: in this process, one thread."""
  import torch  # noqa: PLC0415 (only these rows need torch)
  from PIL import Image  # noqa: PLC0415

  from tests import torch_reference  # noqa: PLC0415

  transforms = torch_reference.import_torchvision().transforms
  to_tensor = ([transforms.PILToTensor()] if uint8 else
               [transforms.ToTensor(), transforms.Normalize(presets.IMAGENET_MEAN,
                                                            presets.IMAGENET_STD)])
  transform = transforms.Compose([transforms.RandomResizedCrop(224),
                                  transforms.RandomHorizontalFlip(), *to_tensor])

  class JpegFiles(torch.utils.data.Dataset):

    def __len__(self) -> int:
      return len(files)

    def __getitem__(self, i: int) -> torch.Tensor:
      with Image.open(files[i]) as image:
        return transform(image.convert("RGB"))

  torch.set_num_threads(1)
  return torch.utils.data.DataLoader(JpegFiles(), batch_size=BATCH, shuffle=True,
                                     num_workers=workers, persistent_workers=workers > 0)


def torchvision_rate(files: list[str], threads: int, uint8: bool) -> float:
  loader = torchvision_loader(files, 0 if threads == 1 else threads, uint8)
  next(iter(loader))
  return _rate(loader, len(files))


def copy_name(side: int) -> str:
  return f"copy <= {side} px"


def measure(root: str, files: list[str], copies: dict[str, str]) -> dict[str, list[float]]:
  """Every row's images/s in each of ROUNDS rounds over all rows, with as many threads
  (DataLoader workers) as this process has cores."""
  from jresnet.data import tf_runtime  # noqa: PLC0415

  threads = report.cores()
  tf_runtime.configure(threads)
  n = len(files)
  timers = {"raw decode (tf.io.decode_jpeg)": functools.partial(raw_decode_rate, files, threads),
            "jresnet train stream": functools.partial(train_stream_rate, root, threads, n)}
  for name, copy in copies.items():
    timers[f"jresnet train stream, {name}"] = functools.partial(train_stream_rate, copy, threads, n)
  timers["jresnet eval stream"] = functools.partial(eval_stream_rate, root, threads, n)
  timers["PIL + torchvision worker"] = functools.partial(torchvision_rate, files, threads, False)
  timers["PIL + torchvision worker, uint8 out"] = functools.partial(torchvision_rate, files,
                                                                    threads, True)
  rounds = {name: [] for name in timers}
  for _ in range(ROUNDS):
    for name, timer in timers.items():
      rounds[name].append(timer())
  return rounds


def measure_on(cores: set[int], folder: str, copies: dict[str, str],
               scratch: str) -> dict[str, list[float]]:
  """`measure` in a fresh process pinned to `cores` (every thread it starts inherits that), so
  that one thread's rows are one core's."""
  out = os.path.join(scratch, f"rows{len(cores)}.json")
  command = [sys.executable, "-m", "bench.input_pipeline", "jpeg", "--folder", folder,
             "--copies", json.dumps(copies), "--rows-out", out]
  subprocess.run(command, check=True, preexec_fn=lambda: os.sched_setaffinity(0, cores))
  with open(out) as f:
    return json.load(f)


def describe(files: list[str]) -> dict:
  from PIL import Image  # noqa: PLC0415

  sizes = [os.path.getsize(f) for f in files]
  shapes = [Image.open(f).size for f in files]
  return {"files": len(files), "mean_kb": round(np.mean(sizes) / 1e3, 1),
          "mean_width": round(np.mean([w for w, _ in shapes])),
          "mean_height": round(np.mean([h for _, h in shapes]))}


def jpeg(args) -> dict | None:
  root = os.path.abspath(args.folder)
  files = sorted(glob.glob(os.path.join(root, "train", "*", "*.jp*g")))
  if not files:
    raise SystemExit(f"no JPEG files in {root}/train/<class>/: write them with "
                     "`python -m bench.input_pipeline make-jpegs`")
  if len(files) < MIN_BATCHES * BATCH:
    raise SystemExit(f"{len(files)} files make too few batches of {BATCH} to time a stream "
                     f"(it needs {MIN_BATCHES * BATCH}): write more with make-jpegs --per-class")
  if args.rows_out:  # a measuring subprocess of measure_on
    with open(args.rows_out, "w") as f:
      json.dump(measure(root, files, json.loads(args.copies)), f)
    return None
  cores = os.sched_getaffinity(0)
  described = describe(files)
  print(f"{described['files']} JPEGs, mean {described['mean_kb']} KB, mean "
        f"{described['mean_width']}x{described['mean_height']}; batches of {BATCH}")

  sides = [int(side) for side in args.sides.split(",")]
  with tempfile.TemporaryDirectory() as scratch:
    copies = {}
    for side in sides:
      name, out = copy_name(side), os.path.join(scratch, f"resized{side}")
      jd.open(stream_config(root, len(cores))).write_resized(out, side, resized_copy.QUALITY)
      copied = describe(glob.glob(os.path.join(out, "*", "*", "*")))
      print(f"{name}: mean {copied['mean_kb']} KB, mean "
            f"{copied['mean_width']}x{copied['mean_height']}")
      copies[name] = out
    rounds = {}  # name -> cores -> images/s of each round
    for part in ({min(cores)}, cores) if len(cores) > 1 else (cores,):
      for name, rates in measure_on(part, root, copies, scratch).items():
        rounds.setdefault(name, {})[len(part)] = rates

  threads = sorted({1, len(cores)})
  print(f"\nimages/s, the best of {ROUNDS} rounds (the worst round over the best)")
  print(f"{'':44s}" + "".join(f"{f'{t} core(s)':>22s}" for t in threads))
  for name, by_cores in rounds.items():
    cells = [f"{max(by_cores[t]):14.1f} ({min(by_cores[t]) / max(by_cores[t]):.2f})"
             for t in threads]
    print(f"{name:44s}" + "".join(f"{c:>22s}" for c in cells))
  one = {name: max(by_cores[1]) for name, by_cores in rounds.items()}
  train = one["jresnet train stream"]
  ratios = {
      "train_stream_over_raw_decode": train / one["raw decode (tf.io.decode_jpeg)"],
      "train_stream_over_torchvision": train / one["PIL + torchvision worker"],
      "train_stream_over_torchvision_uint8": train / one["PIL + torchvision worker, uint8 out"],
      **{f"copy{side}_over_full_size": one[f"jresnet train stream, {copy_name(side)}"] / train
         for side in sides},
      "cores_to_feed": args.feed / train,
      **{f"cores_to_feed_copy{side}": args.feed / one[f"jresnet train stream, {copy_name(side)}"]
         for side in sides},
  }
  print("\none core: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
  return {**described, "feed": args.feed,
          "rounds": {name: {str(t): [round(r, 1) for r in rates]
                            for t, rates in by_cores.items()}
                     for name, by_cores in rounds.items()},
          **{k: round(v, 3) for k, v in ratios.items()}}


def main(argv=None) -> dict | None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  results = argparse.ArgumentParser(add_help=False)
  results.add_argument("--results", default="bench/results.jsonl", help="JSON lines go here")

  run = commands.add_parser("stream", parents=[results],
                            help="an image folder's train stream, beside ResNet-20's step")
  run.add_argument("--folder", required=True, help="<root>/<split> of an image folder")
  run.add_argument("--batch", type=int, default=128)
  run.add_argument("--steps", type=int, default=50, help="batches per timed window")
  run.add_argument("--windows", type=int, default=5)
  run.add_argument("--warmup", type=int, default=20, help="batches before timing")
  run.add_argument("--threads", type=int, default=None, help="TF threads (default: half)")
  run.add_argument("--preset", default="cifar", help="cifar, or imagenet (random-resized crops "
                   "to 224 from the JPEG files, streamed)")
  run.add_argument("--cache-dir", default=default.data_config().cache_dir)
  run.add_argument("--cold", action="store_true", help="decode into a fresh cache directory")
  run.add_argument("--no-consumer", dest="consumer", action="store_false",
                   help="skip the ResNet-20 train-step measurement")
  run.add_argument("--consumer-steps", type=int, default=5, help="train steps per window")

  make = commands.add_parser("make-jpegs", help="write ImageNet-like JPEGs")
  make.add_argument("--out", required=True)
  make.add_argument("--classes", type=int, default=10)
  make.add_argument("--per-class", type=int, default=100)
  make.add_argument("--quality", type=int, default=95)
  make.add_argument("--seed", type=int, default=0)

  rows = commands.add_parser("jpeg", parents=[results],
                             help="ImageNet-like JPEGs: the streams, copies, torchvision")
  rows.add_argument("--folder", required=True, help="an image folder with a 'train' split")
  rows.add_argument("--sides", default="256,320", help="resized copies to measure")
  rows.add_argument("--feed", type=float, default=5600, help="images/s the consumer takes")
  rows.add_argument("--copies", help=argparse.SUPPRESS)  # a measuring subprocess's inputs
  rows.add_argument("--rows-out", help=argparse.SUPPRESS)

  args = parser.parse_args(argv)
  measured = {"stream": stream, "make-jpegs": make_jpegs, "jpeg": jpeg}[args.command](args)
  if measured is not None:
    report.append_jsonl(args.results, [{"bench": f"input_pipeline {args.command}",
                                        "machine": report.machine(), **report.conditions(),
                                        **vars(args), **measured}])
  return measured


if __name__ == "__main__":
  if sys.argv[1:2] == ["stream"]:
    from jresnet.training import huge_pages
    huge_pages.exec_with_huge_pages()  # as train.py runs
  main()
