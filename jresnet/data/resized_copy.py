"""A copy of a dataset with the shorter side of every image capped at `max_side` pixels, as JPEG,
in an image folder `<out>/<split>/<class>/<image>.jpg` that the folder source reads back.

Decoding costs about in proportion to the pixels, so training from a copy capped a little above
the crop's resolution (FFCV caps ImageNet at 500 px for the same reason) decodes several times
faster than from full-size photographs. Images already within the cap are re-encoded at their
size. Every named split of the source is copied whole (slices such as 'train[:90%]' then read
the copy as they read the original):

- an image folder keeps its file names, so a slice of the copy holds the same images as the same
  slice of the original (PNG files become JPEG, `<name>.jpg`);
- a TFDS dataset's images are numbered in its fixed order, `<class>/<index>.jpg`; the folder
  source orders a split by a shuffle of its file names, so the copy's slices are other samples
  than TFDS's slices of the same split.

    python train.py --mode=write_resized --resized_side=256 --config <config> --workdir <dir>
"""

import os

import tensorflow as tf

from jresnet.data import sources, tf_runtime
from jresnet.data.sources import folder as folder_source

QUALITY = 95


def cap_shorter_side(image: tf.Tensor, max_side: int) -> tf.Tensor:
  """uint8 (H, W, C) -> uint8 with min(H, W) <= max_side (aspect kept, antialiased); smaller
  images are returned as they are."""
  hw = tf.shape(image)[:2]
  scale = max_side / tf.cast(tf.reduce_min(hw), tf.float32)

  def shrink():
    size = tf.cast(tf.round(tf.cast(hw, tf.float32) * scale), tf.int32)
    return tf.saturate_cast(tf.round(tf.image.resize(image, size, antialias=True)), tf.uint8)

  return tf.cond(scale < 1, shrink, lambda: image)


def write(cfg, out_dir: str, max_side: int, quality: int = QUALITY) -> dict[str, int]:
  """Copies every split of the source `cfg` (config.data) to `out_dir`; returns the images
  written per split. Fails before writing anything if `out_dir` holds files."""
  if max_side < 1:
    raise ValueError(f"resized_side={max_side} must be a positive number of pixels.")
  if not 90 <= quality <= 100:
    raise ValueError(f"JPEG quality {quality} must be in [90, 100]: lower costs accuracy.")
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir!r} is not empty: write the copy to a new directory (or "
                          "delete that one).")
  threads = tf_runtime.configure(cfg.threads)
  source = sources.get(cfg)
  counts = {}
  for split in source.split_names():
    images, destinations = _images_and_destinations(source, cfg, split, out_dir)
    for d in {os.path.dirname(p) for p in destinations}:
      os.makedirs(d, exist_ok=True)

    def copy(image, destination):
      capped = cap_shorter_side(image, max_side)
      tf.io.write_file(destination, tf.io.encode_jpeg(capped, quality=quality))
      return destination

    ds = tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(destinations))
    ds = ds.map(copy, num_parallel_calls=tf.data.AUTOTUNE)
    counts[split] = sum(1 for _ in ds.with_options(tf_runtime.options(threads)))
  return counts


def _images_and_destinations(source, cfg, split: str, out_dir: str):
  """The split's decoded uint8 images (a tf.data.Dataset) and where each goes."""
  channels = source.metadata.image_shape[2]
  if isinstance(source, folder_source.FolderSource):
    files = source.files(split)
    root = os.path.abspath(os.path.expanduser(cfg.path))
    destinations = [os.path.join(out_dir, os.path.splitext(os.path.relpath(f, root))[0] + ".jpg")
                    for f in files]
    images = tf.data.Dataset.from_tensor_slices(files).map(
        lambda f: tf.io.decode_image(tf.io.read_file(f), channels, expand_animations=False))
    return images, destinations
  records = source.load(split, cache=False, max_cache_mb=0)
  names = source.metadata.class_names or tuple(map(str, range(source.metadata.num_classes)))
  labels = [int(label) for label in records.read(None).map(lambda r: r["label"])
            .as_numpy_iterator()]
  destinations = [os.path.join(out_dir, split, names[label], f"{i:08d}.jpg")
                  for i, label in enumerate(labels)]
  images = records.read(None).map(lambda r: records.decode(r["image"]))
  return images, destinations
