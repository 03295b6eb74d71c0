"""The presets in JAX, on a whole batch on the accelerator: what transforms.py does to one
example in TensorFlow. Random choices come from one key per example, so a batch is a pure
function of its images and keys. Images are float32 in [0, 255] until the normalisation, which
also turns the host stream's uint8 batches into the model's input (`normalize_batch`).

The device path serves in-memory splits of fixed-size images: the 'cifar', 'digits', 'mnist' and
'none' presets (pad-crop-flip, translation, resize only); 'imagenet' (random-resized crops of
full-size photographs) stays on the host.
"""

import jax
import jax.numpy as jnp

from jresnet.data import presets

SUPPORTED = ("cifar", "digits", "mnist", "none")


def check(preset: presets.Preset) -> None:
  if preset.train_crop == presets.RANDOM_RESIZED or preset.eval_crop == presets.CENTER:
    raise ValueError(f"the {preset.name!r} preset runs on the host only (the device path serves "
                     f"{', '.join(SUPPORTED)}): set config.data.on_device=False")


def _resize(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear with antialiasing, as tf.image.resize(antialias=True); same size: only a cast."""
  images = images.astype(jnp.float32)
  if images.shape[1:3] == tuple(size):
    return images
  shape = (images.shape[0], *size, images.shape[3])
  return jax.image.resize(images, shape, method="bilinear", antialias=True)


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


def normalize_batch(batch: dict, mean, std) -> dict:
  """A batch of the host stream (uint8 images) -> the model's input."""
  return {**batch, "image": normalize(batch["image"], mean, std)}


def train_batch(preset: presets.Preset, images: jax.Array, keys: jax.Array) -> jax.Array:
  """uint8 (B, h, w, C) and one key per example -> float32 (B, *preset.image_shape)."""
  check(preset)
  out = _resize(images, preset.image_shape[:2])
  if preset.flip:
    keys, flip_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  if preset.train_crop == presets.PAD:
    out = jax.vmap(_translate, in_axes=(0, None, 0))(out, preset.pad, keys)
  if preset.flip:
    out = jax.vmap(_maybe_flip)(out, flip_keys)
  return normalize(out, preset.mean, preset.std)


def eval_batch(preset: presets.Preset, images: jax.Array) -> jax.Array:
  """uint8 (B, h, w, C) -> float32 (B, *preset.image_shape), deterministically."""
  check(preset)
  return normalize(_resize(images, preset.image_shape[:2]), preset.mean, preset.std)
