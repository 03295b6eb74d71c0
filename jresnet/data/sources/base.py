"""What every source provides: metadata, split sizes, and a split either in memory or streamed.

In memory (`ArraySplit`) a split is random-access, so each epoch is a full permutation and
resuming costs nothing. Streamed (`RecordSplit`, for datasets that do not fit, like imagenet2012)
records are read in a fixed, seeded order and decoded only once they are known to be needed, so
resuming skips encoded records; the order is a file shuffle plus a shuffle buffer, not a full
permutation.
"""

import abc
import dataclasses
import math
from collections.abc import Callable

import numpy as np

from jresnet.data import splits


@dataclasses.dataclass(frozen=True)
class Metadata:
  name: str  # what preset 'auto' keys on: a TFDS name, 'folder', 'digits' or 'synthetic'
  num_classes: int
  class_names: tuple[str, ...] | None
  image_shape: tuple  # (H, W, C) as stored; H, W are None where images differ in size


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """A split decoded into memory."""
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class RecordSplit:
  """A split read from storage in order, images still encoded."""
  num_examples: int
  # read(shuffle_seed): {'image': encoded bytes, 'label'} records; None = the fixed order.
  read: Callable  # (shuffle seed or None) -> a tf.data.Dataset of those records
  # Encoded image (a tf.Tensor) -> uint8 (H, W, C).
  decode: Callable
  # The paths of the split's files that do not decode (one decoding pass), where known.
  find_undecodable: Callable | None = None

  def __len__(self) -> int:
    return self.num_examples


class Source(abc.ABC):
  metadata: Metadata

  @abc.abstractmethod
  def split_names(self) -> tuple[str, ...]:
    """The named splits there are (what split strings slice)."""

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Size of `split` (a split string such as 'train[:90%]'), without reading the data."""

  @abc.abstractmethod
  def load(self, split: str, cache: bool | None, max_cache_mb: float) -> ArraySplit | RecordSplit:
    """The examples of `split`, in memory or streamed (`cache`, None = decide by size)."""


def fits_in_memory(image_shape: tuple, num_examples: int, max_cache_mb: float) -> bool:
  """Whether a split of `num_examples` images of fixed `image_shape` may be held decoded."""
  if None in image_shape:
    return False
  return num_examples * math.prod(image_shape) <= max_cache_mb * 2**20


def slice_arrays(spec: str, base: dict[str, tuple[np.ndarray, np.ndarray]]) -> ArraySplit:
  """The split string `spec` of named in-memory splits {name: (images, labels)}."""
  parts = splits.resolve(spec, {name: len(labels) for name, (_, labels) in base.items()})
  images = [base[name][0][start:stop] for name, start, stop in parts]
  labels = [base[name][1][start:stop] for name, start, stop in parts]
  images = images[0] if len(images) == 1 else np.concatenate(images)
  labels = labels[0] if len(labels) == 1 else np.concatenate(labels)
  return ArraySplit(images, labels.astype(np.int32))
