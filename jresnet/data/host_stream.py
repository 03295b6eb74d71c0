"""The host stream: a split streamed from storage, read and decoded by tf.data.

tf.data decodes each image and brings it to the preset's size (the imagenet preset's random or
central crop, which decodes only its window of a JPEG; else a resize); every other augmentation
runs on the devices (device_stream.finish_streamed_train). Batches are uint8.

Train: stream position g is record g mod N of epoch g // N, in that epoch's seeded order (shuffled
files plus a shuffle buffer, sources/base.py), and global batch k holds positions [kB, (k+1)B):
batches run across epoch boundaries (the rows left at an epoch's end open the next epoch's first
batch), every epoch reads each record once, and each row carries its epoch and its offset in it,
which seed its augmentation. Resuming at `start_step` skips records undecoded. Process p of P keeps
rows [p*b, (p+1)*b) of every global batch: each process reads every (encoded) record but decodes
only its own rows, which keeps the shards an exact partition of the single-process batch.

Eval: every record once, in the split's fixed order; every process yields ceil(N / B) batches, rows
past the end (the last batch, or a whole batch on a process with a shorter shard) padded: image
0, label 0, mask False.

Image bytes that do not decode stop the stream with UndecodableImageError listing the split's
undecodable files (TensorFlow's own error names none).
"""

import itertools
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from jresnet.data import presets, process_shard, sources, tf_runtime
from jresnet.data import transforms as T
from jresnet.data.device_stream import AUGMENT_STREAM
from jresnet.data.errors import UndecodableImageError

Batch = dict[str, np.ndarray]



def _augment_seed(seed: int, epoch, offset) -> tf.Tensor:
  """TensorFlow's stateless seed of the crop of the row at `offset` of `epoch`."""
  key = tf.constant([seed, AUGMENT_STREAM], tf.int64)
  for data in (epoch, offset):
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))
  return key


def _shuffle_seed(seed: int, epoch: int) -> int:
  """The Python int seed of `epoch`'s record order (tfds.ReadConfig and shuffle take ints)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_batches(split: sources.RecordSplit, preset: presets.Preset, shard: process_shard.Shard,
                  *, seed: int, start_step: int, threads: int) -> Iterator[Batch]:
  """This process's rows of each global batch from `start_step` on, forever: {'image' uint8
  (b, H, W, C), 'label', 'mask' (all True), 'epoch', 'offset'}."""
  n, start = len(split), start_step * shard.global_batch_size
  first = start // n

  def epochs():
    for e in itertools.count(first):
      ds = tf.data.Dataset.zip(tf.data.Dataset.range(e * n, (e + 1) * n),
                               split.read(_shuffle_seed(seed, e)))
      if e == first:
        ds = ds.skip(start - e * n)

      def example(position, record, e=e):
        offset = position - e * n
        image = T.train_image(preset, T.Encoded(record["image"], split.decode, preset.channels),
                              _augment_seed(seed, e, offset))
        return {"image": image, "label": tf.cast(record["label"], tf.int32),
                "epoch": tf.cast(e, tf.int32), "offset": tf.cast(offset, tf.int32)}

      ds = ds.filter(lambda position, _: shard.owns(position))
      yield ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)

  options = tf_runtime.options(threads)
  return naming_undecodable(_chain(epochs(), shard.batch_size, options), split)


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
        yield {**batch, "mask": np.ones(batch_size, bool)}


def eval_batches(split: sources.RecordSplit, preset: presets.Preset, shard: process_shard.Shard,
                 *, threads: int) -> Iterator[Batch]:
  """This process's rows of each global batch over the split: {'image' uint8, 'label', 'mask'}."""
  ds = tf.data.Dataset.zip(tf.data.Dataset.range(len(split)), split.read(None))
  ds = ds.filter(lambda position, _: shard.owns(position)).map(
      lambda _, record: {
          "image": T.eval_image(preset, T.Encoded(record["image"], split.decode,
                                                  preset.channels)),
          "label": tf.cast(record["label"], tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(shard.batch_size).prefetch(tf.data.AUTOTUNE)
  batches = naming_undecodable(ds.with_options(tf_runtime.options(threads)).as_numpy_iterator(),
                                split)
  steps = process_shard.eval_batch_count(len(split), shard.global_batch_size)
  return _padded(batches, steps, shard.batch_size, preset.image_shape)


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


def naming_undecodable(batches: Iterator, split: sources.RecordSplit) -> Iterator:
  """`batches`, with a decoding error turned into UndecodableImageError listing the split's
  undecodable files (where the source knows them)."""
  try:
    yield from batches
  except tf_runtime.DECODE_ERRORS as e:
    paths = split.find_undecodable() if split.find_undecodable else []
    if not paths:
      raise
    raise UndecodableImageError(paths) from e
