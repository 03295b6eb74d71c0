"""The array file: a dataset's splits, decoded to uint8 arrays (or kept as the source's JPEG
bytes), with their labels, class names and split names, in one `.npz` that numpy reads back.

It carries an in-memory dataset to machines that have no TensorFlow (`data.source='arrays'`), and
it is what the device path places on the accelerators. Splits are stored under the split strings
they were written from (e.g. 'train[:45000]'), so a config reads them with the same
`train_split` / `eval_split` as it did from the original source.

    python train.py --mode=write_arrays --config configs/cifar10_resnet20_budget.py \
        --config.data.path=<image folder> --workdir runs/cifar10_arrays [--arrays_encoding=jpeg]

'raw' stores the decoded pixels; 'jpeg' stores an image folder's JPEG files as they are (about 20x
smaller for CIFAR-sized images) and decodes them with Pillow when read, whose pixels differ from
TensorFlow's decoder by a few levels.

Writing and reading check every split the same way (`check_split`, `check_agreement`), so a file
that is written reads back, and one made by other means (or damaged) fails when it is opened, with
the file, the split and the first offending example named; a reader never modifies the file.
"""

import concurrent.futures
import io
import json
import math
import os
import zipfile

import numpy as np

from jresnet.data.errors import DAMAGED_NPZ_ERRORS, PILLOW_ERRORS, ArrayFileError

FORMAT_VERSION = 1
ENCODINGS = ("raw", "jpeg")
REWRITE = "write the file again with `python train.py --mode=write_arrays`"


def write(path: str, source, split_names: list[str], encoding: str = "raw") -> dict[str, int]:
  """Writes `split_names` of `source` (a jresnet.data source) to `path`, atomically; returns
  each split's example count. Every split is checked as the reader checks it before anything is
  written; with 'jpeg' that decodes every file, naming one that does not decode."""
  if encoding not in ENCODINGS:
    raise ValueError(f"arrays encoding must be one of {ENCODINGS}; got {encoding!r}")
  meta = source.metadata
  payload = {"format_version": np.array(FORMAT_VERSION), "encoding": np.array(encoding),
             "name": np.array(meta.name),
             "class_names": np.array(json.dumps(list(meta.class_names or ()))),
             "num_classes": np.array(meta.num_classes),
             "splits": np.array(json.dumps(split_names))}
  counts, shapes = {}, {}
  for i, name in enumerate(split_names):
    where = f"split {name!r} of {meta.name}"
    if encoding == "raw":
      split = source.load(name, cache=True, max_cache_mb=float("inf"))
      payload[f"images_{i}"], payload[f"labels_{i}"] = split.images, split.labels
      check_split(where, split.images, split.labels, meta.num_classes)
      shapes[name] = (split.images.shape[1:], split.images.dtype)
    else:
      encoded, labels, files = source.encoded(name)
      if not_jpeg := next((f for e, f in zip(encoded, files) if e[:2] != b"\xff\xd8"), None):
        raise ValueError(f"arrays encoding 'jpeg' needs JPEG files; {not_jpeg} in {where} is "
                         "not one: use encoding 'raw'")
      labels = np.asarray(labels, np.int32)
      images = _decode_all(encoded, lambda index, files=files: files[index],
                           "replace or remove that image")
      check_split(where, images, labels, meta.num_classes)
      shapes[name] = (images.shape[1:], images.dtype)
      offsets = np.cumsum([0] + [len(e) for e in encoded])
      payload[f"jpeg_{i}"] = np.frombuffer(b"".join(encoded), np.uint8)
      payload[f"offsets_{i}"], payload[f"labels_{i}"] = offsets, labels
    counts[name] = len(payload[f"labels_{i}"])
  check_agreement(meta.name, shapes)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, **payload)
  os.replace(tmp, path)
  return counts


def check_split(where: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
  """Raises ArrayFileError, naming `where` (the file and split) and the first offending example,
  unless `images` (N, H, W, C) and `labels` (N,) make a split of `num_classes` classes: integer
  labels in [0, num_classes), one per image, integer or float pixels, finite where float."""
  if images.ndim != 4 or images.dtype.kind not in "uif":
    raise ArrayFileError(f"{where}: images are {images.dtype} {images.shape}; expected integer "
                         "or float pixels (N, H, W, C)")
  if labels.ndim != 1 or labels.dtype.kind not in "ui":
    raise ArrayFileError(f"{where}: labels are {labels.dtype} {labels.shape}; expected integer "
                         "class indices (N,)")
  if len(images) != len(labels):
    raise ArrayFileError(f"{where}: {len(images)} images but {len(labels)} labels; expected one "
                         "label per image")
  outside = (labels < 0) | (labels >= num_classes)
  if outside.any():
    index = int(np.argmax(outside))
    raise ArrayFileError(f"{where}: label {labels[index]} at index {index} is not a class "
                         f"index in [0, {num_classes})")
  if images.dtype.kind == "f":
    # In chunks of examples, in order: the mask's memory stays small, the first bad one is found.
    pixels, chunk = math.prod(images.shape[1:]), 4096
    for start in range(0, len(images), chunk):
      finite = np.isfinite(images[start:start + chunk]).reshape(-1, pixels).all(axis=1)
      if not finite.all():
        index = start + int(np.argmin(finite))
        value = images[index][~np.isfinite(images[index])][0]
        raise ArrayFileError(f"{where}: image {index} has a non-finite pixel ({value}); expected "
                             "finite pixels in [0, 255]")


def check_agreement(where: str, shapes: dict[str, tuple[tuple, np.dtype]]) -> None:
  """Raises ArrayFileError unless the splits' images ({split: ((H, W, C), dtype)}) agree in size,
  channels and dtype, as one model reads them all."""
  (first, expected), *others = shapes.items()
  for name, got in others:
    if got != expected:
      raise ArrayFileError(f"{where}: split {name!r} holds {got[1]} images of {got[0]}, split "
                           f"{first!r} {expected[1]} images of {expected[0]}; expected the same "
                           "(H, W, C) and dtype in every split")


class ArrayFile:
  """An array file opened for reading: metadata at once, a split's arrays, checked, on
  `split(name)`. A damaged file is named (never modified)."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._npz = np.load(path)
      version = int(self._read("format_version"))
      self.encoding = str(self._read("encoding"))
      self.name = str(self._read("name"))
      self.class_names = tuple(json.loads(str(self._read("class_names")))) or None
      self.num_classes = int(self._read("num_classes"))
      self.split_names = json.loads(str(self._read("splits")))
    except (zipfile.BadZipFile, EOFError) as e:  # truncated: no zip directory, or no bytes at all
      raise self._damaged("the zip directory", e) from e
    except ArrayFileError:
      raise
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f"{path} is not a jresnet array file ({type(e).__name__}: {e}); write "
                       "one with `python train.py --mode=write_arrays`") from e
    if version != FORMAT_VERSION:
      raise ValueError(f"{path} has array-file version {version}; this jresnet reads "
                       f"{FORMAT_VERSION}: write it again")

  def _damaged(self, member: str, error: Exception) -> ArrayFileError:
    return ArrayFileError(f"{self.path} is damaged ({member}: {type(error).__name__}: {error}); "
                          f"it is left as it is: {REWRITE}")

  def _read(self, key: str) -> np.ndarray:
    """The array stored under `key`; ArrayFileError naming the file if it does not read."""
    try:
      return self._npz[key]
    except DAMAGED_NPZ_ERRORS as e:
      raise self._damaged(key, e) from e

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W, C), int32 labels (N,)) of the stored split `name`, checked
    (`check_split`)."""
    i = self.split_names.index(name)
    labels = self._read(f"labels_{i}")
    if self.encoding == "raw":
      images = self._read(f"images_{i}")
    else:
      data, offsets = self._read(f"jpeg_{i}"), self._read(f"offsets_{i}")
      if len(offsets) != len(labels) + 1:
        raise ArrayFileError(f"{self.path}, split {name!r}: {len(offsets) - 1} images but "
                             f"{len(labels)} labels; expected one label per image")
      files = [data[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
      images = _decode_all(files, lambda index: f"{self.path}, split {name!r}, image {index}",
                           REWRITE)
    check_split(f"{self.path}, split {name!r}", images, labels, self.num_classes)
    return images, labels.astype(np.int32)


def _decode_all(files: list[bytes], describe, advice: str) -> np.ndarray:
  """The JPEG `files` decoded by Pillow (in parallel) and stacked; ArrayFileError naming the first
  that does not decode (with `advice`), or differs in shape from the first, as
  `describe(index)`."""

  def decode(index: int) -> np.ndarray:
    try:
      return _decode_jpeg(files[index])
    except PILLOW_ERRORS as e:
      raise ArrayFileError(f"{describe(index)} does not decode ({type(e).__name__}: {e}): "
                           f"{advice}") from e

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    images = list(pool.map(decode, range(len(files))))
  index = next((i for i, image in enumerate(images) if image.shape != images[0].shape), None)
  if index is not None:
    raise ArrayFileError(f"{describe(index)} is {images[index].shape} but {describe(0)} is "
                         f"{images[0].shape}: the images of an array file have one size")
  return np.stack(images)


def _decode_jpeg(data: bytes) -> np.ndarray:
  from PIL import Image  # noqa: PLC0415 (only for JPEG-encoded array files)

  with Image.open(io.BytesIO(data)) as image:
    array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array
