"""The presets in TensorFlow, for tf.data: one example at a time, to uint8 pixels; the
normalisation runs on the device (`device_transforms.normalize`), so the host does no float work
per pixel after the resize and sends a quarter of the bytes. Random operations are stateless, so
their result is a pure function of the image and the seed.

An example arrives decoded (in-memory splits) or `Encoded` (streamed records). Crops of an encoded
JPEG decode only their window (`tf.io.decode_and_crop_jpeg`: the entropy decoding still reads the
whole file, the rest of the work is the window's); other formats are decoded whole, then cropped.
Both give the same window for the same seed, so an image's crop does not depend on its storage.
Crops (train's random box, eval's central one) are resized bilinearly, antialiased only where the
window is at least twice the output (photographs larger than ImageNet's): the same rule for both,
so the model is evaluated on pixels resampled as it was trained on, and what antialiasing costs
(BENCHMARKS.md, ImageNet-style input) is paid only where plain bilinear would skip pixels. Whole
images resized to a preset's shape are antialiased, as the device path resizes them.
"""

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from jresnet.data import presets

INCEPTION_AREA, INCEPTION_ASPECT = (0.08, 1.0), (3 / 4, 4 / 3)  # RANDOM_RESIZED's box ranges


@dataclasses.dataclass(frozen=True)
class Encoded:
  """An image still encoded: a scalar string tensor, and the source's decoder for any format."""
  data: tf.Tensor
  decode: Callable  # encoded -> uint8 (H, W, C)
  channels: int


Image = tf.Tensor | Encoded  # uint8 (H, W, C) or encoded
Window = Callable  # (H, W) int32 -> (top, left, height, width) int32 of a crop


def decoded(image: Image) -> tf.Tensor:
  return image.decode(image.data) if isinstance(image, Encoded) else image


def crop(image: Image, window: Window) -> tf.Tensor:
  """The uint8 pixels of `window(image height and width)`, decoding only them from a JPEG."""
  if not isinstance(image, Encoded):
    top, left, height, width = tf.unstack(window(tf.shape(image)[:2]))
    return image[top:top + height, left:left + width]

  def jpeg():
    box = window(tf.io.extract_jpeg_shape(image.data)[:2])
    return tf.io.decode_and_crop_jpeg(image.data, box, channels=image.channels)

  return tf.cond(tf.io.is_jpeg(image.data), jpeg, lambda: crop(decoded(image), window))


def inception_window(seed: tf.Tensor, area=INCEPTION_AREA, aspect=INCEPTION_ASPECT) -> Window:
  """A random box of `area` fraction and `aspect` ratio (Szegedy et al.); ten attempts at one,
  then the whole image (torchvision falls back to a centre crop instead)."""
  def window(hw):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([hw, [1]], 0), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=aspect, area_range=area, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return tf.concat([begin[:2], size[:2]], 0)
  return window


def center_window(size: tuple[int, int], crop_fraction: float) -> Window:
  """The central box that resizing the shorter side to max(size) / crop_fraction (224 -> 256)
  and cropping the central `size` would keep: the same pixels, resized once."""
  def window(hw):
    extent = tf.cast(tf.reduce_min(hw), tf.float32) * crop_fraction / max(size)
    box = tf.minimum(tf.cast(tf.round(extent * tf.constant(size, tf.float32)), tf.int32), hw)
    return tf.concat([(hw - box) // 2, box], 0)
  return window


def resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """To `size` (H, W), bilinear with antialiasing, float32 in [0, 255]; an image already that
  size is only cast."""
  if image.shape[:2].as_list() == list(size):
    return tf.cast(image, tf.float32)
  return tf.image.resize(image, size, antialias=True)


def resize_crop(crop: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """A crop to `size`, bilinear, float32 in [0, 255]; antialiased only where it shrinks by 2x or
  more, where plain bilinear would skip pixels."""
  shrinks = tf.reduce_any(tf.shape(crop)[:2] >= 2 * tf.constant(size))
  return tf.cond(shrinks, lambda: tf.image.resize(crop, size, antialias=True),
                 lambda: tf.image.resize(crop, size))


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounded; bilinear resizes (antialiased or not) stay within [0, 255], so no clipping."""
  return tf.cast(image + 0.5, tf.uint8)


def pad_and_crop(image: tf.Tensor, pad: int, seed: tf.Tensor) -> tf.Tensor:
  """Random translation by up to `pad` pixels: zero-pad every side, crop the original size.

  Zero (black) padding as in He et al. (2016) and torchvision's RandomCrop(32, padding=4).
  """
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(padded, tf.shape(image), seed)


def flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return tf.image.stateless_random_flip_left_right(image, seed)


def train_image(preset: presets.Preset, image: Image, seed: tf.Tensor) -> tf.Tensor:
  """An image -> uint8 preset.image_shape, randomly augmented by the stateless `seed`."""
  size = preset.image_shape[:2]
  crop_seed, flip_seed = (tf.unstack(tf.random.experimental.stateless_split(seed, 2))
                          if preset.flip else (seed, None))
  if preset.train_crop == presets.RANDOM_RESIZED:
    out = to_uint8(resize_crop(crop(image, inception_window(crop_seed)), size))
  else:
    out = to_uint8(resize(decoded(image), size))
    if preset.train_crop == presets.PAD:
      out = pad_and_crop(out, preset.pad, crop_seed)
  if preset.flip:
    out = flip(out, flip_seed)
  return tf.ensure_shape(out, preset.image_shape)


def eval_image(preset: presets.Preset, image: Image) -> tf.Tensor:
  """An image -> uint8 preset.image_shape, deterministically."""
  size = preset.image_shape[:2]
  if preset.eval_crop == presets.CENTER:
    out = resize_crop(crop(image, center_window(size, presets.CENTER_CROP_FRACTION)), size)
  else:
    out = resize(decoded(image), size)
  return tf.ensure_shape(to_uint8(out), preset.image_shape)
