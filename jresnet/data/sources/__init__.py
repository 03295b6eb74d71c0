"""Where examples come from, chosen by config.data.source.

Each source is imported when it is chosen: the TensorFlow ones ('tfds', 'folder') only then start
TensorFlow, with its threads bounded first (tf_runtime); 'digits', 'synthetic' and 'arrays' need
none.
"""

import importlib

from jresnet.data.sources.base import ArraySplit, Metadata, RecordSplit, Source

# name: (module, class, whether it runs TensorFlow)
SOURCES = {"tfds": ("tfds_source", "TfdsSource", True),
           "folder": ("folder", "FolderSource", True),
           "digits": ("digits", "DigitsSource", False),
           "synthetic": ("synthetic", "SyntheticSource", False),
           "arrays": ("arrays", "ArraysSource", False)}


def get(cfg, threads: int) -> Source:
  """The source config.data names; it fails fast if its data is not on this machine. `threads`
  bounds TensorFlow's pools where the source runs it."""
  if cfg.source not in SOURCES:
    raise ValueError(f"Unknown data source {cfg.source!r}; choose one of {sorted(SOURCES)}.")
  module, name, uses_tensorflow = SOURCES[cfg.source]
  source = getattr(importlib.import_module(f"jresnet.data.sources.{module}"), name)
  if not uses_tensorflow:
    return source(cfg)
  from jresnet.data import tf_runtime  # noqa: PLC0415 (TensorFlow only for these sources)

  tf_runtime.configure(threads)
  return source(cfg, threads)
