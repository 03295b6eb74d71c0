"""A run's dataset, opened once: the source, the preset, what the model and the loop need to know
(`info`, a DatasetInfo, which benchmarks and tests also make from a shape alone), and batches
placed on the devices, ready for the model.

    dataset = data.open(config.data)        # a missing dataset, split or bad value fails here
    batches = dataset.train_batches(sharding, batch_size=B, seed=s, start_step=k)
    for batch in dataset.eval_batches(sharding, batch_size=B): ...

Where the work happens, in one rule: a split held in memory is placed on the devices once and
batched and augmented there in JAX (device_stream.py); a streamed split is read and decoded by
tf.data on the host (host_stream.py), which also makes the imagenet preset's crops (they choose
what to decode), and every other augmentation of its batches runs on the devices, as for a split
in memory. A split is held in memory when config.data.cache says so, or (cache None) when its
images have one size and it needs at most max_cache_mb and a quarter of a device's memory.

`sharding` is where a batch lives: over a mesh of every process's devices, a batch is the global
batch (each process computes or sends only its own rows); over a mesh of this process's devices
only, it is this process's rows [p*b, (p+1)*b) of each global batch (pmap).
"""

import collections
import dataclasses
import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jresnet.data import device_stream, presets, process_shard, sources

# Cores an accelerator host keeps from tf.data: one for the Python loop that dispatches the steps
# and places the batches, one for the runtime's own threads (transfers, callbacks).
ACCELERATOR_HOST_RESERVE = 2
# A split goes on the devices (cache None) when the run's splits take at most this fraction of
# one device's memory; the rest is the model's.
DEVICE_MEMORY_FRACTION = 0.25


def default_threads() -> int:
  """tf.data's threads where config.data.threads is None: on a CPU host half the cores, since the
  step's XLA computation needs the others; on a GPU/TPU host every core this process may run on
  but ACCELERATOR_HOST_RESERVE. With several processes on one host, bind each to its own cores
  (e.g. srun --cpu-bind=cores) or set config.data.threads."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  cores = cores or 2
  if jax.default_backend() == "cpu":
    return max(1, cores // 2)
  return max(1, cores - ACCELERATOR_HOST_RESERVE)


def _device_memory_mb() -> float:
  """What DEVICE_MEMORY_FRACTION of the first device's memory allows, in MiB (inf on CPU)."""
  device = jax.devices()[0]
  limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None
  return DEVICE_MEMORY_FRACTION * limit / 2**20 if limit else float("inf")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the preprocessed images fed to the model
  split_sizes: dict[str, int]  # examples in config.train_split and config.eval_split
  class_names: tuple[str, ...] | None
  # The preset's eval transform of one image, as `jresnet.export` records it: resize (the
  # shorter side to `resize`, or with keep_aspect False the whole image to crop x crop), centre
  # crop, then (x / 255 - mean) / std.
  eval_transform: dict | None = dataclasses.field(default=None, repr=False)
  # The eval split used: config.eval_split, or where that is the default 'test' and the dataset
  # has none, its validation split (said in `notes`).
  eval_split: str | None = None
  preset: str | None = None  # the preprocessing preset applied ('auto' resolved)
  notes: tuple[str, ...] = dataclasses.field(default=(), repr=False)


# Tried in this order when the default eval split 'test' is absent.
EVAL_SPLITS = ("validation", "val", "valid", "test")
DEFAULT_EVAL_SPLIT = "test"


def _sized(field: str, spec: str, source, default: str | None = None) -> tuple[str, int, str]:
  """(split, its size, a note) for config field `field` = `spec`; the default eval split falls
  back to a validation split, anything else absent is an error naming the splits there are."""
  try:
    return spec, source.num_examples(spec), ""
  except (ValueError, KeyError) as e:
    names = source.split_names()
    if spec == default:
      chosen = next((s for s in EVAL_SPLITS if s in names), None)
      if chosen:
        return chosen, source.num_examples(chosen), (
            f"no {spec!r} split: evaluating on {chosen!r} (set --config.data.{field}=... to "
            "choose another)")
    raise ValueError(
        f"data.{field}={spec!r} is not a split of this dataset, whose splits are "
        f"{', '.join(map(repr, names))}: set --config.data.{field}=<split>, e.g. "
        f"--config.data.{field}={names[-1] if names else 'train'}, or hold out part of train: "
        "--config.data.train_split='train[:90%]' --config.data.eval_split='train[90%:]'"
    ) from e


def _eval_transform(preset: presets.Preset) -> dict:
  size = preset.image_shape[0]
  imagenet = preset.name == "imagenet"
  return {"resize": round(size / presets.CENTER_CROP_FRACTION) if imagenet else size,
          "crop": size, "keep_aspect": imagenet, "interpolation": "bilinear",
          "mean": list(preset.mean), "std": list(preset.std)}


def _describe(cfg, source: sources.Source, preset: presets.Preset) -> DatasetInfo:
  """What config.data's `source` under `preset` gives, without reading the data; ValueError for
  a split the source does not have, or a single class."""
  train_split, train_size, _ = _sized("train_split", cfg.train_split, source)
  eval_split, eval_size, note = _sized("eval_split", cfg.eval_split, source, DEFAULT_EVAL_SPLIT)
  sizes = {train_split: train_size, eval_split: eval_size}
  meta = source.metadata
  if meta.num_classes < 2:
    raise ValueError(f"data.source={cfg.source!r} gives {meta.num_classes} class: a classifier "
                     "needs two or more.")
  return DatasetInfo(meta.num_classes, preset.image_shape, sizes, meta.class_names,
                     _eval_transform(preset), eval_split, preset.name, (note,) if note else ())


class Dataset:
  """config.data, opened: its source, preset and `info`, and each split loaded once."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.threads = cfg.threads or default_threads()
    self.source = sources.get(cfg, self.threads)
    self.preset = presets.resolve(cfg, self.source.metadata)
    self.info = _describe(cfg, self.source, self.preset)
    self._splits = {}  # split string -> ArraySplit | RecordSplit
    self._placed = {}  # (split, sharding) -> DeviceSplit

  def split(self, name: str) -> sources.ArraySplit | sources.RecordSplit:
    """Split `name`, in memory (decoded) or streamed, loaded the first time it is asked for."""
    if name not in self._splits:
      max_mb = self.cfg.max_cache_mb
      if self.cfg.cache is None:
        max_mb = min(max_mb, _device_memory_mb() - sum(
            device_stream.split_bytes(s) / 2**20 for s in self._splits.values()
            if isinstance(s, sources.ArraySplit)))
      loaded = self.source.load(name, self.cfg.cache, max_mb)
      if not len(loaded):
        raise ValueError(f"split {name!r} of data.source={self.cfg.source!r} is empty.")
      self._splits[name] = loaded
    return self._splits[name]

  def in_memory(self, name: str) -> bool:
    return isinstance(self.split(name), sources.ArraySplit)

  def describe_input(self) -> str:
    """One line: where the run's splits are batched and augmented."""
    names = dict.fromkeys((self.cfg.train_split, self.info.eval_split))
    parts = [f"{name} {'on the devices' if self.in_memory(name) else 'streamed by tf.data'}"
             for name in names]
    placed = sum(device_stream.split_bytes(self.split(n)) for n in names if self.in_memory(n))
    memory = f", {placed / 2**20:.1f} MiB placed once" if placed else ""
    return f"input: {'; '.join(parts)} (the {self.preset.name!r} preset{memory})"

  def _on_devices(self, name: str, sharding: NamedSharding) -> device_stream.DeviceSplit:
    if (name, sharding) not in self._placed:
      self._placed[name, sharding] = device_stream.DeviceSplit(self.split(name), self.preset,
                                                               sharding)
    return self._placed[name, sharding]

  def train_batches(self, sharding: NamedSharding, *, batch_size: int,
                    seed: int | Sequence[int], start_step: int = 0,
                    steps_per_call: int = 1) -> Iterator[dict]:
    """Global batch k, k >= start_step, of config.data.train_split, forever: {'image' float32
    normalised, 'label', 'mask'} on `sharding`. Batch k is a pure function of (seed, k), whatever
    the number of processes, so a resumed run sees the batches it would have seen. With one seed
    per replica (a sequence; a split in memory), the batches of those runs stacked along a
    leading axis; with steps_per_call K > 1, K consecutive batches at a time, stacked in front
    of that (for `lax.scan` over train steps)."""
    if start_step < 0:
      raise ValueError(f"start_step={start_step} must be >= 0.")
    name, k = self.cfg.train_split, steps_per_call
    if self.in_memory(name):
      return self._on_devices(name, sharding).train_batches(
          seed, start_step, _device_rows(batch_size, sharding), k)
    if not isinstance(seed, int):
      raise ValueError(f"batches for several replicas need the train split held in memory "
                       f"(batched on the devices); {name!r} is streamed")
    finish = functools.partial(device_stream.finish_streamed_train, preset=self.preset,
                               key_data=device_stream.seed_key_data(seed))
    batches = self.host_train_batches(global_batch_size=batch_size, seed=seed,
                                      start_step=start_step)
    if k > 1:
      finish, sharding = jax.vmap(finish), NamedSharding(sharding.mesh, P(None, *sharding.spec))
      batches = _stacked(batches, k)
    finish = jax.jit(finish, out_shardings=sharding)
    return prefetch(batches, self.cfg.prefetch, lambda batch: finish(_put(batch, sharding)))

  def eval_batches(self, sharding: NamedSharding, *, batch_size: int,
                   split: str | None = None) -> Iterator[dict]:
    """Every example of `split` (default the eval split) once, in order: ceil(N / B) global
    batches on `sharding`, rows past the end masked (mask False)."""
    name = split or self.info.eval_split
    if self.in_memory(name):
      return self._on_devices(name, sharding).eval_batches(_device_rows(batch_size, sharding))
    finish = _normalizer(self.preset, sharding)
    batches = self.host_eval_batches(global_batch_size=batch_size, split=name)
    return prefetch(batches, self.cfg.prefetch, lambda batch: finish(_put(batch, sharding)))

  def host_train_batches(self, *, global_batch_size: int, seed: int, start_step: int = 0,
                         process_index: int | None = None,
                         process_count: int | None = None) -> Iterator[dict]:
    """The tf.data stream of a streamed train split: this process's rows of each global batch,
    uint8 before the device's augmentation and normalisation, with each row's epoch and offset
    in it (what seeds that augmentation)."""
    from jresnet.data import host_stream  # noqa: PLC0415

    shard = process_shard.shard(global_batch_size, process_index, process_count)
    return host_stream.train_batches(self._streamed(self.cfg.train_split), self.preset, shard,
                                     seed=seed, start_step=start_step, threads=self.threads)

  def host_eval_batches(self, *, global_batch_size: int, split: str | None = None,
                        process_index: int | None = None,
                        process_count: int | None = None) -> Iterator[dict]:
    """The tf.data stream of a streamed eval split: this process's rows, uint8, padded."""
    from jresnet.data import host_stream  # noqa: PLC0415

    shard = process_shard.shard(global_batch_size, process_index, process_count)
    return host_stream.eval_batches(self._streamed(split or self.info.eval_split), self.preset,
                                    shard, threads=self.threads)

  def _streamed(self, name: str) -> sources.RecordSplit:
    split = self.split(name)
    if not isinstance(split, sources.RecordSplit):
      raise ValueError(f"split {name!r} is held in memory: it is batched on the devices "
                       "(train_batches, eval_batches), not streamed")
    return split

  def write_arrays(self, path: str, encoding: str = "raw") -> dict[str, int]:
    """The train and eval splits to the array file `path` (jresnet/data/arrays.py), which
    data.source='arrays' reads with the same split names; returns the examples per split."""
    from jresnet.data import arrays  # noqa: PLC0415

    names = list(dict.fromkeys((self.cfg.train_split, self.info.eval_split)))
    return arrays.write(path, self.source, names, encoding)

  def write_resized(self, out_dir: str, max_side: int, quality: int) -> dict[str, int]:
    """Every split to an image folder at `out_dir` with shorter sides capped at `max_side`
    (jresnet/data/resized_copy.py); returns the images per split."""
    from jresnet.data import resized_copy  # noqa: PLC0415

    if self.cfg.source not in ("folder", "tfds"):
      raise ValueError(f"data.source={self.cfg.source!r} holds its images as arrays, not as image "
                       "files: a resized copy is made of an image folder or a TFDS dataset.")
    return resized_copy.write(self.source, self.threads, out_dir, max_side, quality)


def open(cfg) -> Dataset:  # noqa: A001 (data.open, as a file is opened)
  """config.data opened: the source found, the preset and the splits resolved."""
  return Dataset(cfg)


def prefetch(batches: Iterable, size: int, put: Callable) -> Iterator:
  """Yields `put(batch)` for each batch, keeping `size` batches in flight: `put` starts
  asynchronous transfers, so copying the next batches overlaps the current step."""
  batches = iter(batches)
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(put(batch))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)


def _stacked(batches: Iterator[dict], k: int) -> Iterator[dict]:
  """Each k consecutive batches as one, stacked along a new leading axis."""
  while True:
    group = list(itertools.islice(batches, k))
    if len(group) < k:
      return
    yield {key: np.stack([batch[key] for batch in group]) for key in group[0]}


def _global(sharding: NamedSharding) -> bool:
  """Whether `sharding`'s mesh spans every process (jit), not only this one's devices (pmap)."""
  return {d.process_index for d in sharding.mesh.devices.flat} == set(range(jax.process_count()))


def _device_rows(global_batch_size: int, sharding: NamedSharding) -> process_shard.Shard:
  """The rows of each global batch that the device path computes for `sharding`: all of them on
  a global mesh (each process computes its devices' part), this process's on a mesh of its own."""
  shard = process_shard.shard(global_batch_size)  # checks divisibility by the process count
  return process_shard.Shard(global_batch_size, 0, 1) if _global(sharding) else shard


def _put(batch: dict, sharding: NamedSharding) -> dict:
  """This process's host rows on `sharding`: as its part of the global batch on a global mesh."""
  if _global(sharding):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
  return jax.device_put(batch, sharding)


@functools.cache
def _normalizer(preset: presets.Preset, sharding: NamedSharding):
  """The normalisation of host batches, compiled once per preset and placement."""
  return jax.jit(functools.partial(device_stream.finish_eval, preset=preset),
                 out_shardings=sharding)

