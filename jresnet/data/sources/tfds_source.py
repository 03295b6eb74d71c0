"""Any TFDS image classification dataset (features 'image' and 'label') from `data_dir`.

Presence is checked with `builder.is_prepared()` (a fraction of a second): `tfds.load` on a machine
without network retries its downloads for minutes before failing. Nothing is downloaded unless
config.data.download is True.
"""

import tensorflow_datasets as tfds

from jresnet.data.errors import DatasetNotFoundError
from jresnet.data.sources import base


def _advice(name: str, builder, cfg) -> str:
  data_dir = cfg.data_dir or tfds.core.constants.DATA_DIR
  lines = [
      f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r} "
      f"(looked for {builder.data_dir}). Provide it in one of these ways:",
      f"  - on a machine with network: `tfds build {name} --data_dir={data_dir}`, "
      "then copy that directory here (or point --config.data.data_dir at it);",
      "  - or run once with --config.data.download=True on a machine with network;",
  ]
  if name.startswith("imagenet2012"):
    lines.append(
        "  - imagenet2012 cannot be downloaded by TFDS: put ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar in a directory and run with --config.data.manual_dir=<it> "
        "--config.data.download=True (no network needed);")
  lines.append(
      "  - or use an image folder: --config.data.source=folder --config.data.path=<root> "
      "with images in <root>/<split>/<class>/<image>.jpg.")
  return "\n".join(lines)


class TfdsSource(base.Source):

  def __init__(self, cfg, threads: int):
    del threads  # TFDS reads with tf.data's options of each pipeline
    try:
      builder = tfds.builder(cfg.name, data_dir=cfg.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      # TFDS's own message lists every registered dataset (~1,000 lines): not repeated here.
      raise ValueError(
          f"{cfg.name!r} is not a TFDS dataset, nor one prepared in data_dir="
          f"{cfg.data_dir or tfds.core.constants.DATA_DIR!r}: check --config.data.name "
          "(`tfds.list_builders()` lists the registered ones) and, for a dataset you built "
          "yourself, --config.data.data_dir (where `tfds build` wrote it).") from None
    if not builder.is_prepared():
      if not cfg.download:
        raise DatasetNotFoundError(_advice(cfg.name, builder, cfg))
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=cfg.manual_dir))
    features = builder.info.features
    if not {"image", "label"} <= set(features.keys()):
      raise ValueError(f"TFDS dataset {cfg.name!r} has features {list(features.keys())}; "
                       "an image classification dataset needs 'image' and 'label'.")
    label = features["label"]
    self._builder = builder
    self._shuffle_buffer = cfg.shuffle_buffer
    self.metadata = base.Metadata(cfg.name, label.num_classes, tuple(label.names),
                                  tuple(features["image"].shape))

  def split_names(self) -> tuple[str, ...]:
    return tuple(self._builder.info.splits.keys())

  def num_examples(self, split: str) -> int:
    return self._builder.info.splits[split].num_examples

  def load(self, split, cache, max_cache_mb):
    n = self.num_examples(split)
    if cache is None:
      cache = base.fits_in_memory(self.metadata.image_shape, n, max_cache_mb)
    if cache:
      return self._arrays(split, n)
    return base.RecordSplit(n, lambda seed: self._records(split, seed),
                            self._builder.info.features["image"].decode_example)

  def _arrays(self, split: str, n: int) -> base.ArraySplit:
    if None in self.metadata.image_shape:
      raise ValueError(f"{self.metadata.name} images differ in size and cannot be held as one "
                       "array: set config.data.cache=False to stream them.")
    data = self._builder.as_dataset(
        split=split, batch_size=-1, shuffle_files=False,
        decoders=tfds.decode.PartialDecoding({"image": True, "label": True}))
    data = tfds.as_numpy(data)
    if len(data["label"]) != n:
      raise RuntimeError(f"{self.metadata.name}[{split}] has {len(data['label'])} examples, "
                         f"its metadata says {n}: the prepared files are damaged.")
    return base.ArraySplit(data["image"], data["label"].astype("int32"))

  def _records(self, split: str, seed: int | None):
    """Encoded records: fixed file order, or for a seed shuffled files plus a shuffle buffer."""
    ds = self._builder.as_dataset(
        split=split, shuffle_files=seed is not None,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
        decoders=tfds.decode.PartialDecoding(
            {"image": True, "label": True}, decoders={"image": tfds.decode.SkipDecoding()}))
    if seed is not None:
      ds = ds.shuffle(self._shuffle_buffer, seed=seed)
    return ds
