"""The evaluation stream: every example of a split exactly once, in a fixed order.

Global batch k holds positions [kB, (k+1)B) of the split and process p its rows [pb, (p+1)b).
Every process yields ceil(N / B) batches, so they run the same number of collective steps; rows
past the end (the last batch, or a whole batch on a process with a shorter shard) are padding:
image 0, label 0, mask False.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from jresnet.data import presets, process_shard, sources, tf_runtime, undecodable
from jresnet.data import transforms as T

Batch = dict[str, np.ndarray]


def num_eval_batches(cfg, split: str | None = None, *, global_batch_size: int) -> int:
  """How many batches eval_batches yields on every process."""
  n = sources.get(cfg).num_examples(split or cfg.eval_split)
  return process_shard.eval_batch_count(n, global_batch_size)


def eval_batches(cfg, split: str | None = None, *, global_batch_size: int,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[Batch]:
  """This process's rows of each global batch over `split` (default cfg.eval_split).

  Yields {'image': uint8 (b, H, W, C), 'label': int32 (b,), 'mask': bool (b,)}: pixels before
  the preset's normalisation, as train_batches.
  """
  shard = process_shard.shard(global_batch_size, process_index, process_count)
  threads = tf_runtime.configure(cfg.threads)
  source = sources.get(cfg)
  preset = presets.resolve(cfg, source.metadata)
  data = source.load(split or cfg.eval_split, cfg.cache, cfg.max_cache_mb)
  n = len(data)
  positions = tf.data.Dataset.range(n)
  if isinstance(data, sources.ArraySplit):
    images, labels = tf.constant(data.images), tf.constant(data.labels)
    ds = positions.filter(shard.owns).map(
        lambda p: {"image": T.eval_image(preset, tf.gather(images, p)),
                   "label": tf.gather(labels, p)},
        num_parallel_calls=tf.data.AUTOTUNE)
  else:
    ds = tf.data.Dataset.zip(positions, data.read(None))
    ds = ds.filter(lambda p, _: shard.owns(p)).map(
        lambda p, r: {"image": T.eval_image(preset,
                                            T.Encoded(r["image"], data.decode, preset.channels)),
                      "label": tf.cast(r["label"], tf.int32)},
        num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(shard.batch_size).prefetch(tf.data.AUTOTUNE)
  ds = ds.with_options(tf_runtime.options(threads))
  steps = process_shard.eval_batch_count(n, global_batch_size)
  batches = undecodable.naming_undecodable(ds.as_numpy_iterator(), data)
  return _padded(batches, steps, shard.batch_size, preset.image_shape)


def check_split(cfg, split: str | None = None) -> None:
  """Reads `split` (default cfg.eval_split) as eval_batches does, so that a broken image fails
  now, naming the file, rather than at the first evaluation: an in-memory split is decoded (and
  cached), a streamed one is only opened."""
  sources.get(cfg).load(split or cfg.eval_split, cfg.cache, cfg.max_cache_mb)


def _padded(batches, steps: int, batch_size: int, image_shape) -> Iterator[Batch]:
  for _ in range(steps):
    batch = next(batches, None)
    rows = 0 if batch is None else len(batch["label"])
    if rows == batch_size:
      yield {**batch, "mask": np.ones(batch_size, bool)}
      continue
    padded = {"image": np.zeros((batch_size, *image_shape), np.uint8),
              "label": np.zeros(batch_size, np.int32),
              "mask": np.arange(batch_size) < rows}
    if rows:
      padded["image"][:rows], padded["label"][:rows] = batch["image"], batch["label"]
    yield padded
