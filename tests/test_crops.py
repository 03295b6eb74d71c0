"""The imagenet preset's crops: windows decoded from the JPEG, their statistics, the eval crop
against resize-then-crop, and the resized copies. Images are crops of the photographs
scikit-learn ships (real texture, so decoder differences show)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_sample_images

import jresnet.data as jd
from configs import default
from jresnet.data import presets, resized_copy
from jresnet.data import transforms as T

IMAGENET = presets.Preset("imagenet", (224, 224, 3), presets.IMAGENET_MEAN, presets.IMAGENET_STD,
                          presets.RANDOM_RESIZED, True, presets.CENTER)


def _photo(h=375, w=500, which=0):
  return load_sample_images().images[which][:h, :w]


def _encoded(image, fmt):
  data = tf.io.encode_jpeg(image, quality=95) if fmt == "jpeg" else tf.io.encode_png(image)
  return T.Encoded(data, lambda e: tf.io.decode_image(e, 3, expand_animations=False), 3)


def _seed(i):
  return tf.constant([i, 7], tf.int64)


@pytest.mark.parametrize("hw", [(375, 500), (500, 333), (64, 48)])
def test_inception_windows_stay_inside_and_span_the_box_ranges(hw):
  sample = tf.function(lambda seed: T.inception_window(seed)(tf.constant(hw, tf.int32)))
  boxes = np.array([sample(_seed(i)).numpy() for i in range(1000)])
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= hw[0]).all() and (left + w <= hw[1]).all()
  area, aspect = h * w / (hw[0] * hw[1]), w / h
  whole = (h == hw[0]) & (w == hw[1])  # the fallback after ten failed attempts
  assert whole.mean() < 0.1
  rounding = 2 / min(hw)  # integer box sides
  inside = area[~whole]
  assert inside.min() >= 0.08 - rounding and inside.max() <= 1.0
  assert aspect[~whole].min() >= 3 / 4 - rounding and aspect[~whole].max() <= 4 / 3 + rounding
  assert inside.min() < 0.12 and inside.max() > 0.8  # the area range (up to what fits)
  assert aspect[~whole].min() < 0.8 and aspect[~whole].max() > 1.25  # and the aspect range
  assert 0.4 < np.mean(np.log(aspect[~whole]) > 0) < 0.6  # log-uniform: as many wide as tall


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_a_window_decoded_from_the_file_is_the_decoded_image_s_window(fmt):
  """The same seed gives the same crop whatever the storage; a JPEG window decode differs from
  the whole decode only by the decoder's chroma upsampling at the window's edges."""
  encoded = _encoded(_photo(), fmt)
  whole = _encoded(encoded.decode(encoded.data), "png")  # decoded whole, then cropped
  for i in range(20):
    streamed = T.train_image(IMAGENET, encoded, _seed(i)).numpy().astype(int)
    in_memory = T.train_image(IMAGENET, whole, _seed(i)).numpy().astype(int)
    if fmt == "png":
      np.testing.assert_array_equal(streamed, in_memory)
    else:
      difference = np.abs(streamed - in_memory)
      assert difference.mean() < 0.05 and np.mean(difference > 2) < 0.005


@pytest.mark.parametrize("hw", [(375, 500), (427, 300)])
@pytest.mark.parametrize("which", [0, 1])
def test_eval_crop_is_resize_then_centre_crop_up_to_interpolation(hw, which):
  """On a smooth photograph (where interpolation methods agree), against the preset as it was:
  the shorter side resized to 256 (antialiased), then the central 224."""
  photo = _photo(*hw, which=which)
  smooth = tf.image.resize(tf.image.resize(photo, (hw[0] // 8, hw[1] // 8), antialias=True), hw)
  encoded = _encoded(T.to_uint8(smooth), "jpeg")
  out = T.eval_image(IMAGENET, encoded).numpy().astype(np.float32)
  image = encoded.decode(encoded.data)
  scale = 256 / min(hw)
  resized = tf.image.resize(image, [round(hw[0] * scale), round(hw[1] * scale)], antialias=True)
  top, left = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
  reference = resized[top:top + 224, left:left + 224].numpy()
  shifted = resized[top + 4:top + 228, left:left + 224].numpy()  # a crop 4 pixels off
  assert np.abs(out - reference).mean() < 2  # levels of 255
  assert np.abs(out - reference).mean() < 0.3 * np.abs(out - shifted).mean()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
  """2 classes x 6 train images of 64x48 and 48x64, JPEG and PNG mixed."""
  root = tmp_path_factory.mktemp("photos")
  photo = load_sample_images().images[0]
  for c in range(2):
    os.makedirs(root / "train" / f"c{c}")
    for i in range(6):
      image = photo[40 * i:40 * i + 64, 60 * c:60 * c + 48]
      image = image if i % 3 else np.ascontiguousarray(image.transpose(1, 0, 2))
      data, ext = (tf.io.encode_png(image), "png") if i % 2 else (tf.io.encode_jpeg(image), "jpg")
      tf.io.write_file(str(root / "train" / f"c{c}" / f"{i:02d}.{ext}"), data)
  return root


def _imagenet_config(path, **overrides):
  cfg = default.data_config()
  cfg.update(source="folder", path=str(path), train_split="train", eval_split="train",
             preprocess="imagenet", image_size=32, cache=False, cache_dir="", threads=2)
  cfg.update(overrides)
  return cfg


def test_streamed_jpeg_and_png_folder_resumes_exactly(photo_folder):
  dataset = jd.open(_imagenet_config(photo_folder))
  stream = dataset.host_train_batches(global_batch_size=4, seed=1)
  batches = [next(stream) for _ in range(7)]  # 2.3 epochs
  assert all(b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.uint8 for b in batches)
  resumed = dataset.host_train_batches(global_batch_size=4, seed=1, start_step=4)
  for expected in batches[4:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])
  evaluated = list(dataset.host_eval_batches(global_batch_size=5))
  assert sum(b["mask"].sum() for b in evaluated) == 12


def test_resized_copy_of_a_folder_keeps_names_and_caps_the_shorter_side(photo_folder, tmp_path):
  out = tmp_path / "copy"
  original = jd.open(_imagenet_config(photo_folder))
  counts = original.write_resized(str(out), 24, resized_copy.QUALITY)
  assert counts == {"train": 12}
  for c in ("c0", "c1"):
    names = sorted(os.listdir(out / "train" / c))
    assert names == [f"{i:02d}.jpg" for i in range(6)]  # PNG files became JPEG, names kept
    for name in names:
      shape = tf.io.extract_jpeg_shape(tf.io.read_file(str(out / "train" / c / name))).numpy()
      assert min(shape[:2]) == 24 and max(shape[:2]) == 32  # 64x48 -> 32x24, aspect kept
  copy = jd.open(_imagenet_config(out))
  assert copy.info.split_sizes == {"train": 12}
  labels = lambda dataset: [int(y) for b in dataset.host_eval_batches(global_batch_size=12)
                            for y in b["label"][b["mask"]]]
  assert labels(copy) == labels(original)  # the same order
  with pytest.raises(FileExistsError, match="exists"):
    original.write_resized(str(out), 24, resized_copy.QUALITY)


def test_resized_copy_writes_its_jpeg_quality_and_refuses_one_under_90(photo_folder, tmp_path):
  import train  # noqa: PLC0415 (what --mode=write_resized runs)

  config = default.get_config()
  config.data = _imagenet_config(photo_folder)
  train.write_resized(config, str(tmp_path / "q90"), 24)  # the default quality
  train.write_resized(config, str(tmp_path / "q100"), 24, quality=100)
  sizes = {q: [os.path.getsize(f) for f in sorted(tmp_path.glob(f"q{q}/resized24/*/*/*.jpg"))]
           for q in (90, 100)}
  assert resized_copy.QUALITY == 90 and len(sizes[90]) == len(sizes[100]) == 12
  assert all(a < b for a, b in zip(sizes[90], sizes[100]))
  with pytest.raises(ValueError, match="JPEG quality 85"):
    train.write_resized(config, str(tmp_path / "q85"), 24, quality=85)
  assert not any(tmp_path.glob("q85*"))  # refused before anything was written


def test_resized_copy_of_an_array_source_is_refused_before_writing(tmp_path):
  cfg = default.data_config()
  cfg.update(source="digits")
  with pytest.raises(ValueError, match="data.source='digits' holds its images as arrays"):
    jd.open(cfg).write_resized(str(tmp_path / "copy"), 16, resized_copy.QUALITY)
  assert not os.listdir(tmp_path)


def test_resized_copy_of_a_tfds_dataset(mock_tfds, tmp_path):
  cfg = default.data_config()
  cfg.update(source="tfds", name="cifar10", data_dir=mock_tfds, threads=2)
  dataset = jd.open(cfg)
  counts = dataset.write_resized(str(tmp_path / "copy"), 16, resized_copy.QUALITY)
  assert counts == {"train": 24, "test": 24}
  copy = _imagenet_config(tmp_path / "copy", eval_split="test", preprocess="none",
                          image_size=None, cache=None)
  info = jd.open(copy).info
  assert info.image_shape == (16, 16, 3) and info.split_sizes == {"train": 24, "test": 24}
  named = [f"{i}_{name}" for i, name in enumerate(dataset.info.class_names)]
  assert set(info.class_names) <= set(named)  # the classes the mocked examples hold
  assert list(info.class_names) == sorted(info.class_names, key=named.index)  # in label order


def test_tf_data_threads_default_by_where_the_step_runs(monkeypatch):
  import jax  # noqa: PLC0415

  from jresnet.data import dataset  # noqa: PLC0415

  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
  assert jax.default_backend() == "cpu" and dataset.default_threads() == 8  # half for XLA
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert dataset.default_threads() == 16 - dataset.ACCELERATOR_HOST_RESERVE
