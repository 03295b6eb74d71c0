"""The presets in TensorFlow, for tf.data: one example at a time. Images are float32 in
[0, 255] until `normalize`; random operations are stateless, so their result is a pure function of
the image and the seed."""

import tensorflow as tf

from jresnet.data import presets


def resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """To `size` (H, W), bilinear with antialiasing; images already that size are only cast."""
  if image.shape[:2].as_list() == list(size):
    return tf.cast(image, tf.float32)
  return tf.image.resize(image, size, antialias=True)


def pad_and_crop(image: tf.Tensor, pad: int, seed: tf.Tensor) -> tf.Tensor:
  """Random translation by up to `pad` pixels: zero-pad every side, crop the original size.

  Zero (black) padding as in He et al. (2016) and torchvision's RandomCrop(32, padding=4).
  """
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(padded, tf.shape(image), seed)


def flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return tf.image.stateless_random_flip_left_right(image, seed)


def random_resized_crop(image: tf.Tensor, size: tuple[int, int], seed: tf.Tensor,
                        area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
  """Inception-style crop: a random box of `area` fraction and aspect `ratio`, resized to `size`.

  Ten attempts at a box, then the whole image (torchvision falls back to a centre crop instead).
  """
  begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ratio, area_range=area, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, box)
  return tf.image.resize(crop, size, antialias=True)


def center_crop(image: tf.Tensor, size: tuple[int, int], crop_fraction: float = 0.875) -> tf.Tensor:
  """Resize the shorter side to size / crop_fraction (224 -> 256), then take the central `size`."""
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = (max(size) / crop_fraction) / tf.reduce_min(hw)
  resized = tf.cast(tf.round(hw * scale), tf.int32)
  image = tf.image.resize(image, resized, antialias=True)
  top, left = tf.unstack((resized - tf.constant(size)) // 2)
  return tf.image.crop_to_bounding_box(image, top, left, size[0], size[1])


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
  """From [0, 255] to (x / 255 - mean) / std per channel."""
  mean = tf.constant(mean, tf.float32) * 255
  std = tf.constant(std, tf.float32) * 255
  return (image - mean) / std


def train_image(preset: presets.Preset, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """uint8 (h, w, C) -> float32 preset.image_shape, randomly augmented by the stateless `seed`."""
  size = preset.image_shape[:2]
  crop_seed, flip_seed = (tf.unstack(tf.random.experimental.stateless_split(seed, 2))
                          if preset.flip else (seed, None))
  if preset.train_crop == presets.RANDOM_RESIZED:
    out = random_resized_crop(image, size, crop_seed)
  else:
    out = resize(image, size)
    if preset.train_crop == presets.PAD:
      out = pad_and_crop(out, preset.pad, crop_seed)
  if preset.flip:
    out = flip(out, flip_seed)
  return tf.ensure_shape(normalize(out, preset.mean, preset.std), preset.image_shape)


def eval_image(preset: presets.Preset, image: tf.Tensor) -> tf.Tensor:
  """uint8 (h, w, C) -> float32 preset.image_shape, deterministically."""
  size = preset.image_shape[:2]
  if preset.eval_crop == presets.CENTER:
    out = center_crop(image, size, presets.CENTER_CROP_FRACTION)
  else:
    out = resize(image, size)
  return tf.ensure_shape(normalize(out, preset.mean, preset.std), preset.image_shape)
