"""Split strings ('train', 'train[:90%]', 'train[45000:]', 'train[:45000]+test') for the sources
that slice their own examples.

TFDS's syntax and rounding (a percentage becomes the closest example index), so that
'train[:90%]' means the same examples of a folder or an array file as of a TFDS dataset with the
same order; tests/test_data.py checks the two agree. Written out here because it must work
without TensorFlow and TFDS, which TFDS's own parser imports. Slices index the source's fixed
example order, which for folders is a seeded shuffle (see sources/folder.py): slices of a
class-sorted folder are balanced.
"""

import re
from collections.abc import Mapping

_PART = re.compile(r"^(?P<name>[\w-]+)(\[(?P<start>-?[\d_.]*%?)?:(?P<stop>-?[\d_.]*%?)?\])?$")


def _boundary(text: str | None, n: int, default: int, spec: str) -> int:
  if not text:
    return default
  percent = text.endswith("%")
  value = float(text[:-1]) if percent else int(text)
  if percent:
    if abs(value) > 100:
      raise ValueError(f"split {spec!r}: a percentage must be within [-100%, 100%]")
    value = int(round(value * n / 100.0))
  if abs(value) > n:
    raise ValueError(f"split {spec!r}: slice boundary {text} is outside a split of {n} examples")
  return value + n if value < 0 else value


def resolve(spec: str, sizes: Mapping[str, int]) -> list[tuple[str, int, int]]:
  """[(split, start, stop)] that `spec` reads, given the size of each named split."""
  parts = []
  for part in re.split(r"\s*\+\s*", spec.strip()):
    match = _PART.match(part)
    if not match:
      raise ValueError(f"Unrecognized split format: {part!r} in {spec!r}; write e.g. 'train', "
                       "'train[:90%]', 'train[45000:]' or 'train[:100]+test'")
    name = match["name"]
    if name not in sizes:
      raise ValueError(f"Unknown split {name!r}. Should be one of {list(sizes)}.")
    n = sizes[name]
    start = _boundary(match["start"], n, 0, spec)
    stop = _boundary(match["stop"], n, n, spec)
    parts.append((name, start, max(start, stop)))
  return parts


def num_examples(spec: str, sizes: Mapping[str, int]) -> int:
  return sum(stop - start for _, start, stop in resolve(spec, sizes))
