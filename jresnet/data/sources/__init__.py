"""Where examples come from, chosen by config.data.source.

Each source is imported when it is chosen: the TensorFlow ones ('tfds', 'folder') only then start
TensorFlow, with its threads bounded first (tf_runtime); 'digits', 'synthetic' and 'arrays' need
none.
"""

import importlib

import numpy as np

from jresnet.data.sources.base import ArraySplit, Metadata, RecordSplit, Source

# name: (module, class, whether it runs TensorFlow)
SOURCES = {"tfds": ("tfds_source", "TfdsSource", True),
           "folder": ("folder", "FolderSource", True),
           "digits": ("digits", "DigitsSource", False),
           "synthetic": ("synthetic", "SyntheticSource", False),
           "arrays": ("arrays", "ArraysSource", False)}


def get(cfg) -> Source:
  """The source config.data names; it fails fast if its data is not on this machine."""
  if cfg.source not in SOURCES:
    raise ValueError(f"Unknown data source {cfg.source!r}; choose one of {sorted(SOURCES)}.")
  module, name, uses_tensorflow = SOURCES[cfg.source]
  if uses_tensorflow:
    from jresnet.data import tf_runtime  # noqa: PLC0415 (TensorFlow only for these sources)
    tf_runtime.configure(cfg.threads)
  return getattr(importlib.import_module(f"jresnet.data.sources.{module}"), name)(cfg)


def decoded_split(cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Every example of `split` of config.data's source, decoded into memory in the source's fixed
  order and before any preset: uint8 images (N, H, W, C) and int32 labels (N,). For code that
  batches and augments a split itself."""
  data = get(cfg).load(split, True, cfg.max_cache_mb)
  return np.asarray(data.images), np.asarray(data.labels)
