"""Every random choice of the pipeline is a pure function of (seed, epoch, example).

That is what makes the stream resumable: step k can be produced without replaying steps 0..k-1.
Seeds are TensorFlow's stateless seeds, shape [2] int64; each use has its own stream tag so that
the shuffle and the augmentation never share random numbers.
"""

import numpy as np
import tensorflow as tf

_SHUFFLE, _AUGMENT = 0, 1


def _fold(seed, *data) -> tf.Tensor:
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def shuffle(seed: int, epoch) -> tf.Tensor:
  """Seed of the permutation of the split in `epoch`."""
  return _fold(tf.constant([seed, _SHUFFLE], tf.int64), epoch)


def augment(seed: int, epoch, index) -> tf.Tensor:
  """Seed of the augmentation of example `index` in `epoch` (fresh crops/flips every epoch)."""
  return _fold(tf.constant([seed, _AUGMENT], tf.int64), epoch, index)


def python_int(seed: int, epoch: int) -> int:
  """For APIs that take only a Python int seed (tfds.ReadConfig, Dataset.shuffle of records)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
