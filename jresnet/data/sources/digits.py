"""scikit-learn's 1,797 real 8x8 handwritten digits: a dataset that is on every machine, offline.

Splits: a stratified 80/20 split with a fixed seed, 'train' (1,437) and 'test' (360). Pixels 0..16
are scaled to uint8 0..255; the 'digits' preset upsamples them (default to 32x32) so that CIFAR
ResNets train on them, and a small ResNet reaches about 98% test accuracy in minutes on a CPU.
"""

import functools

import numpy as np
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from jresnet.data import splits
from jresnet.data.sources import base

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.cache
def _base_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
  return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


class DigitsSource(base.Source):

  def __init__(self, cfg):
    del cfg  # Nothing to configure: the data is bundled with scikit-learn.
    self.metadata = base.Metadata("digits", 10, tuple(str(d) for d in range(10)), (8, 8, 1))

  def split_names(self) -> tuple[str, ...]:
    return tuple(_base_splits())

  def num_examples(self, split: str) -> int:
    return splits.num_examples(split, {k: len(v[1]) for k, v in _base_splits().items()})

  def load(self, split, cache, max_cache_mb) -> base.ArraySplit:
    del cache, max_cache_mb  # 1.5 MB: always in memory.
    return base.slice_arrays(split, _base_splits())
