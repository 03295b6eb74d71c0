"""Random images and labels, fixed by a seed: for benchmarks and smoke tests, never a fallback.

Splits 'train' and 'test' each hold `num_examples` uniform-noise uint8 images of `image_shape`
with uniform labels in [0, num_classes); the content depends only on `synthetic_seed`.
"""

import numpy as np

from jresnet.data import splits
from jresnet.data.sources import base

_SPLITS = ("train", "test")


class SyntheticSource(base.Source):

  def __init__(self, cfg):
    shape = tuple(cfg.image_shape)
    if len(shape) != 3 or min(shape) < 1:
      raise ValueError(f"synthetic image_shape must be (H, W, C), got {shape}.")
    self._cfg = cfg
    self.metadata = base.Metadata("synthetic", cfg.num_classes, None, shape)

  def _sizes(self) -> dict[str, int]:
    return dict.fromkeys(_SPLITS, self._cfg.num_examples)

  def split_names(self) -> tuple[str, ...]:
    return tuple(self._sizes())

  def num_examples(self, split: str) -> int:
    return splits.num_examples(split, self._sizes())

  def load(self, split, cache, max_cache_mb) -> base.ArraySplit:
    del cache, max_cache_mb  # Generated in memory.
    shape, n = self.metadata.image_shape, self._cfg.num_examples
    arrays = {}
    for name, _, _ in splits.resolve(split, self._sizes()):
      rng = np.random.default_rng([self._cfg.synthetic_seed, _SPLITS.index(name)])
      arrays[name] = (rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                      rng.integers(0, self._cfg.num_classes, n, dtype=np.int32))
    return base.slice_arrays(split, arrays)
