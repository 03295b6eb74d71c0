"""jresnet.data: sources, presets, and the determinism/sharding contracts of the streams.

Everything is offline: TFDS through `tfds.testing.mock_data` (on metadata written here), image
folders written into tmp_path, scikit-learn's bundled digits, and synthetic data.
"""

import os
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import MOCK_N

import jresnet.data as jd
from configs import default
from jresnet.data import sources

COLOURS = {"zebra": 2, "ant": 0, "mole": 1}  # class -> the RGB channel it is coloured in


def _config(**overrides):
  cfg = default.data_config()
  cfg.cache_dir = ""
  cfg.threads = 2
  cfg.update(overrides)
  return cfg


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _fingerprints(batches):
  """Unmasked rows as hashable identities (bytes of the image)."""
  return [img.tobytes() for batch in batches for img in batch["image"][batch["mask"]]]


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
      mean = image.reshape(-1, 3).mean(0)
      channel = int(np.argmax(mean))
      assert channel == COLOURS[sorted(COLOURS)[label]], "label does not match the colour"
      ids.append((int(label), int(round(mean[channel] / 10))))
  return ids


def test_folder_classes_sizes_and_colours(mixed_folder):
  cfg = _config(source="folder", path=str(mixed_folder), preprocess="none", image_size=16,
                train_split="train[:75%]", eval_split="test")
  info = jd.load_info(cfg)
  assert info.class_names == ("ant", "mole", "zebra")  # sorted directory names
  assert info.num_classes == 3
  assert info.image_shape == (16, 16, 3)
  assert info.split_sizes == {"train[:75%]": 9, "test": 6}
  for split, n in [("train", 12), ("test", 6)]:
    ids = _identities(jd.eval_batches(cfg, split, global_batch_size=5))
    assert len(ids) == len(set(ids)) == n
    assert sorted({label for label, _ in ids}) == [0, 1, 2]


def test_folder_slices_are_disjoint_and_complete(mixed_folder):
  cfg = _config(source="folder", path=str(mixed_folder), preprocess="none", image_size=16)
  whole = set(_identities(jd.eval_batches(cfg, "train", global_batch_size=4)))
  head = _identities(jd.eval_batches(cfg, "train[:75%]", global_batch_size=4))
  tail = _identities(jd.eval_batches(cfg, "train[75%:]", global_batch_size=4))
  middle = _identities(jd.eval_batches(cfg, "train[25%:50%]", global_batch_size=4))
  assert (len(head), len(tail), len(middle)) == (9, 3, 3)
  assert not set(head) & set(tail)
  assert set(head) | set(tail) == whole
  assert set(middle) <= set(head)


def test_folder_slices_are_balanced_and_cached(uniform_folder, tmp_path):
  cfg = _config(source="folder", path=str(uniform_folder), preprocess="none",
                cache_dir=str(tmp_path))
  split = sources.get(cfg).load("train", None, 100)
  assert isinstance(split, sources.ArraySplit)  # one size, small: decoded into memory
  assert len(os.listdir(tmp_path)) == 1  # ... and saved
  again = sources.get(cfg).load("train", None, 100)
  np.testing.assert_array_equal(split.images, again.images)
  first_half = sources.get(cfg).load("train[:50%]", None, 100)
  counts = np.bincount(first_half.labels, minlength=3)
  assert counts.sum() == 30 and counts.min() >= 5  # a class-sorted folder, shuffled
  ids = _identities(jd.eval_batches(cfg, "train", global_batch_size=7))
  assert len(set(ids)) == 60


def test_decoded_split_is_the_split_in_memory(uniform_folder):
  cfg = _config(source="folder", path=str(uniform_folder), preprocess="none")
  images, labels = jd.decoded_split(cfg, "train[:50%]")
  split = sources.get(cfg).load("train[:50%]", True, cfg.max_cache_mb)
  assert images.dtype == np.uint8 and labels.dtype == np.int32 and len(labels) == 30
  np.testing.assert_array_equal(images, split.images)
  np.testing.assert_array_equal(labels, split.labels)


def test_folder_errors(tmp_path, mixed_folder):
  with pytest.raises(jd.DatasetNotFoundError, match="does not exist"):
    jd.load_info(_config(source="folder", path=str(tmp_path / "absent")))
  (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
  with pytest.raises(jd.DatasetNotFoundError, match="No images"):
    jd.load_info(_config(source="folder", path=str(tmp_path / "empty")))
  with pytest.raises(ValueError, match="differ in size"):
    jd.train_batches(_config(source="folder", path=str(mixed_folder), cache=True),
                     global_batch_size=4, seed=0)


# ---------------------------------------------------------------------------------------------
# TFDS, mocked: the metadata (split sizes) is written the way `tfds build` would, the examples
# come from mock_data.

def _check_batch(batch, b, shape, num_classes, mask=True):
  assert batch["image"].shape == (b, *shape) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (b,) and batch["label"].dtype == np.int32
  assert batch["mask"].dtype == np.bool_
  if mask:
    assert batch["mask"].all()
  assert batch["image"].std() > 10  # pixels, not all zeros (normalised on the device)
  assert 0 <= batch["label"].min() and batch["label"].max() < num_classes


def test_tfds_cifar10(mock_tfds):
  cfg = _config(name="cifar10", data_dir=mock_tfds)
  info = jd.load_info(cfg)
  assert (info.num_classes, info.image_shape) == (10, (32, 32, 3))
  assert info.split_sizes == {"train": MOCK_N, "test": MOCK_N}
  assert len(info.class_names) == 10
  for batch in _take(jd.train_batches(cfg, global_batch_size=8, seed=0), 4):
    _check_batch(batch, 8, (32, 32, 3), 10)
  batches = list(jd.eval_batches(cfg, global_batch_size=10))
  assert len(batches) == jd.num_eval_batches(cfg, global_batch_size=10) == 3
  assert sum(b["mask"].sum() for b in batches) == MOCK_N
  _check_batch(batches[0], 10, (32, 32, 3), 10)


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
  info = jd.load_info(cfg)
  assert (info.num_classes, info.image_shape) == (1000, (224, 224, 3))
  train = jd.train_batches(cfg, global_batch_size=8, seed=0)
  batches = _take(train, 5)  # 40 > 24 examples: across an epoch boundary
  for batch in batches:
    _check_batch(batch, 8, (224, 224, 3), 1000)
  _assert_same_batches(batches[3:], _take(jd.train_batches(cfg, global_batch_size=8, seed=0,
                                                           start_step=3), 2))
  evals = list(jd.eval_batches(cfg, global_batch_size=16))
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
                         np.concatenate([b["image"][b["mask"]] for b in batches])]
  assert jd.load_info(cfg).split_sizes == {"train[:40]": 40, "train[40:]": 10}
  train = _take(jd.train_batches(cfg, global_batch_size=8, seed=0), 11)  # 2.2 epochs
  seen = ids(train)
  assert sorted(seen[:40]) == sorted(seen[40:80]) and seen[:40] != seen[40:80]
  _assert_same_batches(train[7:], _take(jd.train_batches(cfg, global_batch_size=8, seed=0,
                                                         start_step=7), 4))
  held_out = ids(jd.eval_batches(cfg, global_batch_size=6))
  assert len(held_out) == 10 and not set(held_out) & set(seen)
  assert sorted(set(held_out) | set(seen)) == list(range(50))
  assert sorted(ids(jd.eval_batches(cfg, "test", global_batch_size=6))) == list(range(100, 120))


def test_tfds_missing_fails_fast_with_advice(tmp_path):
  cfg = _config(name="cifar10", data_dir=str(tmp_path))
  start = time.time()
  with pytest.raises(jd.DatasetNotFoundError) as e:
    jd.load_info(cfg)
  assert time.time() - start < 10
  assert isinstance(e.value, FileNotFoundError)
  message = str(e.value)
  for needed in [str(tmp_path), f"tfds build cifar10 --data_dir={tmp_path}",
                 "--config.data.download=True", "--config.data.source=folder"]:
    assert needed in message
  assert not any(tmp_path.iterdir())  # nothing downloaded, no debris
  cfg.name = "imagenet2012"
  with pytest.raises(jd.DatasetNotFoundError, match="manual_dir"):
    jd.train_batches(cfg, global_batch_size=8, seed=0)


# ---------------------------------------------------------------------------------------------
# scikit-learn digits


def test_digits():
  cfg = _config(source="digits", eval_split="test")
  info = jd.load_info(cfg)
  assert info.split_sizes == {"train": 1437, "test": 360}
  assert (info.num_classes, info.image_shape) == (10, (32, 32, 1))
  raw = _config(source="digits", preprocess="none")  # the 8x8 images, scaled to [0, 1]
  train = _fingerprints(jd.eval_batches(raw, "train", global_batch_size=500))
  test = _fingerprints(jd.eval_batches(raw, "test", global_batch_size=500))
  assert len(set(train)) == 1437 and len(set(test)) == 360  # the 1797 digits are distinct
  assert not set(train) & set(test)
  batches = list(jd.eval_batches(cfg, global_batch_size=100))
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  assert set(np.bincount(labels, minlength=10)) <= {35, 36, 37}  # stratified
  batch = next(jd.train_batches(cfg, global_batch_size=64, seed=0))
  _check_batch(batch, 64, (32, 32, 1), 10)


# ---------------------------------------------------------------------------------------------
# The train stream: determinism, resumption, sharding. Synthetic data (in memory) and a folder
# read with cache=False (streamed) take the two code paths.

N = 37  # examples; with B = 8 the epoch boundary falls inside batch 4


def _synthetic(**overrides):
  return _config(source="synthetic", num_examples=N, image_shape=(8, 8, 3), **overrides)


@pytest.fixture(scope="module", params=["in_memory", "streamed"])
def train_cfg(request, uniform_folder):
  if request.param == "in_memory":
    return _synthetic(preprocess="cifar", image_size=8)
  return _config(source="folder", path=str(uniform_folder), cache=False, preprocess="cifar",
                 image_size=8, shuffle_buffer=16, train_split="train[:37]")


def test_train_deterministic_and_resumable(train_cfg):
  stream = lambda **kw: jd.train_batches(train_cfg, global_batch_size=8, **kw)
  reference = _take(stream(seed=1), 11)
  _assert_same_batches(reference, _take(stream(seed=1), 11))
  for k in (3, 4, 5, 9):  # batch 4 straddles the first epoch boundary, 9 the second
    _assert_same_batches(reference[k:], _take(stream(seed=1, start_step=k), 11 - k))
  other = _take(stream(seed=2), 2)
  assert not np.array_equal(other[0]["image"], reference[0]["image"])


def test_train_process_shards_concatenate_to_global_batch(train_cfg):
  whole = _take(jd.train_batches(train_cfg, global_batch_size=8, seed=3), 6)
  shards = [_take(jd.train_batches(train_cfg, global_batch_size=8, seed=3, start_step=1,
                                   process_index=p, process_count=2), 5) for p in (0, 1)]
  for k in range(5):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(
          np.concatenate([shards[0][k][key], shards[1][k][key]]), whole[k + 1][key])


@pytest.mark.parametrize("source", ["synthetic", "folder"])
def test_train_epochs_are_permutations(source, uniform_folder):
  if source == "synthetic":
    cfg, n = _synthetic(preprocess="none"), N
  else:
    cfg, n = _config(source="folder", path=str(uniform_folder), cache=False, preprocess="none",
                     shuffle_buffer=16), 60
  batches = _take(jd.train_batches(cfg, global_batch_size=8, seed=0), -(-2 * n // 8))
  seen = _fingerprints(batches)
  epoch0, epoch1 = seen[:n], seen[n:2 * n]
  assert len(set(epoch0)) == len(set(epoch1)) == n  # every example once per epoch
  assert set(epoch0) == set(epoch1) and epoch0 != epoch1  # reshuffled


# ---------------------------------------------------------------------------------------------
# The eval stream


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_each_example_exactly_once(process_count):
  cfg = _synthetic(preprocess="none")
  expected = sorted(img.tobytes()
                    for img in sources.get(cfg).load("test", None, 1).images)
  per_process = [list(jd.eval_batches(cfg, global_batch_size=8, process_index=p,
                                      process_count=process_count))
                 for p in range(process_count)]
  steps = jd.num_eval_batches(cfg, global_batch_size=8)
  assert steps == -(-N // 8)
  assert all(len(batches) == steps for batches in per_process)  # same number of steps
  seen = [_fingerprints(batches) for batches in per_process]
  assert sorted(sum(seen, [])) == expected  # disjoint, complete, once each
  for batches in per_process:
    for batch in batches:
      assert batch["image"].shape == (8 // process_count, 8, 8, 3)
      assert (batch["label"][~batch["mask"]] == 0).all()
      assert (batch["image"][~batch["mask"]] == 0).all()


# ---------------------------------------------------------------------------------------------
# Errors and devices


def test_bad_configs_raise_before_any_work():
  with pytest.raises(ValueError, match="multiple of process_count=3"):
    jd.train_batches(_synthetic(), global_batch_size=8, seed=0, process_count=3,
                     process_index=0)
  with pytest.raises(ValueError, match="multiple"):
    jd.eval_batches(_synthetic(), global_batch_size=5, process_count=2, process_index=1)
  with pytest.raises(ValueError, match="Unknown data source 'tfrecords'.*'digits'"):
    jd.load_info(_config(source="tfrecords"))
  with pytest.raises(ValueError, match="Unknown preprocess preset 'resnet'.*'imagenet'"):
    jd.load_info(_synthetic(preprocess="resnet"))
  with pytest.raises(ValueError, match="data.eval_split='validation' is not a split of this "
                                       "dataset, whose splits are 'train', 'test'"):
    jd.load_info(_synthetic(eval_split="validation"))


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
  cfg = _config(source="folder", path=str(tmp_path), preprocess="none", cache=cache)
  with pytest.raises(ValueError, match="cannot be decoded") as error:
    _take(jd.train_batches(cfg, global_batch_size=4, seed=0), 3)
  assert isinstance(error.value, jd.UndecodableImageError)
  assert sorted(error.value.paths) == sorted(bad)
  assert all(path in str(error.value) for path in bad)
  with pytest.raises(ValueError, match="random.jpg"):
    list(jd.eval_batches(cfg, "train", global_batch_size=4))


def test_empty_class_directory_and_a_single_class_are_refused(tmp_path):
  _write_folder(tmp_path / "empty_class", {"train": 2}, [(8, 8)])
  (tmp_path / "empty_class" / "train" / "yak").mkdir()
  (tmp_path / "empty_class" / "train" / "yak" / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=rf"Empty class directory {tmp_path}/empty_class/train/yak"):
    jd.load_info(_config(source="folder", path=str(tmp_path / "empty_class"),
                         eval_split="train"))
  one = tmp_path / "one_class" / "train" / "cat"
  one.mkdir(parents=True)
  tf.io.write_file(str(one / "0.png"), tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)))
  with pytest.raises(ValueError, match=r"has 1 class \(cat\).*two or more"):
    jd.load_info(_config(source="folder", path=str(tmp_path / "one_class"), eval_split="train"))
