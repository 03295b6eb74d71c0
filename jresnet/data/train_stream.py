"""The training stream: batch k is a pure function of (seed, k), so training resumes exactly.

Stream position g is the (g mod N)-th example of epoch g // N, in that epoch's seeded order, and
global batch k holds positions [kB, (k+1)B): batches run across epoch boundaries, every epoch
uses each example once, and augmentation is seeded by (seed, epoch, example). Resuming at
`start_step` skips positions, so skipped examples are never decoded nor augmented.

In-memory splits are one tf.data graph over all epochs, each a full `stateless_shuffle`
permutation. Streamed splits are one pipeline per epoch (shuffled files + shuffle buffer with a
seed per epoch, see sources/base.py); the rows left over at an epoch's end are carried into the
next epoch's first batch. With several processes, each reads every (encoded) record of a streamed
epoch but decodes only its own rows: reading is cheap next to decoding, and it is what keeps the
shards an exact partition of the single-process batch.
"""

import itertools
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from jresnet.data import presets, process_shard, seeds, sources, tf_runtime, undecodable
from jresnet.data import transforms as T

Batch = dict[str, np.ndarray]


def train_batches(cfg, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[Batch]:
  """Infinite iterator of this process's rows of each global batch, from step `start_step`.

  Yields {'image': uint8 (b, H, W, C), 'label': int32 (b,), 'mask': bool (b,) all True} with
  b = global_batch_size // process_count (JAX's process index and count by default): the preset's
  pixels before its normalisation, which runs on the device (`normalize_batch`).
  """
  shard = process_shard.shard(global_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  threads = tf_runtime.configure(cfg.threads)
  source = sources.get(cfg)
  preset = presets.resolve(cfg, source.metadata)
  split = source.load(cfg.train_split, cfg.cache, cfg.max_cache_mb)
  if not len(split):
    raise ValueError(f"Train split {cfg.train_split!r} is empty.")
  start = start_step * global_batch_size
  options = tf_runtime.options(threads)
  if isinstance(split, sources.ArraySplit):
    ds = _array_examples(split, preset, shard, seed, start)
    ds = ds.batch(shard.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return map(_with_mask, ds.with_options(options).as_numpy_iterator())
  epochs = _record_examples(split, preset, shard, seed, start)
  return undecodable.naming_undecodable(_chain(epochs, shard.batch_size, options), split)


def _array_examples(split: sources.ArraySplit, preset, shard, seed: int, start: int):
  n = len(split)
  images, labels = tf.constant(split.images), tf.constant(split.labels)

  def epoch(e):
    order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                     seeds.shuffle(seed, e))
    return tf.data.Dataset.zip(tf.data.Dataset.range(e * n, (e + 1) * n),
                               tf.data.Dataset.from_tensor_slices(order))

  def example(position, index):
    image = T.train_image(preset, tf.gather(images, index),
                          seeds.augment(seed, position // n, index))
    return {"image": image, "label": tf.gather(labels, index)}

  first = start // n
  ds = tf.data.Dataset.counter(first).flat_map(epoch).skip(start - first * n)
  ds = ds.filter(lambda position, _: shard.owns(position))
  return ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)


def _record_examples(split: sources.RecordSplit, preset, shard, seed: int, start: int):
  """One dataset per epoch, from the epoch `start` falls in; records are skipped undecoded."""
  n = len(split)
  first = start // n
  for e in itertools.count(first):
    ds = tf.data.Dataset.zip(tf.data.Dataset.range(e * n, (e + 1) * n),
                             split.read(seeds.python_int(seed, e)))
    if e == first:
      ds = ds.skip(start - e * n)

    def example(position, record, e=e):
      image = T.train_image(preset, T.Encoded(record["image"], split.decode, preset.channels),
                            seeds.augment(seed, e, position - e * n))
      return {"image": image, "label": tf.cast(record["label"], tf.int32)}

    ds = ds.filter(lambda position, _: shard.owns(position))
    yield ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)


def _chain(epochs, batch_size: int, options) -> Iterator[Batch]:
  """Batches of `batch_size` across the per-epoch datasets, without copying full batches."""
  carry = None
  for ds in epochs:
    if carry is not None:
      ds = tf.data.Dataset.from_tensor_slices(carry).concatenate(ds)
    carry = None
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)
    for batch in ds.as_numpy_iterator():
      if len(batch["label"]) < batch_size:
        carry = batch
      else:
        yield _with_mask(batch)


def _with_mask(batch: Batch) -> Batch:
  return {**batch, "mask": np.ones(len(batch["label"]), bool)}
