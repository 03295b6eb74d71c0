"""The errors of bad or missing data: the training program prints their advice."""


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not on this machine; the message says where we looked and how to provide it."""


class UndecodableImageError(ValueError):
  """Image files that do not decode; the message lists them."""

  def __init__(self, paths: list[str]):
    more = f" ... and {len(paths) - 10} more" if len(paths) > 10 else ""
    super().__init__(f"{len(paths)} image file(s) cannot be decoded: {', '.join(paths[:10])}"
                     f"{more}. Remove or replace them.")
    self.paths = paths
