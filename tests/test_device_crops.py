"""The 'imagenet' preset on the device: its central eval crop is tf.data's to within rounding, a
random-resized crop of a given box resamples as tf.data's does, and the random boxes keep to the
Inception ranges (ten attempts, then the whole image)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import default
from jresnet.data import device_transforms, presets, transforms
from jresnet.data.sources.base import Metadata

SIZE = (224, 224)


def _imagenet_preset(image_size=None):
  cfg = default.data_config()
  cfg.update({"preprocess": "imagenet", "image_size": image_size})
  return presets.resolve(cfg, Metadata("test", 10, None, (None, None, 3)))


@pytest.fixture(scope="module")
def preset():
  resolved = _imagenet_preset()
  assert resolved.image_shape[:2] == SIZE and resolved.flip
  return resolved


def _pixels(preset, normalized) -> np.ndarray:
  """The model's input back to grey levels, rounded as tf.data's uint8."""
  pixels = np.asarray(normalized) * np.asarray(preset.std) * 255 + np.asarray(preset.mean) * 255
  return np.floor(pixels + 0.5).astype(int)


def _images(n, hw, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def _assert_within_a_grey_level(got, expected):
  """Resampled in float32 by different code, a pixel near .5 may round the other way."""
  differ = np.abs(got - expected.astype(int))
  assert differ.max() <= 1 and differ.mean() < 0.005, (differ.max(), differ.mean())


@pytest.mark.parametrize("hw", [(256, 320), (300, 224), (224, 224), (640, 520)])
def test_the_central_crop_is_tf_datas(preset, hw):
  if hw == (640, 520):  # a box of at least twice the output: the antialiased branch
    assert device_transforms.center_box(hw, SIZE)[2] >= 2 * SIZE[0]
  images = _images(2, hw)
  png = lambda image: transforms.Encoded(tf.io.encode_png(image), tf.io.decode_png, 3)  # lossless
  expected = np.stack([transforms.eval_image(preset, png(image)).numpy()
                       for image in images])
  got = _pixels(preset, device_transforms.eval_batch(preset, jnp.asarray(images)))
  _assert_within_a_grey_level(got, expected)


@pytest.mark.parametrize("box", [(0, 0, 480, 460),   # shrinks 2x: antialiased, at the corner
                                 (37, 51, 300, 350),  # shrinks less than 2x: plain bilinear
                                 (90, 10, 60, 170)])  # grows in height: interpolated
def test_a_given_box_resizes_as_tf_data_resizes_its_crop(preset, box, monkeypatch):
  monkeypatch.setattr(device_transforms, "inception_box", lambda key, hw: jnp.asarray(box))
  images = _images(4, (500, 480), seed=1)
  top, left, height, width = box
  expected = np.stack([
      transforms.to_uint8(transforms.resize_crop(
          tf.constant(image[top:top + height, left:left + width]), SIZE)).numpy()
      for image in images])
  got = _pixels(preset, device_transforms.train_batch(
      preset, jnp.asarray(images), jax.random.split(jax.random.key(0), 4)))
  flipped = [np.abs(g - e).sum() > np.abs(g[:, ::-1] - e).sum() for g, e in zip(got, expected)]
  _assert_within_a_grey_level(np.stack([g[:, ::-1] if f else g for g, f in zip(got, flipped)]),
                              expected)


def test_the_whole_square_image_as_the_box_is_a_plain_resize(monkeypatch):
  monkeypatch.setattr(device_transforms, "inception_box", functools.partial(
      device_transforms.inception_box, area=(1.0, 1.0), aspect=(1.0, 1.0)))
  preset = _imagenet_preset(image_size=64)
  images = _images(4, (128, 128), seed=2)
  resized = np.asarray(jax.image.resize(images.astype(np.float32), (4, 64, 64, 3), "bilinear",
                                        antialias=True))
  out = device_transforms.train_batch(preset, jnp.asarray(images),
                                      jax.random.split(jax.random.key(1), 4))
  pixels = np.asarray(out) * np.asarray(preset.std) * 255 + np.asarray(preset.mean) * 255
  for got, expected in zip(pixels, resized):
    assert np.allclose(got, expected, atol=1e-2) or np.allclose(got[:, ::-1], expected, atol=1e-2)


def _attempt_fits(hw, draws):
  """Whether one attempt's box fits, by the rule inception_box states, over `draws` draws."""
  rng, (h, w), (low, high) = np.random.default_rng(0), hw, presets.INCEPTION_AREA
  box_area = h * w * rng.uniform(low, high, draws)
  ratio = np.exp(rng.uniform(*np.log(presets.INCEPTION_ASPECT), draws))
  heights, widths = np.round(np.sqrt(box_area / ratio)), np.round(np.sqrt(box_area * ratio))
  return ((heights >= 1) & (heights <= h) & (widths >= 1) & (widths <= w)
          & (heights * widths >= low * h * w) & (heights * widths <= high * h * w)
          & (widths >= presets.INCEPTION_ASPECT[0] * heights)
          & (widths <= presets.INCEPTION_ASPECT[1] * heights))


@pytest.mark.parametrize("hw", [(20, 100), (224, 224)])
def test_random_boxes_keep_to_the_ranges_and_fall_back_after_ten_attempts(hw):
  n, (h, w) = 4000, hw
  boxes = np.asarray(jax.vmap(device_transforms.inception_box, in_axes=(0, None))(
      jax.random.split(jax.random.key(2), n), hw))
  top, left, height, width = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (top + height <= h).all() \
      and (left + width <= w).all()
  whole = (height == h) & (width == w)
  boxed = boxes[~whole] if h != w else boxes  # a square's whole image is in range too
  area, aspect = boxed[:, 2] * boxed[:, 3] / (h * w), boxed[:, 3] / boxed[:, 2]
  assert (area >= presets.INCEPTION_AREA[0]).all() and (area <= 1).all()
  assert (aspect >= 3 / 4).all() and (aspect <= 4 / 3).all()
  assert area.min() < 0.1 and area.max() > 0.9 if h == w else area.max() <= 0.27
  assert aspect.min() < 0.77 and aspect.max() > 1.3
  fallback = (1 - _attempt_fits(hw, 200_000).mean()) ** device_transforms.INCEPTION_ATTEMPTS
  if h != w:  # a 1:5 image: one attempt in ~7 fits, so ~1 image in 4 falls back
    assert 0.1 < fallback < 0.5
    assert abs(whole.mean() - fallback) < 4 * math.sqrt(fallback * (1 - fallback) / n)
    assert (top[whole] == 0).all() and (left[whole] == 0).all()
  else:
    assert fallback < 1e-6 and whole.mean() < 0.01
  assert len(set(map(tuple, boxes[~whole]))) > 0.5 * (~whole).sum()  # spread over the image


def test_train_batch_jits_is_a_pure_function_of_images_and_keys(preset):
  images = jnp.asarray(_images(8, SIZE, seed=3))
  keys = jax.random.split(jax.random.key(4), 8)
  make = jax.jit(functools.partial(device_transforms.train_batch, preset))
  out = make(images, keys)
  assert out.shape == (8, *preset.image_shape) and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(make(images, keys)), np.asarray(out))
  np.testing.assert_allclose(np.asarray(device_transforms.train_batch(preset, images[2:3],
                                                                      keys[2:3]))[0],
                             np.asarray(out)[2], atol=1e-4)  # the example's own key decides
  other = np.asarray(make(images, jax.random.split(jax.random.key(5), 8)))
  assert all(not np.allclose(a, b, atol=1e-2) for a, b in zip(other, np.asarray(out)))
