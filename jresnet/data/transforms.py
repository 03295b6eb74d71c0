"""What tf.data does to one streamed image: decode it and bring it to the preset's size, as
uint8 pixels. The imagenet preset's crops happen here, since they choose what to decode; every
other augmentation, and the normalisation, runs on the devices (device_transforms.py), so the host
does no float work per pixel after the resize and sends a quarter of the bytes. Random operations
are stateless, so their result is a pure function of the image and the seed.

Crops of a JPEG decode only their window (`tf.io.decode_and_crop_jpeg`: the entropy decoding still
reads the whole file, the rest of the work is the window's); other formats are decoded whole, then
cropped, to the same window for the same seed. Crops (train's random box, eval's central one) are
resized bilinearly, antialiased only where the window is at least twice the output (photographs
larger than ImageNet's): the same rule for both, so the model is evaluated on pixels resampled as
it was trained on, and what antialiasing costs (BENCHMARKS.md, ImageNet-style input) is paid only
where plain bilinear would skip pixels. Whole images resized to a preset's shape are antialiased,
as the device path resizes them.
"""

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from jresnet.data import presets


@dataclasses.dataclass(frozen=True)
class Encoded:
  """An image still encoded: a scalar string tensor, and the source's decoder for any format."""
  data: tf.Tensor
  decode: Callable  # encoded -> uint8 (H, W, C)
  channels: int


Window = Callable  # (H, W) int32 -> (top, left, height, width) int32 of a crop


def crop(image: Encoded, window: Window) -> tf.Tensor:
  """The uint8 pixels of `window(image height and width)`, decoding only them from a JPEG."""
  def jpeg():
    box = window(tf.io.extract_jpeg_shape(image.data)[:2])
    return tf.io.decode_and_crop_jpeg(image.data, box, channels=image.channels)

  def other():
    decoded = image.decode(image.data)
    top, left, height, width = tf.unstack(window(tf.shape(decoded)[:2]))
    return decoded[top:top + height, left:left + width]

  return tf.cond(tf.io.is_jpeg(image.data), jpeg, other)


def inception_window(seed: tf.Tensor, area=presets.INCEPTION_AREA,
                     aspect=presets.INCEPTION_ASPECT) -> Window:
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


def train_image(preset: presets.Preset, image: Encoded, seed: tf.Tensor) -> tf.Tensor:
  """An encoded image -> uint8 preset.image_shape: the imagenet preset's random crop and flip,
  drawn from the stateless `seed`; any other preset's resize (its augmentation runs on the
  devices)."""
  size = preset.image_shape[:2]
  if preset.train_crop != presets.RANDOM_RESIZED:
    return tf.ensure_shape(to_uint8(resize(image.decode(image.data), size)), preset.image_shape)
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  out = to_uint8(resize_crop(crop(image, inception_window(crop_seed)), size))
  if preset.flip:
    out = tf.image.stateless_random_flip_left_right(out, flip_seed)
  return tf.ensure_shape(out, preset.image_shape)


def eval_image(preset: presets.Preset, image: Encoded) -> tf.Tensor:
  """An encoded image -> uint8 preset.image_shape, deterministically."""
  size = preset.image_shape[:2]
  if preset.eval_crop == presets.CENTER:
    out = resize_crop(crop(image, center_window(size, presets.CENTER_CROP_FRACTION)), size)
  else:
    out = resize(image.decode(image.data), size)
  return tf.ensure_shape(to_uint8(out), preset.image_shape)
