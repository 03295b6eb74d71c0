"""The errors of bad or missing data: the training program prints their advice."""

import zipfile
import zlib

# What numpy raises for a damaged .npz: a truncated zip, a bad CRC, a garbled array header.
DAMAGED_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)
# What Pillow raises for bytes that do not decode (unknown format, truncated or garbled data).
PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not on this machine; the message says where we looked and how to provide it."""


class UndecodableImageError(ValueError):
  """Image files that do not decode; the message lists them."""

  def __init__(self, paths: list[str]):
    more = f" ... and {len(paths) - 10} more" if len(paths) > 10 else ""
    super().__init__(f"{len(paths)} image file(s) cannot be decoded: {', '.join(paths[:10])}"
                     f"{more}. Remove or replace them.")
    self.paths = paths


class ArrayFileError(ValueError):
  """An array file that is damaged or whose arrays do not make a dataset; the message names the
  file, the split and the first offending example."""
