"""Image files that TensorFlow cannot decode, named: what the tf.data pipelines raise instead of
TensorFlow's InvalidArgumentError, which names no file."""

from collections.abc import Iterator

import tensorflow as tf

from jresnet.data.errors import UndecodableImageError

# What TensorFlow raises for image bytes that do not decode (unknown format, truncated data).
DECODE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError)


def naming_undecodable(batches: Iterator, split) -> Iterator:
  """`batches`, with a decoding error of a streamed split turned into UndecodableImageError
  listing the split's undecodable files: a streamed split stops at the first batch that holds
  one (nothing is skipped), naming them all."""
  try:
    yield from batches
  except DECODE_ERRORS as e:
    paths = split.find_undecodable() if getattr(split, "find_undecodable", None) else []
    if not paths:
      raise
    raise UndecodableImageError(paths) from e
