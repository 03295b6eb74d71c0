"""The presets' augmentation in JAX, on a whole batch on the devices: the only implementation of
every augmentation but the crops of streamed imagenet images (tf.data's, transforms.py). Random
choices come from one key per example, so a batch is a pure function of its images and keys.
Images are float32 in [0, 255] until the normalisation, the last step of every batch.

To add an augmentation to in-memory data, add it to `train_batch` (docs/data.md shows how). The
'imagenet' crops are boxes of whole pixels resampled by `jax.image.scale_and_translate` with per-
example (traced) scales and translations, so no shape depends on the box; each is resized as
tf.data resizes the cropped pixels alone (`transforms.resize_crop`: bilinear, antialiased only
where the box is at least twice the output). The random boxes are drawn as torchvision draws them,
not by TensorFlow's sampler: the same ranges, a different distribution within them.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jresnet.data import presets

INCEPTION_ATTEMPTS = 10  # boxes drawn before falling back to the whole image, as tf.data's


def _resize(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear with antialiasing, as tf.image.resize(antialias=True); same size: only a cast."""
  images = images.astype(jnp.float32)
  if images.shape[1:3] == tuple(size):
    return images
  shape = (images.shape[0], *size, images.shape[3])
  return jax.image.resize(images, shape, method="bilinear", antialias=True)


def crop_resize(image: jax.Array, box, size: tuple[int, int], antialias: bool) -> jax.Array:
  """The pixels of `box` (top, left, height, width) of an (H, W, C) image resized bilinearly to
  `size`, float32, as resizing the crop alone would: the image is masked to the box and every
  output pixel's weights are renormalised over the box, so no pixel beside it leaks in."""
  box = jnp.asarray(box, jnp.float32)
  start, extent = box[:2], box[2:]
  scale = jnp.asarray(size, jnp.float32) / extent
  translation = -start * scale
  resample = functools.partial(jax.image.scale_and_translate, method="linear",
                               antialias=antialias)
  rows, cols = ((jnp.arange(n) >= start[d]) & (jnp.arange(n) < start[d] + extent[d])
                for d, n in enumerate(image.shape[:2]))
  masked = image.astype(jnp.float32) * (rows[:, None, None] & cols[None, :, None])
  out = resample(masked, (*size, image.shape[2]), (0, 1), scale, translation)
  row_weight, col_weight = (
      resample(inside.astype(jnp.float32), (size[d],), (0,), scale[d:d + 1], translation[d:d + 1])
      for d, inside in enumerate((rows, cols)))
  return out / (row_weight[:, None, None] * col_weight[None, :, None])


def _shrinks(box_extent, size) -> bool | jax.Array:
  """transforms.resize_crop's rule: antialias where the box is at least twice the output."""
  return (box_extent[0] >= 2 * size[0]) | (box_extent[1] >= 2 * size[1])


def inception_box(key: jax.Array, hw: tuple[int, int], area=presets.INCEPTION_AREA,
                  aspect=presets.INCEPTION_ASPECT) -> jax.Array:
  """int32 (top, left, height, width) of a random box in an image of height and width `hw`
  (Szegedy et al.): area fraction uniform in `area`, aspect ratio (width / height) log-uniform
  in `aspect`, as torchvision draws them. The first of INCEPTION_ATTEMPTS draws whose box in whole
  pixels fits in the image and in both ranges, else the whole image, as tf.data falls back
  (`transforms.inception_window`; torchvision falls back to a centre crop)."""
  h, w = hw
  area_key, aspect_key, top_key, left_key = jax.random.split(key, 4)
  box_area = h * w * jax.random.uniform(area_key, (INCEPTION_ATTEMPTS,), minval=area[0],
                                        maxval=area[1])
  ratio = jnp.exp(jax.random.uniform(aspect_key, (INCEPTION_ATTEMPTS,),
                                     minval=math.log(aspect[0]), maxval=math.log(aspect[1])))
  heights = jnp.round(jnp.sqrt(box_area / ratio)).astype(jnp.int32)
  widths = jnp.round(jnp.sqrt(box_area * ratio)).astype(jnp.int32)
  pixels = heights * widths
  fits = ((heights >= 1) & (heights <= h) & (widths >= 1) & (widths <= w)
          & (pixels >= area[0] * h * w) & (pixels <= area[1] * h * w)
          & (widths >= aspect[0] * heights) & (widths <= aspect[1] * heights))
  first = jnp.argmax(fits)
  height = jnp.where(fits[first], heights[first], h)
  width = jnp.where(fits[first], widths[first], w)
  top = jax.random.randint(top_key, (), 0, h - height + 1)
  left = jax.random.randint(left_key, (), 0, w - width + 1)
  return jnp.stack([top, left, height, width])


def _random_resized_crop(image: jax.Array, key: jax.Array, size: tuple[int, int]) -> jax.Array:
  box = inception_box(key, image.shape[:2])
  return jax.lax.cond(_shrinks(box[2:], size),
                      lambda: crop_resize(image, box, size, antialias=True),
                      lambda: crop_resize(image, box, size, antialias=False))


def center_box(hw: tuple[int, int], size: tuple[int, int],
               crop_fraction: float = presets.CENTER_CROP_FRACTION) -> tuple[int, ...]:
  """transforms.center_window's box (top, left, height, width) for images of a fixed `hw`, in
  the same float32 arithmetic, so both paths crop the same pixels."""
  extent = np.float32(min(hw)) * np.float32(crop_fraction) / np.float32(max(size))
  box = np.minimum(np.round(extent * np.asarray(size, np.float32)).astype(int), hw)
  return (*((np.asarray(hw) - box) // 2).tolist(), *box.tolist())


def _translate(image: jax.Array, pad: int, key: jax.Array) -> jax.Array:
  """Zero-pad every side by `pad`, crop the original size at a random offset."""
  h, w, c = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))


def _maybe_flip(image: jax.Array, key: jax.Array) -> jax.Array:
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """Pixels in [0, 255] (any dtype) -> float32 (x / 255 - mean) / std per channel."""
  mean = jnp.asarray(mean, jnp.float32) * 255
  std = jnp.asarray(std, jnp.float32) * 255
  return (images.astype(jnp.float32) - mean) / std


def train_batch(preset: presets.Preset, images: jax.Array, keys: jax.Array) -> jax.Array:
  """uint8 (B, h, w, C) and one key per example -> float32 (B, *preset.image_shape)."""
  size = preset.image_shape[:2]
  if preset.flip:
    keys, flip_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  if preset.train_crop == presets.RANDOM_RESIZED:
    out = jax.vmap(functools.partial(_random_resized_crop, size=size))(images, keys)
  else:
    out = _resize(images, size)
    if preset.train_crop == presets.PAD:
      out = jax.vmap(_translate, in_axes=(0, None, 0))(out, preset.pad, keys)
  if preset.flip:
    out = jax.vmap(_maybe_flip)(out, flip_keys)
  return normalize(out, preset.mean, preset.std)


def eval_batch(preset: presets.Preset, images: jax.Array) -> jax.Array:
  """uint8 (B, h, w, C) -> float32 (B, *preset.image_shape), deterministically."""
  size = preset.image_shape[:2]
  if preset.eval_crop == presets.CENTER:
    box = center_box(images.shape[1:3], size)
    out = jax.vmap(functools.partial(crop_resize, box=box, size=size,
                                     antialias=bool(_shrinks(box[2:], size))))(images)
  else:
    out = _resize(images, size)
  return normalize(out, preset.mean, preset.std)
