"""The device input path and the array file: batches made on the accelerators keep the host
stream's contract (every example once per epoch, batch k a pure function of (seed, k), exact
evaluation), the presets' augmentations are what they say, and train.py runs on them without
TensorFlow."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import deadline
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

import jresnet.data as jd
from configs import default
from jresnet.data import arrays, device_stream, device_transforms, presets, process_shard, sources
from jresnet.data.sources.base import Metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH_SHARDING = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), P("data"))


def _data_config(**overrides):
  cfg = default.data_config()
  cfg.update({"cache_dir": "", "threads": 1, **overrides})
  return cfg


def _preset(name, shape, image_size=None):
  return presets.resolve(_data_config(preprocess=name, image_size=image_size),
                         Metadata("test", 10, None, shape))


def _indexed_split(n, shape=(4, 4, 1)):
  """Images whose pixels are their index (mod 256) and labels that are the index."""
  images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None],
                           (n, *shape)).copy()
  return sources.ArraySplit(images, np.arange(n, dtype=np.int32))


def _device_split(n, preset="none", shape=(4, 4, 1)):
  return device_stream.DeviceSplit(_indexed_split(n, shape), _preset(preset, shape),
                                   BATCH_SHARDING)


def _rows(global_batch_size):
  return process_shard.Shard(global_batch_size, 0, 1)


def test_every_example_once_per_epoch_and_batch_k_a_pure_function_of_the_step():
  stream = _device_split(10).train_batches(3, 0, _rows(8))
  batches = [next(stream) for _ in range(10)]  # 80 positions = 8 epochs of 10; batches straddle
  assert all(b["label"].sharding == BATCH_SHARDING for b in batches)
  positions = np.concatenate([np.asarray(b["label"]) for b in batches])
  epochs = positions.reshape(8, 10)
  assert all(sorted(e) == list(range(10)) for e in epochs)
  assert len({tuple(e) for e in epochs}) == 8  # a fresh permutation every epoch
  pixels = np.concatenate([np.asarray(b["image"])[:, 0, 0, 0] for b in batches])
  np.testing.assert_allclose(pixels * 255, positions, atol=1e-4)  # preset 'none': x / 255
  resumed = _device_split(10).train_batches(3, 7, _rows(8))
  for step in range(7, 10):  # an independent stream, started at step 7, gives the same batches
    again = next(resumed)
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(batches[step][key]))
  other_seed = _device_split(10).train_batches(4, 0, _rows(8))
  assert not np.array_equal(np.asarray(next(other_seed)["label"]), positions[:8])


def test_evaluation_counts_every_example_once_with_a_mask():
  split = _device_split(21)
  out = list(split.eval_batches(_rows(8)))
  assert len(out) == 3  # ceil(21 / 8)
  masks = np.concatenate([np.asarray(b["mask"]) for b in out])
  labels = np.concatenate([np.asarray(b["label"]) for b in out])[masks]
  np.testing.assert_array_equal(labels, np.arange(21))
  assert masks.sum() == 21 and not masks[21:].any()


def _views(image, pad, flips):
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  h, w = image.shape[:2]
  return {(dy, dx, flip): (padded[dy:dy + h, dx:dx + w][:, ::-1] if flip
                           else padded[dy:dy + h, dx:dx + w])
          for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in flips}


def test_cifar_augmentation_is_a_padded_crop_maybe_flipped_with_a_seed_per_example():
  preset = _preset("cifar", (16, 16, 3), image_size=16)
  assert preset.pad == 2 and preset.flip
  images = np.asarray(jax.random.randint(jax.random.key(0), (64, 16, 16, 3), 1, 256), np.uint8)
  keys = jax.random.split(jax.random.key(1), 64)
  out = np.asarray(device_transforms.train_batch(preset, jnp.asarray(images), keys))
  pixels = out * np.asarray(preset.std) * 255 + np.asarray(preset.mean) * 255
  seen = set()
  for image, result in zip(images, pixels):
    match = {v for v, view in _views(image.astype(np.float32), 2, (False, True)).items()
             if np.allclose(result, view, atol=1e-3)}
    assert len(match) == 1, "not a 2-pixel translation of the image, flipped or not"
    seen |= match
  assert {flip for *_, flip in seen} == {False, True} and len(seen) > 20
  alone = device_transforms.train_batch(preset, jnp.asarray(images[5:6]), keys[5:6])
  np.testing.assert_array_equal(np.asarray(alone)[0], out[5])  # the example's own key decides


def test_digits_augmentation_upsamples_then_translates_without_flips():
  preset = _preset("digits", (8, 8, 1))
  assert preset.image_shape == (32, 32, 1) and not preset.flip
  images = np.asarray(jax.random.randint(jax.random.key(2), (16, 8, 8, 1), 0, 256), np.uint8)
  out = device_transforms.train_batch(preset, jnp.asarray(images),
                                      jax.random.split(jax.random.key(3), 16))
  pixels = np.asarray(out) * preset.std[0] * 255 + preset.mean[0] * 255
  upsampled = np.asarray(jax.image.resize(images.astype(np.float32), (16, 32, 32, 1), "bilinear",
                                          antialias=True))
  for image, result in zip(upsampled, pixels):
    assert any(np.allclose(result, view, atol=1e-3)
               for view in _views(image, 4, (False,)).values())
  evaluated = device_transforms.eval_batch(preset, jnp.asarray(images))
  np.testing.assert_allclose(np.asarray(evaluated) * preset.std[0] * 255 + preset.mean[0] * 255,
                             upsampled, atol=1e-3)


def test_the_imagenet_preset_runs_on_the_device():
  """A split in memory under the imagenet preset is cropped on the devices, in JAX."""
  cfg = _data_config(source="synthetic", preprocess="imagenet", image_shape=(40, 40, 3),
                     image_size=24, num_examples=16)
  dataset = jd.open(cfg)
  train = next(dataset.train_batches(BATCH_SHARDING, batch_size=8, seed=0))
  evaluated = next(dataset.eval_batches(BATCH_SHARDING, batch_size=8))
  assert dataset.in_memory("train") and dataset.in_memory("test")
  assert train["image"].shape == evaluated["image"].shape == (8, 24, 24, 3)
  images = dataset.split("test").images[:8]
  expected = device_transforms.eval_batch(dataset.preset, jnp.asarray(images))
  np.testing.assert_array_equal(np.asarray(evaluated["image"]), np.asarray(expected))


def test_array_file_round_trip_raw_and_jpeg(tmp_path):
  cfg = _data_config(source="synthetic", image_shape=(8, 8, 3), num_examples=12, num_classes=3)
  counts = arrays.write(str(tmp_path / "raw.npz"), sources.get(cfg, 1), ["train[:9]", "test"])
  assert counts == {"train[:9]": 9, "test": 12}
  read = sources.get(_data_config(source="arrays", path=str(tmp_path / "raw.npz")), 1)
  for split in ("train[:9]", "test", "test[:25%]"):
    expected, got = sources.get(cfg, 1).load(split, True, 1), read.load(split, True, 1)
    np.testing.assert_array_equal(got.images, expected.images)
    np.testing.assert_array_equal(got.labels, expected.labels)
  with pytest.raises(ValueError, match=r"Unknown split 'train'.*\['train\[:9\]', 'test'\]"):
    read.num_examples("train[:50%]")

  root = tmp_path / "folder"
  rng = np.random.default_rng(0)
  for c in range(2):
    os.makedirs(root / "train" / f"class{c}")
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
          root / "train" / f"class{c}" / f"{i}.jpg", quality=90)
  folder = sources.get(_data_config(source="folder", path=str(root)), 1)
  arrays.write(str(tmp_path / "jpeg.npz"), folder, ["train"], encoding="jpeg")
  read = sources.get(_data_config(source="arrays", path=str(tmp_path / "jpeg.npz")), 1)
  files, labels, _ = folder.encoded("train")
  got = read.load("train", True, 1)
  np.testing.assert_array_equal(got.labels, labels)
  for data, image in zip(files, got.images):  # Pillow's decoding of the very same files
    import io  # noqa: PLC0415
    np.testing.assert_array_equal(image, np.asarray(Image.open(io.BytesIO(data))))
  assert read.metadata.class_names == ("class0", "class1")


def test_train_py_on_digits_without_tensorflow(tmp_path):
  """The device path end to end where TensorFlow cannot be imported, as on the GPU machines."""
  args = ["train.py", "--config", "configs/digits.py", "--workdir", str(tmp_path),
          "--config.num_train_steps=6", "--config.eval_every_steps=3", "--config.log_every_steps=3",
          "--config.model.depth=8", "--config.compilation_cache_dir="]
  code = ("import runpy, sys; sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = "
          f"None; sys.argv = {args!r}; runpy.run_path('train.py', run_name='__main__')")
  run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=deadline(60), env={**os.environ, "JRESNET_HUGE_PAGES": "0"})
  assert run.returncode == 0, run.stderr[-3000:]
  assert "input: train on the devices; test on the devices" in run.stdout + run.stderr
  assert "count=360" in run.stdout  # every test digit evaluated once
  assert {"metrics.jsonl", "model.msgpack", "curves.png", "config.json"} <= set(
      os.listdir(tmp_path))


def test_config_json_of_an_array_file_run_keeps_the_file():
  """What eval mode later starts from: the run's own source fields, the file's path among them."""
  import types  # noqa: PLC0415

  from jresnet.training import run_config  # noqa: PLC0415

  cfg = default.get_config()
  cfg.data.update(source="arrays", path="/runs/cifar10_arrays/arrays.npz")
  info = types.SimpleNamespace(eval_transform=None, image_shape=(32, 32, 3), preset="cifar",
                               eval_split="test", class_names=None, num_classes=10,
                               split_sizes={"train": 50_000, "test": 10_000})
  data = run_config.resolve(cfg, info).data
  assert data.path == "/runs/cifar10_arrays/arrays.npz"
  assert not {"name", "data_dir", "num_examples", "synthetic_seed"} & set(data)
  cfg.data.source = "tfds"
  assert "path" not in run_config.resolve(cfg, info).data
