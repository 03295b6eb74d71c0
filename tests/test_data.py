"""jresnet.data: sources, presets, and the determinism/sharding contracts of the streams.

Everything is offline: TFDS through `tfds.testing.mock_data` (on metadata written here), image
folders written into tmp_path, scikit-learn's bundled digits, and synthetic data.
"""

import functools
import os
import time
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import MOCK_N
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tiny_config import tiny_config

import jresnet.data as jd
from configs import default
from jresnet.data import device_stream, process_shard, sources

COLOURS = {"zebra": 2, "ant": 0, "mole": 1}  # class -> the RGB channel it is coloured in


def _config(**overrides):
  cfg = default.data_config()
  cfg.cache_dir = ""
  cfg.threads = 2
  cfg.update(overrides)
  return cfg


# Where a batch lives: its rows split over the 8 (virtual) devices, as train.py places them.
SHARDING = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))


def _take(iterator, n):
  """The next `n` batches, as numpy arrays."""
  return [jax.tree.map(np.asarray, next(iterator)) for _ in range(n)]


def _train(cfg, n, *, batch_size=8, seed=0, start_step=0):
  """Global batches start_step .. start_step + n - 1 of a run on `cfg`, as the devices get them."""
  batches = jd.open(cfg).train_batches(SHARDING, batch_size=batch_size, seed=seed,
                                       start_step=start_step)
  return _take(batches, n)


def _eval(cfg, split=None, batch_size=8):
  batches = jd.open(cfg).eval_batches(SHARDING, batch_size=batch_size, split=split)
  return [jax.tree.map(np.asarray, batch) for batch in batches]


def _pixels(images):
  """Preset-'none' images (x / 255) back to their uint8 pixels."""
  return np.round(np.asarray(images) * 255).astype(np.uint8)


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _fingerprints(batches):
  """Unmasked rows of preset-'none' batches as hashable identities (bytes of the pixels)."""
  return [img.tobytes() for batch in batches for img in _pixels(batch["image"][batch["mask"]])]


# ---------------------------------------------------------------------------------------------
# Image folders written by the tests: every image is a solid colour whose channel is its class
# and whose intensity (60, 70, ...) identifies it within the class.


def _write_folder(root, counts, sizes):
  """counts: {split: images per class}; sizes cycle over the images (some non-square)."""
  k = 0
  for split, per_class in counts.items():
    for cls, channel in COLOURS.items():
      os.makedirs(root / split / cls)
      for i in range(per_class):
        h, w = sizes[k % len(sizes)]
        k += 1
        pixel = np.zeros(3, np.uint8)
        pixel[channel] = 60 + 10 * i
        image = np.broadcast_to(pixel, (h, w, 3))
        if i % 2:
          data, ext = tf.io.encode_png(image), "png"
        else:
          data, ext = tf.io.encode_jpeg(image, quality=100), "jpg"
        tf.io.write_file(str(root / split / cls / f"{i:03d}.{ext}"), data)
  return root


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  """3 classes; train 4, test 2 images per class; JPEG and PNG; sizes differ (some non-square)."""
  return _write_folder(tmp_path_factory.mktemp("mixed"), {"train": 4, "test": 2},
                       [(16, 16), (12, 20), (24, 10)])


@pytest.fixture(scope="module")
def uniform_folder(tmp_path_factory):
  """3 classes x 20 train images, all 8x8: decoded into memory."""
  return _write_folder(tmp_path_factory.mktemp("uniform"), {"train": 20}, [(8, 8)])


def _identities(batches):
  """(label, intensity) of every unmasked row of preset-'none' batches, checking the colour."""
  ids = []
  for batch in batches:
    for image, label in zip(batch["image"][batch["mask"]], batch["label"][batch["mask"]]):
      mean = image.reshape(-1, 3).mean(0) * 255
      channel = int(np.argmax(mean))
      assert channel == COLOURS[sorted(COLOURS)[label]], "label does not match the colour"
      ids.append((int(label), int(round(mean[channel] / 10))))
  return ids


def test_folder_classes_sizes_and_colours(mixed_folder):
  cfg = _config(source="folder", path=str(mixed_folder), preprocess="none", image_size=16,
                train_split="train[:75%]", eval_split="test")
  info = jd.open(cfg).info
  assert info.class_names == ("ant", "mole", "zebra")  # sorted directory names
  assert info.num_classes == 3
  assert info.image_shape == (16, 16, 3)
  assert info.split_sizes == {"train[:75%]": 9, "test": 6}
  for split, n in [("train", 12), ("test", 6)]:
    ids = _identities(_eval(cfg, split))
    assert len(ids) == len(set(ids)) == n
    assert sorted({label for label, _ in ids}) == [0, 1, 2]


def test_folder_slices_are_disjoint_and_complete(mixed_folder):
  cfg = _config(source="folder", path=str(mixed_folder), preprocess="none", image_size=16)
  whole = set(_identities(_eval(cfg, "train")))
  head = _identities(_eval(cfg, "train[:75%]"))
  tail = _identities(_eval(cfg, "train[75%:]"))
  middle = _identities(_eval(cfg, "train[25%:50%]"))
  assert (len(head), len(tail), len(middle)) == (9, 3, 3)
  assert not set(head) & set(tail)
  assert set(head) | set(tail) == whole
  assert set(middle) <= set(head)


def test_folder_slices_are_balanced_and_cached(uniform_folder, tmp_path):
  cfg = _config(source="folder", path=str(uniform_folder), preprocess="none", eval_split="train",
                cache_dir=str(tmp_path))
  split = sources.get(cfg, 2).load("train", None, 100)
  assert isinstance(split, sources.ArraySplit)  # one size, small: decoded into memory
  assert len(os.listdir(tmp_path)) == 1  # ... and saved
  again = sources.get(cfg, 2).load("train", None, 100)
  np.testing.assert_array_equal(split.images, again.images)
  first_half = sources.get(cfg, 2).load("train[:50%]", None, 100)
  counts = np.bincount(first_half.labels, minlength=3)
  assert counts.sum() == 30 and counts.min() >= 5  # a class-sorted folder, shuffled
  ids = _identities(_eval(cfg, "train", batch_size=16))
  assert len(set(ids)) == 60


def test_a_small_uniform_split_is_held_in_memory_as_decoded(uniform_folder):
  cfg = _config(source="folder", path=str(uniform_folder), preprocess="none", eval_split="train")
  dataset = jd.open(cfg)
  held = dataset.split("train[:50%]")
  assert dataset.in_memory("train[:50%]") and dataset.split("train[:50%]") is held  # loaded once
  split = sources.get(cfg, 2).load("train[:50%]", True, cfg.max_cache_mb)
  assert held.images.dtype == np.uint8 and held.labels.dtype == np.int32 and len(held) == 30
  np.testing.assert_array_equal(held.images, split.images)
  np.testing.assert_array_equal(held.labels, split.labels)


def test_folder_errors(tmp_path, mixed_folder):
  with pytest.raises(jd.DatasetNotFoundError, match="does not exist"):
    jd.open(_config(source="folder", path=str(tmp_path / "absent")))
  (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
  with pytest.raises(jd.DatasetNotFoundError, match="No images"):
    jd.open(_config(source="folder", path=str(tmp_path / "empty")))
  dataset = jd.open(_config(source="folder", path=str(mixed_folder), cache=True))
  with pytest.raises(ValueError, match="differ in size"):
    dataset.train_batches(SHARDING, batch_size=8, seed=0)


# ---------------------------------------------------------------------------------------------
# TFDS, mocked: the metadata (split sizes) is written the way `tfds build` would, the examples
# come from mock_data.

def _check_batch(batch, b, shape, num_classes, mask=True):
  assert batch["image"].shape == (b, *shape) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (b,) and batch["label"].dtype == np.int32
  assert batch["mask"].dtype == np.bool_
  if mask:
    assert batch["mask"].all()
  assert batch["image"].std() > 0.1  # pixels, not all zeros (normalised on the device)
  assert 0 <= batch["label"].min() and batch["label"].max() < num_classes


def test_tfds_cifar10(mock_tfds):
  cfg = _config(name="cifar10", data_dir=mock_tfds)
  dataset = jd.open(cfg)
  info = dataset.info
  assert (info.num_classes, info.image_shape) == (10, (32, 32, 3))
  assert info.split_sizes == {"train": MOCK_N, "test": MOCK_N}
  assert len(info.class_names) == 10
  for batch in _take(dataset.train_batches(SHARDING, batch_size=8, seed=0), 4):
    _check_batch(batch, 8, (32, 32, 3), 10)
  batches = _eval(cfg, batch_size=16)
  assert len(batches) == 2  # ceil(24 / 16)
  assert sum(b["mask"].sum() for b in batches) == MOCK_N
  _check_batch(batches[0], 16, (32, 32, 3), 10)


def test_mock_tfds_leaves_the_file_system_real(mock_tfds, tmp_path):
  """While a mocked dataset opens, paths elsewhere are real: Orbax's background threads save and
  clean up checkpoints then (tfds's own mock redirects every path of the process)."""
  from unittest import mock  # noqa: PLC0415

  from etils import epath  # noqa: PLC0415

  reader = tfds.core.dataset_builder.FileReaderBuilder
  mocked = reader._as_dataset
  seen = []

  def spying(self, *args, **kwargs):
    seen.append((epath.Path(tmp_path).exists(), tf.io.gfile.exists(str(tmp_path))))
    return mocked(self, *args, **kwargs)

  with mock.patch.object(reader, "_as_dataset", spying):
    tfds.builder("cifar10", data_dir=mock_tfds).as_dataset(split="train")
  assert seen == [(True, True)]


def test_tfds_imagenet_variable_size_streamed(mock_tfds):
  cfg = _config(name="imagenet2012", data_dir=mock_tfds, eval_split="validation")
  info = jd.open(cfg).info
  assert (info.num_classes, info.image_shape) == (1000, (224, 224, 3))
  batches = _train(cfg, 5)  # 40 > 24 examples: across an epoch boundary
  for batch in batches:
    _check_batch(batch, 8, (224, 224, 3), 1000)
  _assert_same_batches(batches[3:], _train(cfg, 2, start_step=3))
  evals = _eval(cfg, batch_size=16)
  assert [b["mask"].sum() for b in evals] == [16, MOCK_N - 16]
  _check_batch(evals[0], 16, (224, 224, 3), 1000)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """A real prepared TFDS dataset (tfrecords), built offline: pixel [0, 0, 0] is the example id."""
  data_dir = str(tmp_path_factory.mktemp("tiny_tfds"))

  def split(n, first_id):
    images = np.zeros((n, 6, 6, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(first_id, first_id + n)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(n) % 4})

  tfds.disable_progress_bar()
  tfds.dataset_builders.TfDataBuilder(
      name="tiny_images", config="default", version="1.0.0", data_dir=data_dir,
      split_datasets={"train": split(50, 0), "test": split(20, 100)},
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(6, 6, 3)),
          "label": tfds.features.ClassLabel(num_classes=4)})).download_and_prepare()
  return data_dir


@pytest.mark.parametrize("cache", [True, False])
def test_tfds_prepared_files(tiny_tfds, cache):
  cfg = _config(name="tiny_images", data_dir=tiny_tfds, preprocess="none", cache=cache,
                train_split="train[:40]", eval_split="train[40:]", shuffle_buffer=8)
  ids = lambda batches: [int(img[0, 0, 0]) for img in
                         _pixels(np.concatenate([b["image"][b["mask"]] for b in batches]))]
  dataset = jd.open(cfg)
  assert dataset.info.split_sizes == {"train[:40]": 40, "train[40:]": 10}
  assert dataset.in_memory("train[:40]") == cache
  train = _train(cfg, 11)  # 2.2 epochs
  seen = ids(train)
  assert sorted(seen[:40]) == sorted(seen[40:80]) and seen[:40] != seen[40:80]
  _assert_same_batches(train[7:], _train(cfg, 4, start_step=7))
  held_out = ids(_eval(cfg))
  assert len(held_out) == 10 and not set(held_out) & set(seen)
  assert sorted(set(held_out) | set(seen)) == list(range(50))
  assert sorted(ids(_eval(cfg, "test"))) == list(range(100, 120))


def test_tfds_missing_fails_fast_with_advice(tmp_path):
  cfg = _config(name="cifar10", data_dir=str(tmp_path))
  start = time.time()
  with pytest.raises(jd.DatasetNotFoundError) as e:
    jd.open(cfg)
  assert time.time() - start < 10
  assert isinstance(e.value, FileNotFoundError)
  message = str(e.value)
  for needed in [str(tmp_path), f"tfds build cifar10 --data_dir={tmp_path}",
                 "--config.data.download=True", "--config.data.source=folder"]:
    assert needed in message
  assert not any(tmp_path.iterdir())  # nothing downloaded, no debris
  cfg.name = "imagenet2012"
  with pytest.raises(jd.DatasetNotFoundError, match="manual_dir"):
    jd.open(cfg)


# ---------------------------------------------------------------------------------------------
# scikit-learn digits


def test_digits():
  cfg = _config(source="digits", eval_split="test")
  info = jd.open(cfg).info
  assert info.split_sizes == {"train": 1437, "test": 360}
  assert (info.num_classes, info.image_shape) == (10, (32, 32, 1))
  raw = _config(source="digits", preprocess="none")  # the 8x8 images, scaled to [0, 1]
  train = _fingerprints(_eval(raw, "train", batch_size=504))
  test = _fingerprints(_eval(raw, "test", batch_size=504))
  assert len(set(train)) == 1437 and len(set(test)) == 360  # the 1797 digits are distinct
  assert not set(train) & set(test)
  batches = _eval(cfg, batch_size=104)
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  assert set(np.bincount(labels, minlength=10)) <= {35, 36, 37}  # stratified
  (batch,) = _train(cfg, 1, batch_size=64)
  _check_batch(batch, 64, (32, 32, 1), 10)


# ---------------------------------------------------------------------------------------------
# The train stream: determinism, resumption, sharding. Synthetic data (in memory: batched on the
# devices) and a folder read with cache=False (streamed: decoded by tf.data, augmented on the
# devices) take the two code paths.

N = 37  # examples; with B = 8 the epoch boundary falls inside batch 4


def _synthetic(**overrides):
  return _config(source="synthetic", num_examples=N, image_shape=(8, 8, 3), **overrides)


def _streamed_folder(folder, **overrides):
  """An image folder with a train split only, streamed."""
  return _config(**{"source": "folder", "path": str(folder), "cache": False, "image_size": 8,
                    "shuffle_buffer": 16, "eval_split": "train", **overrides})


@pytest.fixture(scope="module", params=["in_memory", "streamed"])
def train_cfg(request, uniform_folder):
  if request.param == "in_memory":
    return _synthetic(preprocess="cifar", image_size=8)
  return _streamed_folder(uniform_folder, preprocess="cifar", train_split="train[:37]")


def test_train_deterministic_and_resumable(train_cfg):
  reference = _train(train_cfg, 11, seed=1)
  _assert_same_batches(reference, _train(train_cfg, 11, seed=1))
  for k in (3, 4, 5, 9):  # batch 4 straddles the first epoch boundary, 9 the second
    _assert_same_batches(reference[k:], _train(train_cfg, 11 - k, seed=1, start_step=k))
  other = _train(train_cfg, 2, seed=2)
  assert not np.array_equal(other[0]["image"], reference[0]["image"])


def _process_rows(dataset, seed, start_step, n, process_index, process_count):
  """Batches of this process's rows of global batches of 16: the devices' for a split in memory,
  the host stream's for a streamed one."""
  if dataset.in_memory(dataset.cfg.train_split):
    placed = device_stream.DeviceSplit(dataset.split(dataset.cfg.train_split), dataset.preset,
                                       SHARDING)
    rows = process_shard.Shard(16, process_index, process_count)
    return _take(placed.train_batches(seed, start_step, rows), n)
  return _take(dataset.host_train_batches(global_batch_size=16, seed=seed, start_step=start_step,
                                          process_index=process_index,
                                          process_count=process_count), n)


def test_train_process_shards_concatenate_to_global_batch(train_cfg):
  dataset = jd.open(train_cfg)
  whole = _process_rows(dataset, 3, 0, 6, 0, 1)
  shards = [_process_rows(dataset, 3, 1, 5, p, 2) for p in (0, 1)]
  for k in range(5):
    assert whole[k + 1].keys() == shards[0][k].keys()
    for key in whole[k + 1]:
      np.testing.assert_array_equal(
          np.concatenate([shards[0][k][key], shards[1][k][key]]), whole[k + 1][key])


def test_streamed_cifar_batches_are_augmented_on_the_devices_and_resume_exactly(uniform_folder):
  """tf.data decodes the rows; the devices pad-crop and flip them, keyed by (seed, epoch, row):
  batch k of a resumed run is batch k of a run from 0, bit for bit, and another seed augments
  the very same rows differently."""
  cfg = _streamed_folder(uniform_folder, preprocess="cifar", train_split="train[:37]")
  dataset = jd.open(cfg)
  assert not dataset.in_memory("train[:37]")
  run = _take(dataset.train_batches(SHARDING, batch_size=8, seed=1), 6)
  for k in (1, 4, 5):  # 4 straddles the epoch boundary
    _assert_same_batches(run[k:k + 1], _take(dataset.train_batches(SHARDING, batch_size=8, seed=1,
                                                                   start_step=k), 1))
  rows = _take(dataset.host_train_batches(global_batch_size=8, seed=1), 6)
  augment = lambda batch, seed: jax.tree.map(np.asarray, jax.jit(functools.partial(
      device_stream.finish_streamed_train, preset=dataset.preset,
      key_data=device_stream.seed_key_data(seed)), out_shardings=SHARDING)(
          jax.device_put(batch, SHARDING)))
  for k in (0, 4):
    assert rows[k]["image"].dtype == np.uint8
    _assert_same_batches([augment(rows[k], 1)], run[k:k + 1])  # these rows, augmented
    plain = device_stream.finish_eval(rows[k], preset=dataset.preset)["image"]
    assert not np.allclose(run[k]["image"], plain)  # ... and augmentation did something
    other = augment(rows[k], 2)
    np.testing.assert_array_equal(other["label"], run[k]["label"])
    assert not np.array_equal(other["image"], run[k]["image"])


@pytest.mark.parametrize("streamed", [False, True])
def test_several_steps_a_call_take_the_batches_stacked(uniform_folder, streamed):
  """steps_per_call=3: the batches of 3 steps, made in one call (in memory) or sent together
  (streamed), stacked along a leading axis: exactly the one-step batches, across an epoch."""
  cfg = (_streamed_folder(uniform_folder, preprocess="cifar", train_split="train[:37]") if streamed
         else _synthetic(preprocess="cifar", image_size=8))
  dataset = jd.open(cfg)
  assert dataset.in_memory(cfg.train_split) != streamed
  singles = _take(dataset.train_batches(SHARDING, batch_size=8, seed=1, start_step=3), 6)
  blocks = _take(dataset.train_batches(SHARDING, batch_size=8, seed=1, start_step=3,
                                       steps_per_call=3), 2)
  for b, block in enumerate(blocks):
    assert block["image"].shape[:2] == (3, 8)
    for k in range(3):
      _assert_same_batches([{key: np.asarray(x[k]) for key, x in block.items()}],
                           singles[3 * b + k:3 * b + k + 1])


@pytest.mark.parametrize("source", ["synthetic", "folder"])
def test_train_epochs_are_permutations(source, uniform_folder):
  if source == "synthetic":
    cfg, n = _synthetic(preprocess="none"), N
  else:
    cfg, n = _streamed_folder(uniform_folder, preprocess="none"), 60
  batches = _train(cfg, -(-2 * n // 8))
  seen = _fingerprints(batches)
  epoch0, epoch1 = seen[:n], seen[n:2 * n]
  assert len(set(epoch0)) == len(set(epoch1)) == n  # every example once per epoch
  assert set(epoch0) == set(epoch1) and epoch0 != epoch1  # reshuffled


# ---------------------------------------------------------------------------------------------
# The eval stream


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_each_example_exactly_once(process_count):
  """In memory, on the devices: each process's rows of 16-row global batches."""
  cfg = _synthetic(preprocess="none")
  dataset = jd.open(cfg)
  expected = sorted(img.tobytes() for img in sources.get(cfg, 2).load("test", None, 1).images)
  placed = device_stream.DeviceSplit(dataset.split("test"), dataset.preset, SHARDING)
  per_process = [[jax.tree.map(np.asarray, batch) for batch in
                  placed.eval_batches(process_shard.Shard(16, p, process_count))]
                 for p in range(process_count)]
  assert all(len(batches) == -(-N // 16) for batches in per_process)  # same number of steps
  seen = [_fingerprints(batches) for batches in per_process]
  assert sorted(sum(seen, [])) == expected  # disjoint, complete, once each
  for batches in per_process:
    for batch in batches:
      assert batch["image"].shape == (16 // process_count, 8, 8, 3)
      assert (batch["label"][~batch["mask"]] == 0).all()
      assert (batch["image"][~batch["mask"]] == 0).all()
  whole = _eval(cfg, batch_size=16)  # what Dataset.eval_batches gives: the same batches
  if process_count == 1:
    _assert_same_batches(whole, per_process[0])


@pytest.mark.parametrize("process_count", [1, 2])
def test_streamed_eval_each_example_exactly_once(uniform_folder, process_count):
  """Streamed, the host stream: each process's rows, padding rows zero."""
  cfg = _streamed_folder(uniform_folder, preprocess="none", eval_split="train[:37]")
  dataset = jd.open(cfg)
  expected = sorted(img.tobytes() for img in
                    sources.get(cfg, 2).load("train[:37]", True, 100).images)
  per_process = [list(dataset.host_eval_batches(global_batch_size=8, process_index=p,
                                                process_count=process_count))
                 for p in range(process_count)]
  assert all(len(batches) == -(-N // 8) for batches in per_process)  # same number of steps
  seen = [img.tobytes() for batches in per_process for batch in batches
          for img in batch["image"][batch["mask"]]]
  assert sorted(seen) == expected  # disjoint, complete, once each
  for batches in per_process:
    for batch in batches:
      assert batch["image"].shape == (8 // process_count, 8, 8, 3)
      assert (batch["label"][~batch["mask"]] == 0).all()
      assert (batch["image"][~batch["mask"]] == 0).all()


# ---------------------------------------------------------------------------------------------
# Errors and devices


def test_bad_configs_raise_before_any_work(uniform_folder):
  streamed = jd.open(_streamed_folder(uniform_folder, preprocess="none"))
  with pytest.raises(ValueError, match="multiple of process_count=3"):
    streamed.host_train_batches(global_batch_size=8, seed=0, process_count=3, process_index=0)
  with pytest.raises(ValueError, match="multiple"):
    streamed.host_eval_batches(global_batch_size=5, process_count=2, process_index=1)
  with pytest.raises(ValueError, match="split 'train' is held in memory: it is batched on the "
                                       "devices"):
    jd.open(_synthetic()).host_train_batches(global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="start_step=-1 must be >= 0"):
    jd.open(_synthetic()).train_batches(SHARDING, batch_size=8, seed=0, start_step=-1)
  with pytest.raises(ValueError, match="Unknown data source 'tfrecords'.*'digits'"):
    jd.open(_config(source="tfrecords"))
  with pytest.raises(ValueError, match="Unknown preprocess preset 'resnet'.*'imagenet'"):
    jd.open(_synthetic(preprocess="resnet"))
  with pytest.raises(ValueError, match="data.eval_split='validation' is not a split of this "
                                       "dataset, whose splits are 'train', 'test'"):
    jd.open(_synthetic(eval_split="validation"))


# ---------------------------------------------------------------------------------------------
# One run opens its source once.


def test_a_run_opens_its_source_and_image_folder_once(uniform_folder, tmp_path):
  get, image_folder = sources.get, tfds.folder_dataset.ImageFolder
  with mock.patch.object(sources, "get", wraps=get) as opened, \
      mock.patch.object(tfds.folder_dataset, "ImageFolder", wraps=image_folder) as listed:
    dataset = jd.open(_config(source="folder", path=str(uniform_folder), preprocess="none",
                              eval_split="train[:25%]"))
    _take(dataset.train_batches(SHARDING, batch_size=8, seed=0), 2)
    list(dataset.eval_batches(SHARDING, batch_size=8))
    dataset.describe_input()
    assert dataset.write_arrays(str(tmp_path / "arrays.npz")) == {"train": 60, "train[:25%]": 15}
    assert (opened.call_count, listed.call_count) == (1, 1)
    from jresnet.training import loop  # noqa: PLC0415

    config = tiny_config(**{"data.source": "folder", "data.path": str(uniform_folder),
                            "data.eval_split": "train[:25%]", "data.cache_dir": "",
                            "num_train_steps": 2, "eval_every_steps": 2})
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert (opened.call_count, listed.call_count) == (2, 2)


@pytest.mark.parametrize("spec", [
    "train", "train[:90%]", "train[90%:]", "train[45000:]", "train[:45000]+test", "val[:33%]",
    "val[33%:67%]", "val[-10%:]", "train[-100:]", "val[12.5%:87.5%]", "test[:50%]+val[50%:]",
    "val[:-1]"])
def test_split_strings_read_what_tfds_reads(spec):
  from jresnet.data import splits  # noqa: PLC0415

  sizes = {"train": 50_000, "test": 10_000, "val": 37}
  infos = {name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
           for name, n in sizes.items()}
  expected = [(a.splitname, a.from_ or 0, sizes[a.splitname] if a.to is None else a.to)
              for a in tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)]
  assert splits.resolve(spec, sizes) == expected


# ---------------------------------------------------------------------------------------------
# Bad folders: the error names the file or directory, before any training.


def _with_bad_images(root, split="train"):
  """A copy of a 3-class folder of 8x8 images plus a random-bytes and a zero-byte '.jpg'."""
  _write_folder(root, {split: 2}, [(8, 8)])
  (root / split / "ant" / "random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
  (root / split / "mole" / "empty.jpg").write_bytes(b"")
  return [str(root / split / "ant" / "random.jpg"), str(root / split / "mole" / "empty.jpg")]


@pytest.mark.parametrize("cache", [None, False])  # decoded into memory; streamed
def test_undecodable_images_are_named(tmp_path, cache):
  """In memory: when the split is decoded. Streamed: the stream stops at the first batch that
  holds one (nothing is skipped), and the error lists every undecodable file of the split."""
  bad = _with_bad_images(tmp_path)
  cfg = _config(source="folder", path=str(tmp_path), preprocess="none", cache=cache,
                eval_split="train")
  with pytest.raises(ValueError, match="cannot be decoded") as error:
    _train(cfg, 3)
  assert isinstance(error.value, jd.UndecodableImageError)
  assert sorted(error.value.paths) == sorted(bad)
  assert all(path in str(error.value) for path in bad)
  with pytest.raises(ValueError, match="random.jpg"):
    _eval(cfg, "train")


def test_empty_class_directory_and_a_single_class_are_refused(tmp_path):
  _write_folder(tmp_path / "empty_class", {"train": 2}, [(8, 8)])
  (tmp_path / "empty_class" / "train" / "yak").mkdir()
  (tmp_path / "empty_class" / "train" / "yak" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=rf"Empty class directory {tmp_path}/empty_class/train/yak"):
    jd.open(_config(source="folder", path=str(tmp_path / "empty_class"), eval_split="train"))
  one = tmp_path / "one_class" / "train" / "cat"
  one.mkdir(parents=True)
  tf.io.write_file(str(one / "0.png"), tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)))
  with pytest.raises(ValueError, match=r"has 1 class \(cat\).*two or more"):
    jd.open(_config(source="folder", path=str(tmp_path / "one_class"), eval_split="train"))
