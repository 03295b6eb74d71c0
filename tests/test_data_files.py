"""Data files that are wrong or damaged: array files checked before anything compiles, a damaged
array file named and left alone, a damaged decode cache moved aside and rebuilt, JPEG-encoded
array files decoded in full when written and named with the index when read, and the files that
`jresnet.predict` and `--mode=write_resized` cannot decode named."""

import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import deadline
from PIL import Image
from tiny_config import tiny_config

import jresnet
import train
from configs import default
from jresnet import data as jd
from jresnet import export, predict
from jresnet.data import arrays, resized_copy, sources
from jresnet.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data_config(**overrides):
  cfg = default.data_config()
  cfg.update({"cache_dir": "", "threads": 1, "preprocess": "none", **overrides})
  return cfg


def _write_array_file(path, splits, num_classes=10, encoding="raw"):
  """An array file in the format arrays.write writes, from {split: (images, labels)}: arrays.py's
  own writer refuses bad splits, so a hand-made (or another tool's) file is made the same way."""
  payload = {"format_version": np.array(arrays.FORMAT_VERSION), "encoding": np.array(encoding),
             "name": np.array("hand-made"), "class_names": np.array(json.dumps([])),
             "num_classes": np.array(num_classes), "splits": np.array(json.dumps(list(splits)))}
  for i, (images, labels) in enumerate(splits.values()):
    if encoding == "raw":
      payload[f"images_{i}"] = images
    else:  # images: a list of encoded files
      payload[f"jpeg_{i}"] = np.frombuffer(b"".join(images), np.uint8)
      payload[f"offsets_{i}"] = np.cumsum([0] + [len(e) for e in images])
    payload[f"labels_{i}"] = labels
  np.savez(path, **payload)
  return str(path)


def _split(n, shape=(8, 8, 3), dtype=np.uint8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, *shape)).astype(dtype), np.arange(n, dtype=np.int32) % 10


def _with(split, index=None, label=None, pixel=None):
  images, labels = split[0].copy(), split[1].copy()
  if label is not None:
    labels[index] = label
  if pixel is not None:
    images[index, 1, 2, 0] = pixel
  return images, labels


def _jpeg(seed, shape=(8, 8, 3)):
  buffer = io.BytesIO()
  pixels = np.random.default_rng(seed).integers(0, 256, shape, np.uint8)
  Image.fromarray(pixels.squeeze()).save(buffer, "JPEG", quality=90)
  return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Array files: every split checked when the source is made.

BAD_ARRAY_FILES = {
    "train label 17": ({"train": _with(_split(12), 5, label=17), "test": _split(4)},
                       r"split 'train': label 17 at index 5 is not a class index in \[0, 10\)"),
    "train label -1": ({"train": _with(_split(12), 0, label=-1), "test": _split(4)},
                       r"split 'train': label -1 at index 0 is not"),
    "eval label 10": ({"train": _split(12), "test": _with(_split(4), 3, label=10)},
                      r"split 'test': label 10 at index 3 is not"),
    "100 labels for 1437 images": (
        {"train": (_split(1437)[0], _split(100)[1]), "test": _split(4)},
        r"split 'train': 1437 images but 100 labels"),
    "float labels": ({"train": (_split(12)[0], _split(12)[1].astype(np.float32)),
                      "test": _split(4)}, r"split 'train': labels are float32 \(12,\)"),
    "NaN pixel": ({"train": _with(_split(5000, dtype=np.float32), 4321, pixel=np.nan),
                   "test": _split(4, dtype=np.float32)},
                  r"split 'train': image 4321 has a non-finite pixel \(nan\)"),
    "inf pixel in eval": ({"train": _split(12, dtype=np.float32),
                           "test": _with(_split(4, dtype=np.float32), 2, pixel=-np.inf)},
                          r"split 'test': image 2 has a non-finite pixel \(-inf\)"),
    "eval with 1 channel": ({"train": _split(12), "test": _split(4, shape=(8, 8, 1))},
                            r"split 'test' holds uint8 images of \(8, 8, 1\), split 'train' "
                            r"uint8 images of \(8, 8, 3\)"),
    "eval of another size": ({"train": _split(12), "test": _split(4, shape=(6, 8, 3))},
                             r"split 'test' holds uint8 images of \(6, 8, 3\)"),
    "eval of another dtype": ({"train": _split(12), "test": _split(4, dtype=np.float32)},
                              r"split 'test' holds float32 images"),
    "images without channels": ({"train": (_split(12)[0][..., 0], _split(12)[1]),
                                 "test": _split(4)},
                                r"split 'train': images are uint8 \(12, 8, 8\)"),
}


@pytest.mark.parametrize("case", BAD_ARRAY_FILES)
def test_bad_array_files_are_refused_naming_file_split_and_index(tmp_path, case):
  splits, message = BAD_ARRAY_FILES[case]
  path = _write_array_file(tmp_path / "arrays.npz", splits)
  with pytest.raises(jd.ArrayFileError, match=rf"^{path}(, |: ){message}") as error:
    jd.open(_data_config(source="arrays", path=path))  # what train.py's plan reads first
  assert "\n" not in str(error.value)


def test_good_array_files_pass_the_checks(tmp_path):
  """Float pixels, int64 labels, every class used: accepted, the arrays as stored."""
  train, test = _split(12, dtype=np.float32), _split(4, dtype=np.float32)
  train = (train[0], train[1].astype(np.int64))
  path = _write_array_file(tmp_path / "arrays.npz", {"train": train, "test": test})
  source = sources.get(_data_config(source="arrays", path=path), 1)
  got = source.load("train", True, 1)
  np.testing.assert_array_equal(got.images, train[0])
  assert got.labels.dtype == np.int32 and list(got.labels) == list(train[1])
  assert source.num_examples("test") == 4 and source.metadata.image_shape == (8, 8, 3)


def test_a_bad_array_file_fails_train_before_the_workdir_is_made(tmp_path):
  path = _write_array_file(tmp_path / "arrays.npz",
                           {"train": _split(64), "test": _with(_split(16), 7, label=10)})
  config = tiny_config(**{"data.source": "arrays", "data.path": path, "data.eval_split": "test"})
  with pytest.raises(jd.ArrayFileError, match=rf"{path}, split 'test': label 10 at index 7"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_array_file_check_cost_on_a_cifar_sized_split():
  """The check of 50,000 32x32x3 uint8 images (labels and shapes; uint8 pixels are always
  finite): printed for BENCHMARKS.md, asserted loosely."""
  import time  # noqa: PLC0415

  images = np.zeros((50_000, 32, 32, 3), np.uint8)
  labels = np.arange(50_000, dtype=np.int32) % 10
  start = time.perf_counter()
  for _ in range(10):
    arrays.check_split("cifar", images, labels, 10)
  seconds = (time.perf_counter() - start) / 10
  print(f"check_split, 50k 32x32x3 uint8: {seconds * 1e3:.2f} ms")
  assert seconds < 0.05


# ---------------------------------------------------------------------------------------------
# Damaged .npz files.


@pytest.fixture(scope="module")
def good_array_file(tmp_path_factory):
  cfg = _data_config(source="synthetic", image_shape=(8, 8, 3), num_examples=24, num_classes=3)
  path = str(tmp_path_factory.mktemp("arrays") / "arrays.npz")
  arrays.write(path, sources.get(cfg, 1), ["train", "test"])
  return open(path, "rb").read()


def _crc_bad(data: bytes) -> bytes:
  """`data` with one byte of images_0's pixels flipped: the zip is intact, its CRC is not."""
  damaged = bytearray(data)
  damaged[data.index(b"images_0.npy") + 300] ^= 0xFF
  return bytes(damaged)


@pytest.mark.parametrize("damage", ["truncated", "empty", "crc"])
def test_a_damaged_array_file_is_named_and_left_as_it_is(tmp_path, good_array_file, damage):
  damaged = {"truncated": good_array_file[:len(good_array_file) // 2], "empty": b"",
             "crc": _crc_bad(good_array_file)}[damage]
  path = tmp_path / "arrays.npz"
  path.write_bytes(damaged)
  with pytest.raises(jd.ArrayFileError, match=rf"^{path} is damaged \(.*\); it is left as it is: "
                                              r"write the file again with .*--mode=write_arrays"):
    jd.open(_data_config(source="arrays", path=str(path)))
  assert path.read_bytes() == damaged and os.listdir(tmp_path) == ["arrays.npz"]


def _write_folder(root, splits=(("train", 6), ("test", 2)), shape=(8, 8, 3), seed=0):
  """Two classes of JPEG images; returns the paths written."""
  rng, paths = np.random.default_rng(seed), []
  for split, n in splits:
    for label in ("cat", "dog"):
      (root / split / label).mkdir(parents=True)
      for i in range(n):
        paths.append(root / split / label / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(paths[-1], quality=90)
  return paths


def test_a_damaged_decode_cache_is_moved_aside_and_rebuilt(tmp_path, caplog):
  _write_folder(tmp_path / "images", splits=(("train", 6),))
  cfg = _data_config(source="folder", path=str(tmp_path / "images"), cache=True,
                     cache_dir=str(tmp_path / "cache"))
  expected = sources.get(cfg, 1).load("train", True, 1)
  (cache,) = (tmp_path / "cache").iterdir()
  good = cache.read_bytes()
  for damaged in (good[:len(good) // 2], good[:100]):  # twice: still one '.corrupt' copy
    cache.write_bytes(damaged)
    with caplog.at_level(logging.WARNING):
      got = sources.get(cfg, 1).load("train", True, 1)
    np.testing.assert_array_equal(got.images, expected.images)
    np.testing.assert_array_equal(got.labels, expected.labels)
    assert f"The decode cache {cache} is damaged (BadZipFile" in caplog.text
    assert f"moved it to {cache}.corrupt; decoding {tmp_path / 'images' / 'train'} again" in (
        caplog.text)
    assert sorted(os.listdir(tmp_path / "cache")) == [cache.name, f"{cache.name}.corrupt"]
    assert (tmp_path / "cache" / f"{cache.name}.corrupt").read_bytes() == damaged
    assert cache.read_bytes() == good  # rebuilt
    caplog.clear()


# ---------------------------------------------------------------------------------------------
# JPEG-encoded array files.


def test_write_arrays_jpeg_decodes_every_image_and_names_a_broken_one(tmp_path):
  paths = _write_folder(tmp_path / "images")
  broken = paths[3]  # not the first image, which the folder source decodes for its shape
  broken.write_bytes(broken.read_bytes()[:-10])  # a JPEG start, the end cut off
  config = tiny_config(**{"data.source": "folder", "data.path": str(tmp_path / "images"),
                          "data.cache_dir": ""})
  with pytest.raises(jd.ArrayFileError, match=rf"^{broken} does not decode \(OSError: image file "
                                              r"is truncated.*\): replace or remove that image"):
    train.write_arrays(config, str(tmp_path / "run"), "jpeg")
  assert not (tmp_path / "run").exists()  # nothing written
  broken.write_bytes(_jpeg(0, shape=(8, 8)))  # decodes, but to one channel
  with pytest.raises(jd.ArrayFileError, match=rf"^{broken} is \(8, 8, 1\) but .* is \(8, 8, 3\)"):
    train.write_arrays(config, str(tmp_path / "run"), "jpeg")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(broken, format="PNG")  # named '.jpg'
  with pytest.raises(ValueError, match=rf"needs JPEG files; {broken} in split 'train' of folder "
                                       "is not one: use encoding 'raw'"):
    train.write_arrays(config, str(tmp_path / "run"), "jpeg")
  assert not (tmp_path / "run").exists()


def test_reading_a_jpeg_array_file_names_the_file_split_and_index_of_a_broken_image(tmp_path):
  files = [_jpeg(i) for i in range(5)]
  labels = np.arange(5, dtype=np.int32) % 2
  good = _write_array_file(tmp_path / "good.npz", {"train": (files, labels)}, 2, "jpeg")
  got = sources.get(_data_config(source="arrays", path=good, eval_split="train"), 1)
  assert got.load("train", True, 1).images.shape == (5, 8, 8, 3)
  files[2] = files[2][:len(files[2]) // 2]
  path = _write_array_file(tmp_path / "arrays.npz", {"train": (files, labels)}, 2, "jpeg")
  with pytest.raises(jd.ArrayFileError, match=rf"^{path}, split 'train', image 2 does not decode "
                                              r"\(OSError: .*\): write the file again with"):
    jd.open(_data_config(source="arrays", path=path, eval_split="train"))


# ---------------------------------------------------------------------------------------------
# Image files that do not decode, named.


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = jresnet.ResNet(stage_sizes=(1,), widths=(8,), family="cifar", shortcut="B",
                         num_classes=2)
  path = str(tmp_path_factory.mktemp("export") / "model.msgpack")
  export.save(path, model, jresnet.init_variables(model, 0), class_names=("cat", "dog"),
              transform=jresnet.weights.EvalTransform(resize=8, crop=8, keep_aspect=False,
                                                      mean=(0.5,) * 3, std=(0.25,) * 3))
  return path


def _pictures(root):
  """Two good images and two that do not decode: a truncated JPEG and a '.png' of random bytes."""
  root.mkdir()
  Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(root / "a.png")
  (root / "b.jpg").write_bytes(_jpeg(1, (16, 16, 3))[:100])
  (root / "c.png").write_bytes(np.random.default_rng(0).bytes(300))
  Image.fromarray(np.full((9, 7, 3), 200, np.uint8)).save(root / "d.jpg")
  return [str(root / name) for name in ("a.png", "b.jpg", "c.png", "d.jpg")]


def test_predict_names_each_undecodable_image_classifies_the_others_and_fails(
    exported, tmp_path, capsys):
  good_a, truncated, garbage, good_d = _pictures(tmp_path / "pics")
  with pytest.raises(jd.UndecodableImageError) as error:
    predict.main([exported, str(tmp_path / "pics")])
  assert error.value.paths == [truncated, garbage]
  out, err = capsys.readouterr()
  assert [line.split(": ")[0] for line in out.splitlines()] == [good_a, good_d]
  assert err.splitlines() == [
      f"error: {truncated} does not decode as an image (OSError: Truncated File Read)",
      f"error: {garbage} does not decode as an image (UnidentifiedImageError: cannot identify "
      f"image file '{garbage}')"]


def test_predict_command_exits_1_after_the_decodable_images(exported, tmp_path):
  good_a, truncated, garbage, good_d = _pictures(tmp_path / "pics")
  run = subprocess.run([sys.executable, "-m", "jresnet.predict", exported, good_a, truncated],
                       cwd=REPO, capture_output=True, text=True, timeout=deadline(30),
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 1, run.stderr[-2000:]
  assert run.stdout.startswith(f"{good_a}: ")
  assert run.stderr.splitlines()[-1] == (f"error: 1 image file(s) cannot be decoded: {truncated}. "
                                         "Remove or replace them.")


def test_write_resized_names_an_undecodable_image(tmp_path):
  paths = _write_folder(tmp_path / "images", splits=(("train", 6),))
  paths[4].write_bytes(np.random.default_rng(0).bytes(500))
  cfg = _data_config(source="folder", path=str(tmp_path / "images"), cache=False,
                     eval_split="train")
  with pytest.raises(jd.UndecodableImageError, match=rf"1 image file\(s\) cannot be decoded: "
                                                     rf"{paths[4]}\. Remove or replace them"):
    jd.open(cfg).write_resized(str(tmp_path / "copy"), 4, resized_copy.QUALITY)
  assert not (tmp_path / "copy").exists()

