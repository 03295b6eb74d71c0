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
"""

import concurrent.futures
import io
import json
import os

import numpy as np

FORMAT_VERSION = 1
ENCODINGS = ("raw", "jpeg")


def write(path: str, source, split_names: list[str], encoding: str = "raw") -> dict[str, int]:
  """Writes `split_names` of `source` (a jresnet.data source) to `path`, atomically; returns
  each split's example count."""
  if encoding not in ENCODINGS:
    raise ValueError(f"arrays encoding must be one of {ENCODINGS}; got {encoding!r}")
  meta = source.metadata
  payload = {"format_version": np.array(FORMAT_VERSION), "encoding": np.array(encoding),
             "name": np.array(meta.name),
             "class_names": np.array(json.dumps(list(meta.class_names or ()))),
             "num_classes": np.array(meta.num_classes),
             "splits": np.array(json.dumps(split_names))}
  counts = {}
  for i, name in enumerate(split_names):
    if encoding == "raw":
      split = source.load(name, cache=True, max_cache_mb=float("inf"))
      payload[f"images_{i}"], payload[f"labels_{i}"] = split.images, split.labels
    else:
      encoded, labels = source.encoded(name)
      if not all(e[:2] == b"\xff\xd8" for e in encoded):
        raise ValueError(f"arrays encoding 'jpeg' needs JPEG files; split {name!r} of "
                         f"{meta.name} has others: use encoding 'raw'")
      offsets = np.cumsum([0] + [len(e) for e in encoded])
      payload[f"jpeg_{i}"] = np.frombuffer(b"".join(encoded), np.uint8)
      payload[f"offsets_{i}"], payload[f"labels_{i}"] = offsets, np.asarray(labels, np.int32)
    counts[name] = len(payload[f"labels_{i}"])
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, **payload)
  os.replace(tmp, path)
  return counts


class ArrayFile:
  """An array file opened for reading: metadata at once, a split's arrays on `split(name)`."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._npz = np.load(path)
      version = int(self._npz["format_version"])
      self.encoding = str(self._npz["encoding"])
      self.name = str(self._npz["name"])
      self.class_names = tuple(json.loads(str(self._npz["class_names"]))) or None
      self.num_classes = int(self._npz["num_classes"])
      self.split_names = json.loads(str(self._npz["splits"]))
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f"{path} is not a jresnet array file ({type(e).__name__}: {e}); write "
                       "one with `python train.py --mode=write_arrays`") from e
    if version != FORMAT_VERSION:
      raise ValueError(f"{path} has array-file version {version}; this jresnet reads "
                       f"{FORMAT_VERSION}: write it again")

  def size(self, name: str) -> int:
    return len(self._npz[f"labels_{self.split_names.index(name)}"])

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, H, W, C), int32 labels (N,)) of the stored split `name`."""
    i = self.split_names.index(name)
    labels = self._npz[f"labels_{i}"].astype(np.int32)
    if self.encoding == "raw":
      return self._npz[f"images_{i}"], labels
    data, offsets = self._npz[f"jpeg_{i}"], self._npz[f"offsets_{i}"]
    files = [data[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
      images = list(pool.map(_decode_jpeg, files, chunksize=256))
    return np.stack(images), labels


def _decode_jpeg(data: bytes) -> np.ndarray:
  from PIL import Image  # noqa: PLC0415 (only for JPEG-encoded array files)

  with Image.open(io.BytesIO(data)) as image:
    array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array
