"""What the model and the training loop need to know of a dataset, without reading it."""

import dataclasses

from jresnet.data import presets, sources, tf_runtime


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the preprocessed images fed to the model
  split_sizes: dict[str, int]  # examples in config.train_split and config.eval_split
  class_names: tuple[str, ...] | None
  # The preset's eval transform of one image, as `jresnet.export` records it: resize (the
  # shorter side to `resize`, or with keep_aspect False the whole image to crop x crop), centre
  # crop, then (x / 255 - mean) / std.
  eval_transform: dict | None = dataclasses.field(default=None, repr=False)


def eval_transform(preset: presets.Preset) -> dict:
  size = preset.image_shape[0]
  imagenet = preset.name == "imagenet"
  return {"resize": round(size / presets.CENTER_CROP_FRACTION) if imagenet else size,
          "crop": size, "keep_aspect": imagenet, "interpolation": "bilinear",
          "mean": list(preset.mean), "std": list(preset.std)}


def load_info(cfg) -> DatasetInfo:
  """Metadata of the configured dataset, in seconds; raises DatasetNotFoundError (with advice)
  if the data is not on this machine, ValueError for an unknown source, preset or split."""
  tf_runtime.configure(cfg.threads)
  source = sources.get(cfg)
  preset = presets.resolve(cfg, source.metadata)
  sizes = {split: source.num_examples(split) for split in (cfg.train_split, cfg.eval_split)}
  meta = source.metadata
  return DatasetInfo(meta.num_classes, preset.image_shape, sizes, meta.class_names,
                     eval_transform(preset))
