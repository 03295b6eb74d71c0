"""An array file (jresnet/data/arrays.py) at config.data.path: in memory, no TensorFlow.

A split string names a stored split exactly ('train[:45000]'), or slices the stored splits
('train[:90%]' of a file that holds 'train'). Every stored split is read and checked when the
source is made (arrays.check_split, arrays.check_agreement), so a bad file fails before anything
is compiled, naming the file, the split and the first offending example.
"""

import os

from jresnet.data import arrays, splits
from jresnet.data.errors import DatasetNotFoundError
from jresnet.data.sources import base


class ArraysSource(base.Source):

  def __init__(self, cfg):
    if not cfg.path:
      raise ValueError("source='arrays' needs config.data.path, an array file written by "
                       "`python train.py --mode=write_arrays`.")
    path = os.path.abspath(os.path.expanduser(cfg.path))
    if not os.path.isfile(path):
      raise DatasetNotFoundError(f"No array file at {path!r}; write one with `python train.py "
                                 "--mode=write_arrays --config <config> --workdir <dir>`.")
    self._file = arrays.ArrayFile(path)
    # Every stored split, read and checked now: a bad file fails here, before anything compiles.
    self._loaded = {name: self._file.split(name) for name in self._file.split_names}
    arrays.check_agreement(path, {name: (images.shape[1:], images.dtype)
                                  for name, (images, _) in self._loaded.items()})
    first = self._loaded[self._file.split_names[0]][0]
    self.metadata = base.Metadata(self._file.name, self._file.num_classes,
                                  self._file.class_names, tuple(first.shape[1:]))

  def split_names(self) -> tuple[str, ...]:
    return tuple(self._file.split_names)

  def _sizes(self) -> dict[str, int]:
    return {name: len(labels) for name, (_, labels) in self._loaded.items()}

  def num_examples(self, split: str) -> int:
    if split in self._loaded:
      return len(self._loaded[split][1])
    return splits.num_examples(split, self._sizes())

  def load(self, split, cache, max_cache_mb) -> base.ArraySplit:
    del cache, max_cache_mb  # Always in memory.
    if split in self._file.split_names:
      return base.ArraySplit(*self._loaded[split])
    parts = splits.resolve(split, self._sizes())
    return base.slice_arrays(split, {name: self._loaded[name] for name, _, _ in parts})
