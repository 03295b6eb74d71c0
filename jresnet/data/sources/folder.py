"""Image folders, `<path>/<split>/<class>/<image>.{jpg,jpeg,png}`, read by tfds's ImageFolder.

Classes are the sorted class directory names. ImageFolder lists each split in a fixed order, a
seeded shuffle of the sorted file names (`random.Random(split_name)`), so slices such as
'train[:45000]' / 'train[45000:]' of a class-sorted folder are disjoint, complete and balanced up
to sampling noise; ImageFolder rejects such sub-splits itself, so they are cut here.

Folders whose images all have one size and fit in `max_cache_mb` are decoded into memory once (in
parallel) and saved under `cache_dir`, so the next run loads an array instead of decoding again;
the cache key covers the folder's path, file counts and directory mtimes (editing an image in place
is not noticed); a damaged cache file is moved aside and rebuilt, with a warning. Other folders
are streamed; slicing a streamed split reads, but does not decode, the images before the slice.

Bad folders fail with the path at fault: an empty class directory, a single class, an image that
does not decode (in-memory splits when they are decoded, before training; streamed splits at the
first batch holding one, listing every undecodable file of the split).
"""

import functools
import hashlib
import json
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jresnet.data import splits, tf_runtime
from jresnet.data.errors import DAMAGED_NPZ_ERRORS, DatasetNotFoundError, UndecodableImageError
from jresnet.data.sources import base

_LAYOUT = "<path>/<split>/<class>/<image>.jpg (or .jpeg, .png)"
_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what ImageFolder lists


class FolderSource(base.Source):

  def __init__(self, cfg, threads: int):
    if not cfg.path:
      raise ValueError(f"source='folder' needs config.data.path, the root of {_LAYOUT}.")
    root = os.path.abspath(os.path.expanduser(cfg.path))
    if not os.path.isdir(root):
      raise DatasetNotFoundError(f"Image folder {root!r} does not exist; expected {_LAYOUT}.")
    self._builder = tfds.folder_dataset.ImageFolder(root)
    self._sizes = {name: s.num_examples for name, s in self._builder.info.splits.items()}
    if not any(self._sizes.values()):
      raise DatasetNotFoundError(
          f"No images found under {root!r}; expected {_LAYOUT}, e.g. {root}/train/cat/0001.jpg. "
          "If that directory is itself a split (it holds the class directories), set "
          "config.data.path to its parent.")
    self.root = root
    self._cfg = cfg
    self._threads = threads
    names = tuple(self._builder.info.features["label"].names)
    empty = [d for split in self._sizes for c in names
             if os.path.isdir(d := os.path.join(root, split, c))
             and not any(f.lower().endswith(_EXTENSIONS) for f in os.listdir(d))]
    if empty:
      raise ValueError(f"Empty class director{'ies' if len(empty) > 1 else 'y'} "
                       f"{', '.join(empty)}: each would be a class with no images; remove "
                       "them or add images.")
    if len(names) < 2:
      raise ValueError(f"Image folder {root!r} has {len(names)} class ({', '.join(names)}): a "
                       f"classifier needs two or more class directories; expected {_LAYOUT}.")
    self.metadata = base.Metadata("folder", len(names), names, self._first_image_shape())

  def _encoded(self, name: str) -> tf.data.Dataset:
    """Split `name`'s records, images still encoded, with their file names."""
    return self._builder.as_dataset(split=name, decoders={"image": tfds.decode.SkipDecoding()})

  def _first_image_shape(self) -> tuple[int, int, int]:
    """The first image's shape, taken as the folder's until decoding shows otherwise."""
    split = next(name for name, n in self._sizes.items() if n)
    first = next(iter(self._encoded(split).take(1)))
    try:
      return tuple(self._decode(first["image"]).shape.as_list())
    except tf_runtime.DECODE_ERRORS as e:
      raise UndecodableImageError(self._undecodable([split])) from e

  def files(self, name: str) -> list[str]:
    """The image files of the named split `name`, in the source's order."""
    filenames = self._encoded(name).map(lambda ex: ex["image/filename"])
    return [p.decode() for p in filenames.as_numpy_iterator()]

  def _undecodable(self, names) -> list[str]:
    """The files of splits `names` that do not decode: one parallel decoding pass."""
    paths, decodable = [], set()
    for name in names:
      ds = self._encoded(name)
      paths += self.files(name)
      ok = ds.map(lambda ex: (ex["image/filename"], tf.shape(self._decode(ex["image"]))),
                  num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
      decodable.update(p.decode() for p, _ in ok.as_numpy_iterator())
    return [p for p in paths if p not in decodable]

  def _decode(self, encoded: tf.Tensor) -> tf.Tensor:
    return self._builder.info.features["image"].decode_example(encoded)

  def split_names(self) -> tuple[str, ...]:
    return tuple(name for name, n in self._sizes.items() if n)

  def num_examples(self, split: str) -> int:
    return splits.num_examples(split, self._sizes)

  def load(self, split, cache, max_cache_mb):
    parts = splits.resolve(split, self._sizes)
    names = sorted({name for name, _, _ in parts})
    fits = base.fits_in_memory(self.metadata.image_shape, sum(self._sizes[n] for n in names),
                               max_cache_mb)
    if cache or (cache is None and fits):
      decoded = {name: self._decoded(name) for name in names}
      if all(d is not None for d in decoded.values()):
        return base.slice_arrays(split, decoded)
      if cache:
        raise ValueError(f"Images under {self.root!r} differ in size and cannot be held as one "
                         "array: set config.data.cache=False (or None) to stream them.")
      logging.info("Images under %s differ in size: streaming them.", self.root)
    return base.RecordSplit(sum(stop - start for _, start, stop in parts),
                            functools.partial(self._records, parts), self._decode,
                            functools.partial(self._undecodable, names))

  def _records(self, parts, seed: int | None) -> tf.data.Dataset:
    ds = None
    for name, start, stop in parts:
      part = self._encoded(name).skip(start).take(stop - start)
      ds = part if ds is None else ds.concatenate(part)
    ds = ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})
    if seed is not None:
      ds = ds.shuffle(self._cfg.shuffle_buffer, seed=seed)
    return ds

  def encoded(self, split: str) -> tuple[list[bytes], list[int], list[str]]:
    """The image files of `split` as they are on disk, their labels and their paths, in the
    source's order."""
    parts = splits.resolve(split, self._sizes)
    records = list(self._records(parts, None).as_numpy_iterator())
    files = [f for name, start, stop in parts for f in self.files(name)[start:stop]]
    return [r["image"] for r in records], [int(r["label"]) for r in records], files

  def _decoded(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """All images of split `name` as one uint8 array (from the disk cache if there), or None
    if they differ in size."""
    path = self._cache_path(name)
    if path and os.path.exists(path) and (cached := self._cached(path, name)):
      return cached
    shape = self.metadata.image_shape

    def same_size(ex):
      image = self._decode(ex["image"])
      ok = tf.reduce_all(tf.equal(tf.shape(image), shape))
      image = tf.cond(ok, lambda: tf.ensure_shape(image, shape),
                      lambda: tf.zeros(shape, tf.uint8))
      return image, tf.cast(ex["label"], tf.int32), ok

    ds = self._encoded(name).map(same_size, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    ds = ds.with_options(tf_runtime.options(self._threads))
    try:
      images, labels, ok = map(np.concatenate, zip(*ds.as_numpy_iterator()))
    except tf_runtime.DECODE_ERRORS as e:
      if not (bad := self._undecodable([name])):
        raise
      raise UndecodableImageError(bad) from e
    if not ok.all():
      return None
    if path:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp.npz"
      np.savez(tmp, images=images, labels=labels)
      os.replace(tmp, path)
    return images, labels

  def _cached(self, path: str, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The decode cache of split `name` at `path`; None if it is damaged (truncated, garbled,
    or another count of images), after moving it aside to `<path>.corrupt` (one such copy per
    cache file: a later one replaces it) so that the split is decoded and cached again."""
    try:
      with np.load(path) as f:
        images, labels = f["images"], f["labels"]
      if len(images) == len(labels) == self._sizes[name]:
        return images, labels
      why = f"{len(images)} images and {len(labels)} labels for {self._sizes[name]} files"
    except (KeyError, *DAMAGED_NPZ_ERRORS) as e:
      why = f"{type(e).__name__}: {e}"
    try:
      os.replace(path, f"{path}.corrupt")
    except FileNotFoundError:
      pass  # another process moved it aside first
    logging.warning("The decode cache %s is damaged (%s): moved it to %s.corrupt; decoding "
                    "%s again.", path, why, path, os.path.join(self.root, name))
    return None

  def _cache_path(self, name: str) -> str | None:
    if not self._cfg.cache_dir:
      return None
    split_dir = os.path.join(self.root, name)
    dirs = [split_dir] + [os.path.join(split_dir, c) for c in self.metadata.class_names]
    stamp = [self.root, name, self._sizes[name], self.metadata.image_shape, tfds.__version__,
             [(d, os.stat(d).st_mtime_ns) for d in dirs if os.path.isdir(d)]]
    key = hashlib.sha1(json.dumps(stamp).encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser(self._cfg.cache_dir),
                        f"folder-{os.path.basename(self.root)}-{name}-{key}.npz")
