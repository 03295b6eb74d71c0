"""The training system end to end: train.py's loop on mock TFDS and synthetic data, exact resume
after SIGTERM and SIGKILL, jit/pmap/1-device agreement, NaN handling, and early errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import MOCK_N, deadline
from tiny_config import tiny_config

import jresnet
from jresnet.data import DatasetNotFoundError
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import loop, optim, parallel, recipe
from jresnet.training import step as step_lib
from jresnet.training.records import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if r["split"] == "train"}


def _final_state(workdir, config):
  p = loop.plan(config)
  target = p.runner.get_state(p.create_state())
  ckpts = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"), async_save=False)
  step = ckpts.latest_step()
  return step, ckpts.restore(step, target, {"model": loop.model_meta(p.model)})


@pytest.mark.parametrize("on_device", ["False", "True"])
def test_end_to_end_on_mock_cifar10(mock_tfds, tmp_path, on_device):
  """Both input paths: tf.data on the host, and the split batched on the devices."""
  config = tiny_config(**{"data.source": "tfds", "data.name": "cifar10",
                          "data.data_dir": mock_tfds, "data.preprocess": "auto",
                          "data.on_device": on_device,
                          "batch_size": 8, "num_train_steps": 4, "eval_every_steps": 2,
                          "eval_batch_size": 16})
  metrics = loop.train_and_evaluate(config, str(tmp_path))
  assert metrics["count"] == MOCK_N  # 24 examples in batches of 16: none dropped, none doubled
  assert 0 <= metrics["accuracy"] <= 1 and np.isfinite(metrics["loss"])
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  rows = read_metrics(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
  logged = {"grad_norm", "param_norm", "update_norm", "learning_rate", "images_per_sec"}
  assert logged <= set(rows[0])
  assert os.listdir(tmp_path / "tensorboard")[0].startswith("events.out.tfevents")
  assert (tmp_path / "curves.png").stat().st_size > 10_000
  resolved = json.load(open(tmp_path / "config.json"))
  assert resolved["precision"] == "float32" and resolved["num_classes"] == 10

  evaluated = loop.evaluate_checkpoint(config, str(tmp_path))  # --mode=eval: the same numbers
  assert evaluated["checkpoint"] == "4"
  assert evaluated["accuracy"] == metrics["accuracy"] and evaluated["loss"] == metrics["loss"]

  # The inference export, evaluated on its own (its architecture, no checkpoint): the same again.
  exported = str(tmp_path / loop.EXPORT_FILE)
  model, variables = jresnet.export.load(exported)
  assert model.num_classes == 10 and set(variables) == {"params", "batch_stats"}
  config.eval_checkpoint = exported
  from_export = loop.evaluate_checkpoint(config, str(tmp_path / "elsewhere"))
  assert from_export["accuracy"] == metrics["accuracy"]
  np.testing.assert_allclose(from_export["loss"], metrics["loss"], rtol=1e-6)


def test_end_to_end_on_mock_imagenet(mock_tfds, tmp_path):
  config = tiny_config(**{"data.source": "tfds", "data.name": "imagenet2012",
                          "data.data_dir": mock_tfds, "data.preprocess": "auto",
                          "data.image_size": 32, "data.eval_split": "validation",
                          "model.family": "imagenet", "model.widths": (8, 16),
                          "batch_size": 8, "num_train_steps": 2, "eval_every_steps": 2})
  metrics = loop.train_and_evaluate(config, str(tmp_path))
  assert metrics["count"] == MOCK_N
  assert json.load(open(tmp_path / "config.json"))["num_classes"] == 1000


def _run_train_py(workdir, *flags):
  args = [sys.executable, os.path.join(REPO, "train.py"), "--config",
          os.path.join(REPO, "tests", "tiny_config.py"), "--workdir", str(workdir), *flags]
  return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _wait_for_checkpoint(workdir, min_step, proc, idle_seconds=30):
  until = time.time() + deadline(idle_seconds)
  while time.time() < until:
    steps = [int(d) for d in os.listdir(workdir / "checkpoints")
             if d.isdigit()] if (workdir / "checkpoints").exists() else []
    if steps and max(steps) >= min_step:
      return max(steps)
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.02)
  raise TimeoutError


def test_resume_after_sigterm_and_sigkill_is_bitwise_exact(tmp_path):
  """An uninterrupted run vs. one preempted (SIGTERM), then killed (SIGKILL), then finished."""
  steps = ["--config.num_train_steps=60", "--config.checkpoint_every_steps=10"]
  reference = tiny_config(num_train_steps=60, checkpoint_every_steps=10)
  loop.train_and_evaluate(reference, str(tmp_path / "reference"))

  workdir = tmp_path / "interrupted"
  proc = _run_train_py(workdir, *steps)
  _wait_for_checkpoint(workdir, 10, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=deadline(20))
  assert proc.returncode == 0, out  # preemption: checkpoint, then a clean exit
  preempted_at = max(int(d) for d in os.listdir(workdir / "checkpoints"))
  assert preempted_at < 60

  proc = _run_train_py(workdir, *steps)
  killed_after = _wait_for_checkpoint(workdir, preempted_at + 10, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert killed_after < 60, "the run finished before it could be killed"

  proc = _run_train_py(workdir, *steps)
  out, _ = proc.communicate(timeout=deadline(30))
  assert proc.returncode == 0, out

  expected, got = _train_losses(tmp_path / "reference"), _train_losses(workdir)
  assert sorted(got) == list(range(1, 61))
  assert got == expected  # every per-step loss, bitwise
  step_a, state_a = _final_state(tmp_path / "reference", reference)
  step_b, state_b = _final_state(workdir, reference)
  assert step_a == step_b == 60
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


def test_jit_pmap_and_single_device_steps_agree():
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  batches = [{"image": rng.standard_normal((16, 8, 8, 3), dtype=np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32),
              "mask": np.ones(16, bool)} for _ in range(5)]

  losses = {}
  for name, kind, devices in [("jit8", "jit", None), ("pmap8", "pmap", None),
                              ("jit1", "jit", jax.devices()[:1])]:
    r = recipe.build(tiny_config(parallel=kind, num_train_steps=5), 10, (8, 8, 3), 64,
                     devices=devices)
    state, out = r.create_state(), []
    for batch in r.runner.feed(iter(batches), 2):
      state, metrics = r.runner.train_step(state, batch)
      out.append(float(r.runner.to_host(metrics)["loss"]))
    losses[name] = np.array(out)
  assert losses["jit8"][0] > 1.0
  np.testing.assert_allclose(losses["pmap8"], losses["jit8"], rtol=1e-5)
  np.testing.assert_allclose(losses["jit1"], losses["jit8"], rtol=1e-5)


def test_feed_places_each_process_rows_as_the_runner_expects():
  """jit: one global array split along 'data'; pmap: one slice per local device."""
  cfg = step_lib.StepConfig(model=jresnet.ResNet(stage_sizes=(1,), widths=(8,), num_classes=10,
                                                 family="cifar"),
                            tx=None, schedule=None, num_classes=10)
  rng = np.random.default_rng(0)
  host = [{"image": rng.standard_normal((16, 2, 2, 3), dtype=np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)} for _ in range(3)]
  jit, pmap = parallel.JitMesh(cfg), parallel.Pmap(cfg)
  for h, d in zip(host, jit.feed(iter(host), 2), strict=True):
    for key in h:
      assert d[key].sharding == jit.data and d[key].shape == h[key].shape
      np.testing.assert_array_equal(np.asarray(d[key]), h[key])
  for h, d in zip(host, pmap.feed(iter(host), 2), strict=True):
    assert d["image"].shape == (8, 2, 2, 2, 3)
    np.testing.assert_array_equal(np.asarray(d["label"]).reshape(-1), h["label"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  good = tiny_config(num_train_steps=4, checkpoint_every_steps=4)
  loop.train_and_evaluate(good, str(tmp_path))
  _, saved = _final_state(tmp_path, good)

  absurd = tiny_config(num_train_steps=40, checkpoint_every_steps=2,
                       **{"optimizer.learning_rate": 1e30, "schedule.name": "constant"})
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* last good checkpoint"):
    loop.train_and_evaluate(absurd, str(tmp_path))
  step, restored = _final_state(tmp_path, good)
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, restored, saved)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))


# --- bad input fails before any compilation, saying what to do --------------------------------

def test_unknown_config_key_is_rejected(tmp_path):
  proc = _run_train_py(tmp_path, "--config.optimizer.not_a_key=1")
  out, _ = proc.communicate(timeout=deadline(30))
  assert proc.returncode != 0 and "not_a_key" in out


@pytest.mark.parametrize("overrides, error, message", [
    ({"batch_size": 12}, ValueError, r"batch_size=12 does not divide across 8 devices"),
    ({"model.stage_sizes": None, "model.widths": None, "model.depth": 21}, ValueError,
     r"depth 6n\+2"),
    ({"data.source": "tfds", "data.name": "cifar10", "data.data_dir": "/nonexistent/tfds"},
     DatasetNotFoundError, r"tfds build cifar10"),
    ({"optimizer.name": "adagrad"}, ValueError, r"sgd, adamw, lars"),
])
def test_bad_input_fails_fast(overrides, error, message):
  start = time.time()
  with pytest.raises(error, match=message):
    loop.plan(tiny_config(**overrides))
  assert time.time() - start < 10


def test_checkpoint_of_another_model_is_refused_with_the_difference(tmp_path):
  loop.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path))
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match=r"stage_sizes: checkpoint has \[1, 1\], config has \[1, 2\]"):
    loop.train_and_evaluate(tiny_config(num_train_steps=4, **{"model.stage_sizes": (1, 2)}),
                            str(tmp_path))


def test_init_from_a_run_and_from_a_torchvision_state_dict(tmp_path):
  """Fine-tuning starts from another run's weights or a .pth; a new class count gets a new head."""
  torch = pytest.importorskip("torch")
  from jresnet import interop  # noqa: PLC0415

  source = tmp_path / "source"
  loop.train_and_evaluate(tiny_config(num_train_steps=2), str(source))
  _, trained = _final_state(source, tiny_config())

  five_classes = {"data.num_classes": 5, "num_train_steps": 1, "optimizer.learning_rate": 0.0,
                  "optimizer.weight_decay": 0.0}
  model = loop.plan(tiny_config(**five_classes)).model
  pth = tmp_path / "weights.pth"
  ten_class_model = model.clone(num_classes=10)
  torch.save(interop.to_torch({"params": trained.params, "batch_stats": trained.batch_stats},
                              ten_class_model, as_tensors=True), pth)

  for init_from in [str(source), str(pth)]:
    workdir = tmp_path / f"finetune_{os.path.basename(init_from)}"
    loop.train_and_evaluate(tiny_config(init_from=init_from, **five_classes), str(workdir))
    _, tuned = _final_state(workdir, tiny_config(**five_classes))
    assert tuned.params["fc"]["kernel"].shape == (16, 5)  # re-initialised for 5 classes
    # lr 0: the backbone is exactly the loaded one; BatchNorm statistics moved by one step.
    for path in [("stem", "conv1", "kernel"), ("layer2", "block0", "conv2", "kernel")]:
      got, want = tuned.params, trained.params
      for key in path:
        got, want = got[key], want[key]
      np.testing.assert_array_equal(got, want)


def test_frozen_batchnorm_and_frozen_stages_stay_bitwise_unchanged(tmp_path):
  config = tiny_config(num_train_steps=3, frozen_stages=("stem", "layer1"),
                       **{"model.frozen_bn": True})
  loop.train_and_evaluate(config, str(tmp_path))
  _, trained = _final_state(tmp_path, config)
  p = loop.plan(config)
  initial = p.create_state()
  jax.tree.map(np.testing.assert_array_equal, trained.batch_stats, initial.batch_stats)
  for frozen in ("stem", "layer1"):
    jax.tree.map(np.testing.assert_array_equal, trained.params[frozen], initial.params[frozen])
  for trainable in ("layer2", "fc"):
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), trained.params[trainable],
                           initial.params[trainable])
    assert any(jax.tree.leaves(changed)), trainable  # (zero gamma keeps some at 0 early on)


def test_ema_weights_are_tracked_and_used_for_evaluation(tmp_path):
  config = tiny_config(num_train_steps=3, ema_decay=0.5, eval_every_steps=3)
  metrics = loop.train_and_evaluate(config, str(tmp_path))
  p = loop.plan(config)
  target = p.runner.get_state(p.create_state())
  ckpts = checkpoint_lib.Checkpoints(os.path.join(tmp_path, "checkpoints"), async_save=False)
  state = ckpts.restore(3, target, {"model": loop.model_meta(p.model)})
  ema, params = state.ema_params["fc"]["kernel"], state.params["fc"]["kernel"]
  assert np.abs(ema - params).max() > 0  # an average of the trajectory, not the last point
  config.eval_checkpoint = str(tmp_path / loop.EXPORT_FILE)
  assert loop.evaluate_checkpoint(config, str(tmp_path))["loss"] == pytest.approx(
      metrics["loss"], rel=1e-6)  # the export and the final evaluation both use the EMA


def test_backbone_learns_at_a_fraction_of_the_heads_rate():
  config = tiny_config(backbone_lr_scale=0.1, **{"optimizer.weight_decay": 0.0})
  plain = optim.create_optimizer(tiny_config(**{"optimizer.weight_decay": 0.0}), 0.5)
  scaled = optim.create_optimizer(config, 0.5)
  params = {"layer1": {"kernel": np.ones(3)}, "fc": {"kernel": np.ones(2)}}
  grads = {"layer1": {"kernel": np.full(3, 2.0)}, "fc": {"kernel": np.full(2, 2.0)}}
  want, _ = plain.update(grads, plain.init(params), params)
  got, _ = scaled.update(grads, scaled.init(params), params)
  np.testing.assert_allclose(got["layer1"]["kernel"], 0.1 * want["layer1"]["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(got["fc"]["kernel"], want["fc"]["kernel"])


def test_finetune_config_runs_on_an_image_folder_from_converted_weights(tmp_path):
  """configs/finetune.py end to end: ImageNet-layout weights (random, 1000 classes, saved as
  .safetensors) on a generated two-class folder. Backbone lr scale 0 and frozen BatchNorm: the
  backbone stays exactly the file's while the new two-class head trains."""
  from PIL import Image  # noqa: PLC0415

  from configs import finetune  # noqa: PLC0415

  rng = np.random.default_rng(0)
  for split, n in (("train", 8), ("test", 4)):
    for label in ("cat", "dog"):
      (tmp_path / "images" / split / label).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(
            tmp_path / "images" / split / label / f"{i}.png")
  source = jresnet.ResNet18()
  published = source.init(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
  jresnet.weights.save_safetensors(str(tmp_path / "resnet18.safetensors"), published, source)

  config = finetune.get_config()
  overrides = {"init_from": str(tmp_path / "resnet18.safetensors"), "model.depth": 18,
               "model.frozen_bn": True, "backbone_lr_scale": 0.0,
               "data.path": str(tmp_path / "images"), "data.image_size": 32, "data.threads": 1,
               "data.cache_dir": None, "batch_size": 8, "num_train_steps": 3,
               "eval_every_steps": 3, "log_every_steps": 1, "async_checkpoints": False}
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    target = config
    for p in parents:
      target = target[p]
    target[leaf] = value
  metrics = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["loss"]) and metrics["count"] == 8
  _, tuned = _final_state(tmp_path / "run", config)
  assert tuned.params["fc"]["kernel"].shape == (512, 2)
  for stage in ("stem", "layer1", "layer4"):
    jax.tree.map(np.testing.assert_array_equal, tuned.params[stage], published["params"][stage])
    jax.tree.map(np.testing.assert_array_equal, tuned.batch_stats[stage],
                 published["batch_stats"][stage])
  fresh = loop.plan(config).create_state()
  head, fresh_head = tuned.params["fc"]["kernel"], fresh.params["fc"]["kernel"]
  assert np.any(np.asarray(head) != np.asarray(fresh_head))  # the new head trained


def test_relative_workdir_with_asynchronous_checkpoints(tmp_path, monkeypatch):
  """Orbax needs absolute paths; `--workdir runs/x` must still checkpoint (in the background)."""
  monkeypatch.chdir(tmp_path)
  loop.train_and_evaluate(tiny_config(async_checkpoints=True), "runs/relative")
  assert _final_state(tmp_path / "runs" / "relative", tiny_config())[0] == 6
