"""What the model and the training loop need to know of a dataset, without reading it."""

import dataclasses

from jresnet.data import presets, sources


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the preprocessed images fed to the model
  split_sizes: dict[str, int]  # examples in config.train_split and config.eval_split
  class_names: tuple[str, ...] | None


def load_info(cfg) -> DatasetInfo:
  """Metadata of the configured dataset, in seconds; raises DatasetNotFoundError (with advice)
  if the data is not on this machine, ValueError for an unknown source, preset or split, or a
  single class."""
  source = sources.get(cfg)
  preset = presets.resolve(cfg, source.metadata)
  sizes = {split: source.num_examples(split) for split in (cfg.train_split, cfg.eval_split)}
  meta = source.metadata
  if meta.num_classes < 2:
    raise ValueError(f"data.source={cfg.source!r} gives {meta.num_classes} class: a classifier "
                     "needs two or more.")
  return DatasetInfo(meta.num_classes, preset.image_shape, sizes, meta.class_names)
