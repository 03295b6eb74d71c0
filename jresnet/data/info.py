"""What the model and the training loop need to know of a dataset, without reading it.

The training side takes a DatasetInfo whatever made it: `data.open` from a real dataset,
benchmarks and tests from a shape alone.
"""

import dataclasses

from jresnet.data import presets, sources


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
  # The eval split used: config.eval_split, or where that is the default 'test' and the dataset
  # has none, its validation split (said in `notes`).
  eval_split: str | None = None
  preset: str | None = None  # the preprocessing preset applied ('auto' resolved)
  notes: tuple[str, ...] = dataclasses.field(default=(), repr=False)
  # The preset's normalisation, (x / 255 - mean) / std per channel: it runs on the device, on the
  # uint8 images the host stream yields (device_transforms.normalize_batch).
  mean: tuple[float, ...] = dataclasses.field(default=(0.0,), repr=False)
  std: tuple[float, ...] = dataclasses.field(default=(1.0,), repr=False)


# Tried in this order when the default eval split 'test' is absent.
EVAL_SPLITS = ("validation", "val", "valid", "test")
DEFAULT_EVAL_SPLIT = "test"


def _sized(field: str, spec: str, source, default: str | None = None) -> tuple[str, int, str]:
  """(split, its size, a note) for config field `field` = `spec`; the default eval split falls
  back to a validation split, anything else absent is an error naming the splits there are."""
  try:
    return spec, source.num_examples(spec), ""
  except (ValueError, KeyError) as e:
    names = source.split_names()
    if spec == default:
      chosen = next((s for s in EVAL_SPLITS if s in names), None)
      if chosen:
        return chosen, source.num_examples(chosen), (
            f"no {spec!r} split: evaluating on {chosen!r} (set --config.data.{field}=... to "
            "choose another)")
    raise ValueError(
        f"data.{field}={spec!r} is not a split of this dataset, whose splits are "
        f"{', '.join(map(repr, names))}: set --config.data.{field}=<split>, e.g. "
        f"--config.data.{field}={names[-1] if names else 'train'}, or hold out part of train: "
        "--config.data.train_split='train[:90%]' --config.data.eval_split='train[90%:]'"
    ) from e


def eval_transform(preset: presets.Preset) -> dict:
  size = preset.image_shape[0]
  imagenet = preset.name == "imagenet"
  return {"resize": round(size / presets.CENTER_CROP_FRACTION) if imagenet else size,
          "crop": size, "keep_aspect": imagenet, "interpolation": "bilinear",
          "mean": list(preset.mean), "std": list(preset.std)}


def describe(cfg, source: sources.Source, preset: presets.Preset) -> DatasetInfo:
  """What config.data's `source` under `preset` gives, without reading the data; ValueError for
  a split the source does not have, or a single class."""
  train_split, train_size, _ = _sized("train_split", cfg.train_split, source)
  eval_split, eval_size, note = _sized("eval_split", cfg.eval_split, source, DEFAULT_EVAL_SPLIT)
  sizes = {train_split: train_size, eval_split: eval_size}
  meta = source.metadata
  if meta.num_classes < 2:
    raise ValueError(f"data.source={cfg.source!r} gives {meta.num_classes} class: a classifier "
                     "needs two or more.")
  return DatasetInfo(meta.num_classes, preset.image_shape, sizes, meta.class_names,
                     eval_transform(preset), eval_split, preset.name, (note,) if note else (),
                     preset.mean, preset.std)
