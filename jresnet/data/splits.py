"""Sub-splits ('train[:90%]', 'train[45000:]', 'train[:45000]+test') for sources tfds cannot slice.

TFDS's own parser and rounding are used, so 'train[:90%]' means the same examples of a folder as
of a TFDS dataset with the same order. Slices index the source's fixed example order, which for
folders is a seeded shuffle (see sources/folder.py): slices of a class-sorted folder are balanced.
"""

from collections.abc import Mapping

import tensorflow_datasets as tfds


def resolve(spec: str, sizes: Mapping[str, int]) -> list[tuple[str, int, int]]:
  """[(split, start, stop)] that `spec` reads, given the size of each named split."""
  infos = {name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
           for name, n in sizes.items()}
  absolute = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
  return [(a.splitname, a.from_ or 0, sizes[a.splitname] if a.to is None else a.to)
          for a in absolute]


def num_examples(spec: str, sizes: Mapping[str, int]) -> int:
  return sum(stop - start for _, start, stop in resolve(spec, sizes))
