"""The device path: an in-memory split placed on the accelerators once, its batches gathered and
augmented there by jitted JAX code, so that the host does no per-example work.

The same contract as the host stream (train_stream.py, eval_stream.py): stream position g is example
g mod N of epoch g // N in that epoch's seeded permutation, global batch k holds positions
[kB, (k+1)B) across epoch boundaries, and augmentation is seeded by (seed, epoch, example); so
batch k is a pure function of (seed, k), whatever the number of processes, and a resumed run
sees the same batches. The random numbers are JAX's, not TensorFlow's: the two paths make
different (equally distributed) batches. Evaluation counts every example once: ceil(N / B)
batches, rows past the end masked.

The split is replicated on every device of the mesh (each process places its copy on its own
devices); a batch is laid out along the mesh's 'data' axis, so each process's devices hold that
process's rows. The jit runner only: pmap keeps its batches on the host path.
"""

import functools
import itertools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jresnet.data import device_transforms, presets, process_shard, sources

_SHUFFLE, _AUGMENT = 0, 1  # stream tags, as in seeds.py: the shuffle and the augmentation differ


def split_bytes(split: sources.ArraySplit) -> int:
  return split.images.nbytes + split.labels.nbytes


class DeviceSplit:
  """One split of config.data (an in-memory one), on the devices of `sharding`'s mesh."""

  def __init__(self, cfg, split: str, sharding: NamedSharding, *, source=None, loaded=None):
    source = source or sources.get(cfg)
    self.preset = presets.resolve(cfg, source.metadata)
    device_transforms.check(self.preset)
    data = loaded if loaded is not None else source.load(split, True, cfg.max_cache_mb)
    if not isinstance(data, sources.ArraySplit):
      raise ValueError(f"split {split!r} is streamed, not held in memory: the device path needs "
                       "an in-memory split (set config.data.on_device=False)")
    if not len(data):
      raise ValueError(f"split {split!r} is empty.")
    self.name, self.num_examples, self.nbytes = split, len(data), split_bytes(data)
    self.sharding = sharding
    replicated = NamedSharding(sharding.mesh, P())
    put = lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])
    self.images, self.labels = put(np.asarray(data.images)), put(np.asarray(data.labels))

  def train_batches(self, *, global_batch_size: int, seed: int,
                    start_step: int = 0) -> Iterator[dict]:
    """Global batches {'image', 'label', 'mask'} from step `start_step` on, forever."""
    if start_step < 0:
      raise ValueError(f"start_step={start_step} must be >= 0.")
    n, spans = self.num_examples, 1 + -(-global_batch_size // self.num_examples)
    make = jax.jit(functools.partial(_train_batch, preset=self.preset, n=n,
                                     batch_size=global_batch_size),
                   out_shardings=self.sharding)
    order = jax.jit(functools.partial(_epoch_order, n=n),
                    out_shardings=NamedSharding(self.sharding.mesh, P()))
    key = jax.random.key_data(jax.random.key(seed))
    orders = {}  # epoch -> its permutation, computed once per epoch, not in every step
    for step in itertools.count(start_step):
      first = step * global_batch_size // n
      orders = {e: orders[e] if e in orders else order(key, np.int32(e))
                for e in range(first, first + spans)}
      yield make(self.images, self.labels, key, jnp.stack(list(orders.values())),
                 np.int32(step))

  def eval_batches(self, *, global_batch_size: int) -> Iterator[dict]:
    """Every example once, in order: ceil(N / B) global batches, padding rows masked."""
    make = jax.jit(functools.partial(_eval_batch, preset=self.preset, n=self.num_examples,
                                     batch_size=global_batch_size),
                   out_shardings=self.sharding)
    for step in range(process_shard.eval_batch_count(self.num_examples, global_batch_size)):
      yield make(self.images, self.labels, np.int32(step))


def _epoch_order(key_data, epoch, *, n: int) -> jax.Array:
  """The permutation of the split in `epoch`."""
  shuffle = jax.random.fold_in(jax.random.wrap_key_data(key_data), _SHUFFLE)
  return jax.random.permutation(jax.random.fold_in(shuffle, epoch), n)


def _train_batch(images, labels, key_data, orders, step, *, preset, n: int,
                 batch_size: int) -> dict:
  """Global batch `step`; `orders` are the permutations of the epochs it spans, from the first
  (at most two when batch_size <= n)."""
  augment = jax.random.fold_in(jax.random.wrap_key_data(key_data), _AUGMENT)
  positions = step * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
  epochs, offsets = positions // n, positions % n
  index = orders[epochs - (step * batch_size) // n, offsets]
  keys = jax.vmap(lambda e, i: jax.random.fold_in(jax.random.fold_in(augment, e), i))(
      epochs, index)
  image = device_transforms.train_batch(preset, images[index], keys)
  return {"image": image, "label": labels[index], "mask": jnp.ones(batch_size, bool)}


def _eval_batch(images, labels, step, *, preset, n: int, batch_size: int) -> dict:
  positions = step * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
  mask = positions < n
  index = jnp.minimum(positions, n - 1)
  return {"image": device_transforms.eval_batch(preset, images[index]),
          "label": jnp.where(mask, labels[index], 0), "mask": mask}


# `on_device='auto'` puts a split on the accelerators when the train and eval splits together
# take at most this fraction of one device's memory (the rest is the model's); on CPU it follows
# CPU_AUTO: the device path measured as fast as tf.data there for ResNet-20 (BENCHMARKS.md).
DEVICE_MEMORY_FRACTION = 0.25
CPU_AUTO = True


def open_device_splits(cfg, sharding: NamedSharding | None,
                       names: tuple[str, ...]) -> tuple[dict | None, str]:
  """({split: DeviceSplit} for `names`, why) where config.data.on_device chooses the device path,
  else (None, why). `sharding` is the runner's batch sharding; None for a runner without a mesh
  (pmap)."""
  choice = {"auto": "auto", "true": True, "false": False}.get(str(cfg.on_device).lower())
  if choice is None:
    raise ValueError(f"config.data.on_device must be 'auto', True or False; got "
                     f"{cfg.on_device!r}")
  if choice is False:
    return None, "config.data.on_device=False"
  if sharding is None:
    if choice is True:
      raise ValueError("config.data.on_device=True needs parallel='jit' (the pmap runner feeds "
                       "host batches)")
    return None, "the pmap runner feeds host batches"
  source = sources.get(cfg)
  preset = presets.resolve(cfg, source.metadata)
  if preset.name not in device_transforms.SUPPORTED:
    if choice is True:
      device_transforms.check(preset)
    return None, f"the {preset.name!r} preset runs on the host"
  loaded = {name: source.load(name, True if choice is True else cfg.cache, cfg.max_cache_mb)
            for name in dict.fromkeys(names)}
  if choice == "auto":
    if not all(isinstance(s, sources.ArraySplit) for s in loaded.values()):
      return None, "the splits are streamed"
    total = sum(split_bytes(s) for s in loaded.values())
    device = sharding.mesh.devices.flat[0]
    if device.platform == "cpu" and not CPU_AUTO:
      return None, "on CPU the host path is faster"
    limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None
    if limit and total > DEVICE_MEMORY_FRACTION * limit:
      return None, (f"the splits ({total / 2**20:.0f} MiB) exceed "
                    f"{DEVICE_MEMORY_FRACTION:.0%} of a device's memory")
  opened = {name: DeviceSplit(cfg, name, sharding, source=source, loaded=split)
            for name, split in loaded.items()}
  total = sum(s.nbytes for s in opened.values())
  return opened, f"the {preset.name!r} preset in JAX; {total / 2**20:.1f} MiB placed once"
