"""bench.device_batches and bench.accuracy_vs_epochs: a pack holds exactly the split jresnet.data
reads, and the on-device batches are the 'cifar' recipe over a per-epoch permutation."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict
from PIL import Image

from bench import device_batches
from configs import cifar10_resnet20_budget
from jresnet.data import sources

OVERRIDES = {"data.train_split": "train[:24]", "data.eval_split": "train[24:]",
             "model.depth": 8, "batch_size": 8, "eval_batch_size": 8, "num_epochs": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """36 random 32x32 PNGs in 3 classes (lossless, so a pack must give them back exactly)."""
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  for c in range(3):
    os.makedirs(root / "train" / f"class{c}")
    for i in range(12):
      image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      Image.fromarray(image).save(root / "train" / f"class{c}" / f"{i}.png")
  return root


def config(folder, tmp_path) -> ConfigDict:
  cfg = cifar10_resnet20_budget.get_config()
  cfg.data.path, cfg.data.cache_dir = str(folder), str(tmp_path / "cache")
  for key, value in OVERRIDES.items():
    section, _, field = key.rpartition(".")
    (cfg[section] if section else cfg)[field] = value
  return cfg


def test_pack_holds_the_split_jresnet_reads_in_its_order(folder, tmp_path):
  cfg = config(folder, tmp_path)
  device_batches.pack(cfg, tmp_path / "pack.npz")
  source = sources.get(cfg.data)
  with np.load(tmp_path / "pack.npz") as f:
    for name, split in zip(device_batches.SPLITS, (cfg.data.train_split, cfg.data.eval_split)):
      expected = source.load(split, True, cfg.data.max_cache_mb)
      images, labels = device_batches.load_split(f, name)
      np.testing.assert_array_equal(images, expected.images)
      np.testing.assert_array_equal(labels, expected.labels)
    recipe = json.loads(str(f["config"]))
    assert int(f["num_classes"]) == 3
  assert recipe["data"]["mean"] == [0.4914, 0.4822, 0.4465]  # the preset's, filled in
  assert recipe["optimizer"]["nesterov"] and recipe["model"]["depth"] == 8


def test_pack_refuses_a_preset_that_does_not_run_on_the_device(folder, tmp_path):
  cfg = config(folder, tmp_path)
  cfg.data.preprocess = "imagenet"
  with pytest.raises(Exception, match="Only the 'cifar' preset"):
    device_batches.pack(cfg, tmp_path / "pack.npz")


def test_augment_is_a_padded_crop_maybe_flipped():
  images = jax.random.randint(jax.random.key(0), (64, 8, 8, 3), 1, 256).astype(jnp.uint8)
  out = np.asarray(device_batches.augment(images, jax.random.key(1), 2))
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  seen = set()
  for image, result in zip(padded, out):
    views = {(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
             if np.array_equal(result, image[dy:dy + 8, dx:dx + 8][:, ::-1] if flip
                               else image[dy:dy + 8, dx:dx + 8])}
    assert len(views) == 1, "not a 2-pixel translation of the image, flipped or not"
    seen |= views
  assert {flip for *_, flip in seen} == {False, True} and len(seen) > 20


def batches(n_train=10, n_eval=7, batch=4, eval_batch=3):
  cfg = ConfigDict(dict(batch_size=batch, eval_batch_size=eval_batch, seed=0,
                        data=dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))))
  rng = np.random.default_rng(0)
  data = {name: (rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), np.arange(n, dtype=np.int32))
          for name, n in (("train", n_train), ("eval", n_eval))}
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  shardings = types.SimpleNamespace(data=NamedSharding(mesh, P("data")),
                                    replicated=NamedSharding(mesh, P()))
  return device_batches.Batches(shardings, data, cfg), data


def test_batches_visit_every_example_once_per_epoch_across_epoch_boundaries():
  b, _ = batches(n_train=10, batch=4)  # batches straddle epochs: 10 is not a multiple of 4
  stream = np.concatenate([b.index(step) for step in range(15)])  # 60 positions = 6 epochs
  epochs = stream.reshape(6, 10)
  assert all(sorted(e) == list(range(10)) for e in epochs)
  assert len({tuple(e) for e in epochs}) == 6  # a new order each epoch
  np.testing.assert_array_equal(b.index(7), stream[28:32])  # a pure function of the step


def test_train_batch_is_the_normalised_augmented_examples():
  b, data = batches()
  batch = b.train(3)
  np.testing.assert_array_equal(batch["label"], data["train"][1][b.index(3)])
  pixels = np.asarray(batch["image"]) * 0.25 * 255 + 0.5 * 255
  np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
  assert batch["mask"].all() and pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3


def test_evaluation_counts_every_example_once():
  b, data = batches(n_eval=7, eval_batch=3)
  out = list(b.evaluation())
  assert len(out) == 3
  labels = np.concatenate([np.asarray(x["label"])[np.asarray(x["mask"])] for x in out])
  np.testing.assert_array_equal(labels, data["eval"][1])
  first = np.asarray(out[0]["image"]) * 0.25 * 255 + 0.5 * 255
  np.testing.assert_allclose(first, data["eval"][0][:3], atol=1e-3)


def run_module(*args, tensorflow=True, returncode=0):
  """`python -m bench.accuracy_vs_epochs *args`; with tensorflow=False, as on a machine without
  it (an import of tensorflow fails). Returns stdout, or stderr when a failure is expected."""
  block = "" if tensorflow else "sys.modules['tensorflow'] = None; "
  code = (f"import runpy, sys; {block}sys.argv = ['accuracy_vs_epochs', *{list(map(str, args))}]; "
          "runpy.run_module('bench.accuracy_vs_epochs', run_name='__main__')")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JRESNET_HUGE_PAGES": "0"})
  assert run.returncode == returncode, run.stderr[-2000:]
  return run.stdout if returncode == 0 else run.stderr


def test_pack_then_train_curves_with_the_project_step(folder, tmp_path):
  """End to end in subprocesses (absl flags): pack, then, without TensorFlow, two run lengths and
  one with the packed recipe changed through bench/packed_config.py; the pmap path is refused."""
  pack, out = tmp_path / "pack.npz", tmp_path / "curves.jsonl"
  run_module("--mode=pack", "--config=configs/cifar10_resnet20_budget.py", f"--pack={pack}",
             f"--config.data.path={folder}", f"--config.data.cache_dir={tmp_path / 'cache'}",
             *(f"--config.{k}={v}" for k, v in OVERRIDES.items()))
  printed = run_module(f"--pack={pack}", "--epochs=1,2", "--evals=2", f"--out={out}",
                       tensorflow=False)
  runs = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["epochs"] for r in runs] == [1.0, 2.0]
  assert [[row["step"] for row in r["curve"]] for r in runs] == [[2, 3], [3, 6]]  # 24 / 8
  assert all(0 <= r["val_accuracy"] <= 1 and r["precision"] == "float32" for r in runs)
  assert "val_accuracy" in printed
  run_module(f"--pack={pack}", f"--config=bench/packed_config.py:{pack}",
             "--config.optimizer.weight_decay=0.0", "--epochs=1", "--evals=1", f"--out={out}",
             tensorflow=False)
  last = json.loads(out.read_text().splitlines()[-1])
  assert last["config"]["optimizer"]["weight_decay"] == 0.0 and last["steps"] == 3
  error = run_module(f"--pack={pack}", f"--config=bench/packed_config.py:{pack}",
                     "--config.parallel=pmap", f"--out={out}", tensorflow=False, returncode=1)
  assert "use --config.parallel=jit" in error
