"""The device path: a split held in memory, placed on the devices once and batched and augmented
there by jitted JAX code, so that the host does no per-example work; and the devices' part of a
streamed split's batches (their augmentation and normalisation).

Stream position g is example g mod N of epoch g // N in that epoch's seeded permutation, global
batch k holds positions [kB, (k+1)B) across epoch boundaries, and augmentation is seeded by
(seed, epoch, example); so batch k is a pure function of (seed, k), whatever the number of
processes, and a resumed run sees the same batches. Evaluation counts every example once:
ceil(N / B) batches, rows past the end masked (pixels 0, label 0, as host_stream.py pads them).

The split is replicated on every device of the sharding's mesh (each process places its copy on
its own devices); a batch is laid out as the sharding says, each process computing its devices'
rows.
"""

import functools
import itertools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jresnet.data import device_transforms, presets, process_shard, sources

# Stream tags: the shuffle and the augmentation draw from different streams of the seed (the host
# stream's crops too).
SHUFFLE_STREAM, AUGMENT_STREAM = 0, 1


def split_bytes(split: sources.ArraySplit) -> int:
  return split.images.nbytes + split.labels.nbytes


def seed_key_data(seed: int) -> jax.Array:
  return jax.random.key_data(jax.random.key(seed))


def _example_keys(key_data, epochs, offsets) -> jax.Array:
  """One augmentation key per row, from (seed, epoch, example)."""
  augment = jax.random.fold_in(jax.random.wrap_key_data(key_data), AUGMENT_STREAM)
  return jax.vmap(lambda e, i: jax.random.fold_in(jax.random.fold_in(augment, e), i))(
      epochs, offsets)


class DeviceSplit:
  """An in-memory split, on the devices of `sharding`'s mesh."""

  def __init__(self, split: sources.ArraySplit, preset: presets.Preset, sharding: NamedSharding):
    self.num_examples, self.preset, self.sharding = len(split), preset, sharding
    replicated = NamedSharding(sharding.mesh, P())
    put = lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])
    self.images, self.labels = put(np.asarray(split.images)), put(np.asarray(split.labels))

  def train_batches(self, seed: int | Sequence[int], start_step: int, rows: process_shard.Shard,
                    steps_per_call: int = 1) -> Iterator[dict]:
    """Batches {'image', 'label', 'mask'} of `rows` of global batch k, k >= start_step. With a
    sequence of seeds (replicas), each batch for every seed, stacked along a leading axis; with
    steps_per_call K > 1, K consecutive batches a time, stacked in front of that, made in one
    call."""
    several = not isinstance(seed, int)  # one seed per replica
    n, batch_size, k = self.num_examples, rows.global_batch_size, steps_per_call
    spans = 1 + -(-k * batch_size // n)  # the epochs a call's batches can touch
    batch = functools.partial(_train_batch, preset=self.preset, n=n, rows=rows)
    order = functools.partial(_epoch_order, n=n)
    leading = ()
    if several:  # (each replica's key and epoch orders)
      batch = jax.vmap(batch, in_axes=(None, None, 0, 0, None, None))
      order = jax.vmap(order, in_axes=(0, None))
      leading = (None,)
    if k > 1:
      batch = jax.vmap(batch, in_axes=(None, None, None, None, None, 0))
      leading = (None, *leading)

    def call(images, labels, key_data, orders, first_epoch, step):
      steps = step + jnp.arange(k) if k > 1 else step
      return batch(images, labels, key_data, orders, first_epoch, steps)

    make = jax.jit(call, out_shardings=NamedSharding(self.sharding.mesh,
                                                     P(*leading, *self.sharding.spec)))
    order = jax.jit(order, out_shardings=NamedSharding(self.sharding.mesh, P()))
    key = jnp.stack([seed_key_data(s) for s in seed]) if several else seed_key_data(seed)
    orders = {}  # epoch -> its permutation, computed once per epoch, not in every step
    for step in itertools.count(start_step, k):
      first = step * batch_size // n
      orders = {e: orders[e] if e in orders else order(key, np.int32(e))
                for e in range(first, first + spans)}
      # (epochs, n), or with replicas (replicas, epochs, n)
      stacked = jnp.stack(list(orders.values()), axis=1 if several else 0)
      yield make(self.images, self.labels, key, stacked, np.int32(first), np.int32(step))

  def eval_batches(self, rows: process_shard.Shard) -> Iterator[dict]:
    """Every example once, in order: ceil(N / B) batches of `rows`, padding rows masked."""
    make = jax.jit(functools.partial(_eval_batch, preset=self.preset, n=self.num_examples,
                                     rows=rows),
                   out_shardings=self.sharding)
    for step in range(process_shard.eval_batch_count(self.num_examples, rows.global_batch_size)):
      yield make(self.images, self.labels, np.int32(step))


def _positions(step, rows: process_shard.Shard) -> jax.Array:
  """Stream positions of `rows` of global batch `step`."""
  first = step * rows.global_batch_size + rows.process_index * rows.batch_size
  return first + jnp.arange(rows.batch_size, dtype=jnp.int32)


def _epoch_order(key_data, epoch, *, n: int) -> jax.Array:
  """The permutation of the split in `epoch`."""
  shuffle = jax.random.fold_in(jax.random.wrap_key_data(key_data), SHUFFLE_STREAM)
  return jax.random.permutation(jax.random.fold_in(shuffle, epoch), n)


def _train_batch(images, labels, key_data, orders, first_epoch, step, *, preset, n: int,
                 rows: process_shard.Shard) -> dict:
  """`rows` of global batch `step`; `orders` are the permutations of consecutive epochs from
  `first_epoch` on, which cover the batch."""
  positions = _positions(step, rows)
  epochs, offsets = positions // n, positions % n
  index = orders[epochs - first_epoch, offsets]
  keys = _example_keys(key_data, epochs, index)
  return {"image": device_transforms.train_batch(preset, images[index], keys),
          "label": labels[index], "mask": jnp.ones(rows.batch_size, bool)}


def _eval_batch(images, labels, step, *, preset, n: int, rows: process_shard.Shard) -> dict:
  positions = _positions(step, rows)
  mask = positions < n
  index = jnp.minimum(positions, n - 1)
  padded = jnp.where(mask[:, None, None, None], images[index], 0)  # as the host stream pads
  return {"image": device_transforms.eval_batch(preset, padded),
          "label": jnp.where(mask, labels[index], 0), "mask": mask}


def finish_streamed_train(batch: dict, *, preset: presets.Preset, key_data) -> dict:
  """A streamed train batch (uint8, with each row's epoch and offset in it) -> the model's
  input: the preset's augmentation, keyed as the device path keys it, unless tf.data made it
  (the imagenet crops, which choose what to decode), then the normalisation."""
  if preset.train_crop == presets.RANDOM_RESIZED:
    image = device_transforms.normalize(batch["image"], preset.mean, preset.std)
  else:
    keys = _example_keys(key_data, batch["epoch"], batch["offset"])
    image = device_transforms.train_batch(preset, batch["image"], keys)
  return {"image": image, "label": batch["label"], "mask": batch["mask"]}


def finish_eval(batch: dict, *, preset: presets.Preset) -> dict:
  """A streamed eval batch (uint8, at the preset's size) -> the model's input."""
  return {**batch, "image": device_transforms.normalize(batch["image"], preset.mean, preset.std)}
