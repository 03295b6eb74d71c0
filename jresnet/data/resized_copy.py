"""A copy of a dataset with the shorter side of every image capped at `max_side` pixels, as JPEG,
in an image folder `<out>/<split>/<class>/<image>.jpg` that the folder source reads back.

Decoding costs about in proportion to the pixels, so training from a copy capped a little above
the crop's resolution (FFCV caps ImageNet at 500 px for the same reason) decodes faster than
from full-size photographs (BENCHMARKS.md, ImageNet-style input). Images already within the cap
are re-encoded at their size. Every named split of the source is copied whole (slices such as
'train[:90%]' then read the copy as they read the original):

- an image folder keeps its file names, so a slice of the copy holds the same images as the same
  slice of the original (PNG files become JPEG, `<name>.jpg`);
- a TFDS dataset's images are numbered in its fixed order, `<label>_<class name>/<index>.jpg`
  (the label first, so that the folder source, which sorts class directories, keeps the label
  numbers); the folder source orders a split by a shuffle of its file names, so the copy's slices
  are other samples than TFDS's slices of the same split. Splits without labels are skipped.

The folder source reads images as RGB, so a copy of a grayscale dataset reads back with 3
channels.

    python train.py --mode=write_resized --resized_side=256 --config <config> --workdir <dir>
"""

import os
import re
import shutil

import tensorflow as tf

from jresnet.data import host_stream, tf_runtime
from jresnet.data.sources import folder as folder_source

QUALITY = 90  # FFCV's for its ImageNet copies; against 95 in BENCHMARKS.md
_PATH_UNSAFE = re.compile(r"[^\w.-]")  # in a class name, e.g. sun397's '/a/abbey'


def cap_shorter_side(image: tf.Tensor, max_side: int) -> tf.Tensor:
  """uint8 (H, W, C) -> uint8 with min(H, W) <= max_side (aspect kept, antialiased); smaller
  images are returned as they are."""
  hw = tf.shape(image)[:2]
  scale = max_side / tf.cast(tf.reduce_min(hw), tf.float32)

  def shrink():
    size = tf.cast(tf.round(tf.cast(hw, tf.float32) * scale), tf.int32)
    return tf.saturate_cast(tf.round(tf.image.resize(image, size, antialias=True)), tf.uint8)

  return tf.cond(scale < 1, shrink, lambda: image)


def write(source, threads: int, out_dir: str, max_side: int,
          quality: int = QUALITY) -> dict[str, int]:
  """Copies every split of `source` (a jresnet.data source) to `out_dir`, with tf.data's
  `threads`; returns the images
  written per split. Fails before writing if `out_dir` exists; writes into `<out_dir>.partial`
  and renames it when complete, so an interrupted copy never looks like a finished one. An image
  that does not decode stops the copy with UndecodableImageError, which lists the split's
  undecodable files where the source knows them (an image folder)."""
  if max_side < 1:
    raise ValueError(f"resized_side={max_side} must be a positive number of pixels.")
  if not 90 <= quality <= 100:
    raise ValueError(f"JPEG quality {quality} must be in [90, 100]: lower costs accuracy.")
  if os.path.exists(out_dir):
    raise FileExistsError(f"{out_dir!r} exists: write the copy to a new directory (or delete "
                          "that one).")
  partial = f"{out_dir}.partial"
  shutil.rmtree(partial, ignore_errors=True)  # what an interrupted copy left
  counts = {}
  for split in source.split_names():
    examples = _examples(source, split, partial)
    if examples is None:
      print(f"split {split!r} skipped: it has no labelled examples")
      continue
    decode, ds, directories, records = examples
    for d in directories:
      os.makedirs(d, exist_ok=True)

    def copy(encoded, destination, decode=decode):
      capped = cap_shorter_side(decode(encoded), max_side)
      tf.io.write_file(destination, tf.io.encode_jpeg(capped, quality=quality))
      return destination

    ds = ds.map(copy, num_parallel_calls=tf.data.AUTOTUNE)
    written = host_stream.naming_undecodable(ds.with_options(tf_runtime.options(threads)), records)
    counts[split] = sum(1 for _ in written)
    for d in directories:  # a class without images in this split: no empty class directory
      if not os.listdir(d):
        os.rmdir(d)
  os.replace(partial, out_dir)
  return counts


def _examples(source, split: str, out_dir: str):
  """(the decoder, a dataset of (encoded image, destination file), the destinations'
  directories, the split as a RecordSplit, which can name its undecodable files), or None for a
  split without labelled examples (label -1, as imagenet2012's test split). A TFDS split is read
  once: the pipeline names each destination by its label."""
  if isinstance(source, folder_source.FolderSource):
    files = source.files(split)
    root = source.root
    destinations = [os.path.join(out_dir, os.path.splitext(os.path.relpath(f, root))[0] + ".jpg")
                    for f in files]
    if len(set(destinations)) < len(destinations):
      raise ValueError(f"split {split!r} of {root!r} has files that differ only in their "
                       "extension (x.png beside x.jpg): the copy would write one over the other.")
    channels = source.metadata.image_shape[2]
    decode = lambda e: tf.io.decode_image(e, channels, expand_animations=False)
    encoded = tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file)
    return (decode, tf.data.Dataset.zip(encoded, tf.data.Dataset.from_tensor_slices(destinations)),
            sorted({os.path.dirname(d) for d in destinations}),
            source.load(split, cache=False, max_cache_mb=0))
  records = source.load(split, cache=False, max_cache_mb=0)
  first = next(records.read(None).take(1).as_numpy_iterator(), None)
  if first is None or first["label"] < 0:
    return None
  digits = len(str(source.metadata.num_classes - 1))
  names = source.metadata.class_names or ("",) * source.metadata.num_classes
  # The label first, zero-padded: the folder source sorts class directories by name.
  directories = [os.path.join(out_dir, split,
                              f"{i:0{digits}d}_{_PATH_UNSAFE.sub('_', n)}".rstrip("_"))
                 for i, n in enumerate(names)]

  def destination(index, record):
    name = tf.strings.as_string(index, width=8, fill="0") + ".jpg"
    return record["image"], tf.strings.join([tf.gather(directories, record["label"]), name], "/")

  return records.decode, records.read(None).enumerate().map(destination), directories, records
