"""Where examples come from, chosen by config.data.source."""

from jresnet.data.sources.base import ArraySplit, Metadata, RecordSplit, Source, naming_undecodable
from jresnet.data.sources.digits import DigitsSource
from jresnet.data.sources.folder import FolderSource
from jresnet.data.sources.synthetic import SyntheticSource
from jresnet.data.sources.tfds_source import TfdsSource

SOURCES = {"tfds": TfdsSource, "folder": FolderSource, "digits": DigitsSource,
           "synthetic": SyntheticSource}


def get(cfg) -> Source:
  """The source config.data names; it fails fast if its data is not on this machine."""
  if cfg.source not in SOURCES:
    raise ValueError(f"Unknown data source {cfg.source!r}; choose one of {sorted(SOURCES)}.")
  return SOURCES[cfg.source](cfg)
