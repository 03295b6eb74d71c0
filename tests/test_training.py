"""The training system end to end: train.py's loop on mock TFDS and synthetic data, exact resume
after SIGTERM and SIGKILL, jit/pmap/1-device agreement, NaN handling, and early errors."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import MOCK_N, deadline
from tiny_config import build, initial_state, tiny_config

import jresnet
from jresnet import data
from jresnet.data import DatasetInfo, DatasetNotFoundError
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import evaluate, loop, optim, run_config
from jresnet.training.model import model_meta
from jresnet.training.records import read_metrics
from jresnet.training.state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_losses(workdir):
  return {r["step"]: [v for k, v in sorted(r.items()) if k.startswith("loss")]
          for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"}


def _final_state(workdir, config):
  _, runner, _ = build(config)
  ckpts = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"), async_save=False)
  step = ckpts.latest_step()
  return step, ckpts.restore(step, initial_state(config),
                            {"model": model_meta(runner.model, runner.replicas)})


@pytest.mark.parametrize("cache", [False, True])
def test_end_to_end_on_mock_cifar10(mock_tfds, tmp_path, cache):
  """Both input paths: streamed by tf.data and augmented on the devices, and held on them."""
  config = tiny_config(**{"data.source": "tfds", "data.name": "cifar10",
                          "data.data_dir": mock_tfds, "data.preprocess": "auto",
                          "data.cache": cache,
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

  evaluated = evaluate.evaluate_checkpoint(config, str(tmp_path))  # --mode=eval: the same numbers
  assert evaluated["checkpoint"] == "4"
  assert evaluated["accuracy"] == metrics["accuracy"] and evaluated["loss"] == metrics["loss"]

  # The inference export, evaluated on its own (its architecture, no checkpoint): the same again.
  exported = str(tmp_path / loop.EXPORT_FILE)
  model, variables = jresnet.export.load(exported)
  assert model.num_classes == 10 and set(variables) == {"params", "batch_stats"}
  config.eval_checkpoint = exported
  from_export = evaluate.evaluate_checkpoint(config, str(tmp_path / "elsewhere"))
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


@pytest.mark.parametrize("per_call, replicas, killed", [(1, 1, True), (4, 2, False)])
def test_resume_after_sigterm_and_sigkill_is_bitwise_exact(tmp_path, per_call, replicas, killed):
  """An uninterrupted run vs. one preempted (SIGTERM), then killed (SIGKILL), then finished; and
  4 steps a call (lax.scan) of 2 replicas side by side, preempted, then finished."""
  fields = {"num_train_steps": 60, "checkpoint_every_steps": 12, "steps_per_call": per_call,
            "log_every_steps": per_call, "eval_every_steps": 3 * per_call, "replicas": replicas}
  steps = [f"--config.{field}={value}" for field, value in fields.items()]
  reference = tiny_config(**fields)
  loop.train_and_evaluate(reference, str(tmp_path / "reference"))

  workdir = tmp_path / "interrupted"
  proc = _run_train_py(workdir, *steps)
  _wait_for_checkpoint(workdir, 12, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=deadline(20))
  assert proc.returncode == 0, out  # preemption: checkpoint, then a clean exit
  preempted_at = max(int(d) for d in os.listdir(workdir / "checkpoints"))
  assert preempted_at < 60 and preempted_at % per_call == 0

  if killed:
    proc = _run_train_py(workdir, *steps)
    killed_after = _wait_for_checkpoint(workdir, preempted_at + 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_after < 60, "the run finished before it could be killed"

  proc = _run_train_py(workdir, *steps)
  out, _ = proc.communicate(timeout=deadline(30))
  assert proc.returncode == 0, out

  expected, got = _train_losses(tmp_path / "reference"), _train_losses(workdir)
  assert sorted(got) == list(range(per_call, 61, per_call))
  assert got == expected  # every logged per-step loss (of each replica), bitwise
  step_a, state_a = _final_state(tmp_path / "reference", reference)
  step_b, state_b = _final_state(workdir, reference)
  assert step_a == step_b == 60
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


def test_several_steps_a_call_make_the_updates_of_one_step_a_call():
  """train_steps over 4 stacked batches (lax.scan) against 4 train_step calls: the same loss at
  every step and the same parameters, to float32 rounding; and the loop's batches, stacked,
  are the one-step-a-call batches."""
  info = DatasetInfo(10, (8, 8, 3), {"train": 64}, None)
  config, one = loop.build(tiny_config(num_train_steps=8), info)
  _, four = loop.build(tiny_config(num_train_steps=8, steps_per_call=4, log_every_steps=4,
                                   eval_every_steps=4), info)
  dataset = data.open(config.data)
  singles = dataset.train_batches(one.batch_sharding, batch_size=16, seed=0)
  blocks = dataset.train_batches(one.batch_sharding, batch_size=16, seed=0, steps_per_call=4)
  state_one = one.init_state((8, 8, 3), 0)
  state_four, losses_one, losses_four = four.init_state((8, 8, 3), 0), [], []
  for _ in range(2):
    block = next(blocks)
    for k in range(4):
      batch = next(singles)
      for key in batch:
        np.testing.assert_array_equal(np.asarray(block[key][k]), np.asarray(batch[key]))
      state_one, metrics = one.train_step(state_one, batch)
      losses_one.append(float(metrics["loss"]))
    state_four, metrics = four.train_steps(state_four, block)
    losses_four += [float(x) for x in metrics["loss"]]
  assert int(state_four.step) == int(state_one.step) == 8
  np.testing.assert_allclose(losses_four, losses_one, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state_four.params, state_one.params)


def test_a_resume_at_a_step_that_steps_per_call_does_not_divide_is_refused(tmp_path):
  loop.train_and_evaluate(tiny_config(stop_after_steps=3), str(tmp_path))  # checkpoint 3
  with pytest.raises(run_config.ConfigError, match="resumes from step 3, not a multiple of "
                                                   "steps_per_call=2"):
    loop.train_and_evaluate(tiny_config(steps_per_call=2, log_every_steps=2, eval_every_steps=2),
                            str(tmp_path))


@pytest.mark.parametrize("overrides, named", [
    ({"steps_per_call": 4, "log_every_steps": 6}, "log_every_steps=6 (e.g. 4 or 8)"),
    ({"steps_per_call": 4, "num_train_steps": 10}, "num_train_steps=10 (e.g. 8 or 12)"),
    ({"steps_per_call": 2, "parallel": "pmap"}, "needs parallel='jit'"),
])
def test_steps_per_call_that_does_not_divide_an_interval_is_refused(tmp_path, overrides, named):
  with pytest.raises(run_config.ConfigError, match=re.escape(named)):
    loop.train_and_evaluate(tiny_config(**{"log_every_steps": 4, "eval_every_steps": 4,
                                           "num_train_steps": 8, **overrides}),
                            str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_jit_pmap_and_single_device_steps_agree():
  assert jax.device_count() == 8
  rng = np.random.default_rng(0)
  batches = [{"image": rng.standard_normal((16, 8, 8, 3), dtype=np.float32),
              "label": rng.integers(0, 10, 16).astype(np.int32),
              "mask": np.ones(16, bool)} for _ in range(5)]

  losses = {}
  for name, kind, devices in [("jit8", "jit", None), ("pmap8", "pmap", None),
                              ("jit1", "jit", jax.devices()[:1])]:
    config, runner = loop.build(tiny_config(parallel=kind, num_train_steps=5),
                                DatasetInfo(10, (8, 8, 3), {"train": 64}, None), devices=devices)
    state, out = runner.init_state((8, 8, 3), config.seed), []
    for batch in batches:
      state, metrics = runner.train_step(state, jax.device_put(batch, runner.batch_sharding))
      out.append(float(runner.to_host(metrics)["loss"]))
    losses[name] = np.array(out)
  assert losses["jit8"][0] > 1.0
  np.testing.assert_allclose(losses["pmap8"], losses["jit8"], rtol=1e-5)
  np.testing.assert_allclose(losses["jit1"], losses["jit8"], rtol=1e-5)


def test_non_finite_update_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  """lr 1e30 from step 5 (0.1 times 1e31 after 4 of 40 steps): the loss of step 5 is still finite
  (it is computed before the update), the updated parameters' norm is not. Nothing of step 5 may
  be saved, though it is a save step."""
  absurd = tiny_config(num_train_steps=40, checkpoint_every_steps=1, stop_after_steps=4,
                       **{"schedule.name": "piecewise", "schedule.boundaries": (0.1,),
                          "schedule.decay_factor": 1e31})
  loop.train_and_evaluate(absurd, str(tmp_path))
  _, saved = _final_state(tmp_path, absurd)

  absurd.stop_after_steps = None
  with pytest.raises(FloatingPointError, match=r"non-finite .*param_norm=inf at step 5: .* "
                     r"last good checkpoint \(step 4\).* another --workdir: lower the learning "
                     rf"rate .*--config.init_from={tmp_path} "):
    loop.train_and_evaluate(absurd, str(tmp_path))
  step, restored = _final_state(tmp_path, absurd)
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, restored, saved)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))


def test_resuming_a_non_finite_checkpoint_stops_naming_it(tmp_path, monkeypatch):
  """A checkpoint whose momentum is NaN (saved as a run without the checks saved it): the loss of
  the next step is finite, but resuming from it would only train on NaNs."""
  good = tiny_config(num_train_steps=2)
  loop.train_and_evaluate(good, str(tmp_path / "good"))
  _, state = _final_state(tmp_path / "good", good)
  nan = lambda x: np.full(x.shape, np.nan, x.dtype) if np.issubdtype(x.dtype, np.floating) else x
  diverged = state.replace(opt_state=jax.tree.map(nan, state.opt_state))
  with monkeypatch.context() as unchecked:
    unchecked.setattr(checkpoint_lib, "non_finite", lambda arrays: [], raising=False)
    ckpts = checkpoint_lib.Checkpoints(str(tmp_path / "diverged" / "checkpoints"),
                                       async_save=False)
    ckpts.save(diverged, {"model": model_meta(build(good)[1].model)})
    ckpts.close()
  with pytest.raises(FloatingPointError, match=r"checkpoints/2 holds non-finite values "
                     r"\(opt_state.*lower the learning rate"):
    loop.train_and_evaluate(tiny_config(num_train_steps=3), str(tmp_path / "diverged"))


def _files(directory):
  return [os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs]


def _largest(directory):
  return max(_files(directory), key=os.path.getsize)


def _flip_4_bytes(path):
  data = bytearray(open(path, "rb").read())
  for i in range(len(data) // 2, len(data) // 2 + 4):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
  """The newest checkpoint lost its array metadata: the run says so, sets it aside and resumes
  from the previous one, exactly (the recomputed steps have bitwise the first run's losses)."""
  config = tiny_config(num_train_steps=6, checkpoint_every_steps=2, stop_after_steps=4,
                       eval_every_steps=100)
  loop.train_and_evaluate(config, str(tmp_path))
  first = _train_losses(tmp_path)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  os.remove(tmp_path / "checkpoints" / "4" / "state" / "_METADATA")
  config.stop_after_steps = None
  loop.train_and_evaluate(config, str(tmp_path))
  warnings = [r.getMessage() for r in caplog.records if "does not read back" in r.getMessage()]
  assert len(warnings) == 1 and "checkpoints/4 does not read back" in warnings[0]
  assert os.listdir(tmp_path / "checkpoints.corrupt") == ["4"]  # moved aside, not deleted
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]  # 4 again, recomputed
  again = _train_losses(tmp_path)
  assert sorted(again) == list(range(1, 7))
  assert [again[k] for k in (3, 4)] == [first[k] for k in (3, 4)]  # resumed from step 2


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
    build(tiny_config(**overrides))
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
  model = build(tiny_config(**five_classes))[1].model
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
  initial = initial_state(config)
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
  _, runner, _ = build(config)
  target = initial_state(config)
  ckpts = checkpoint_lib.Checkpoints(os.path.join(tmp_path, "checkpoints"), async_save=False)
  state = ckpts.restore(3, target, {"model": model_meta(runner.model)})
  ema, params = state.ema_params["fc"]["kernel"], state.params["fc"]["kernel"]
  assert np.abs(ema - params).max() > 0  # an average of the trajectory, not the last point
  config.eval_checkpoint = str(tmp_path / loop.EXPORT_FILE)
  assert evaluate.evaluate_checkpoint(config, str(tmp_path))["loss"] == pytest.approx(
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
  for field, value in overrides.items():
    run_config.set_field(config, field, value)
  metrics = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["loss"]) and metrics["count"] == 8
  _, tuned = _final_state(tmp_path / "run", config)
  assert tuned.params["fc"]["kernel"].shape == (512, 2)
  for stage in ("stem", "layer1", "layer4"):
    jax.tree.map(np.testing.assert_array_equal, tuned.params[stage], published["params"][stage])
    jax.tree.map(np.testing.assert_array_equal, tuned.batch_stats[stage],
                 published["batch_stats"][stage])
  fresh = initial_state(config)
  head, fresh_head = tuned.params["fc"]["kernel"], fresh.params["fc"]["kernel"]
  assert np.any(np.asarray(head) != np.asarray(fresh_head))  # the new head trained


def test_relative_workdir_with_asynchronous_checkpoints(tmp_path, monkeypatch):
  """Orbax needs absolute paths; `--workdir runs/x` must still checkpoint (in the background)."""
  monkeypatch.chdir(tmp_path)
  loop.train_and_evaluate(tiny_config(async_checkpoints=True), "runs/relative")
  assert _final_state(tmp_path / "runs" / "relative", tiny_config())[0] == 6


# --- reliability: corrupt checkpoints, the workdir lock, sizes, start-up signals ---------------

def _small_state(step, seed):
  rng = np.random.default_rng(seed)
  array = lambda *shape: jax.numpy.asarray(rng.standard_normal(shape, np.float32))
  return TrainState(step=jax.numpy.int32(step), params={"w": array(64, 64), "b": array(64)},
                    batch_stats={"mean": array(8)}, opt_state={"trace": array(64, 64)},
                    ema_params=None, rng=jax.numpy.zeros(2, jax.numpy.uint32))


CORRUPTIONS = {
    "missing _METADATA": lambda c: os.remove(c / "state" / "_METADATA"),
    "truncated data file": lambda c: _truncate(_largest(c / "state" / "ocdbt.process_0")),
    "overwritten data file": lambda c: open(path := _largest(c / "state" / "ocdbt.process_0"),
                                            "wb").write(os.urandom(os.path.getsize(path))),
    "garbled meta/metadata": lambda c: (c / "meta" / "metadata").write_bytes(os.urandom(300)),
    "deleted manifest": lambda c: os.remove(c / "state" / "manifest.ocdbt"),
    "4 flipped bytes in each data file": lambda c: [
        _flip_4_bytes(path) for path in _files(c / "state" / "ocdbt.process_0")],
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_checkpoint_is_named_set_aside_and_skipped(tmp_path, corruption):
  meta = {"model": {"depth": 2}}
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path / "checkpoints"), async_save=False)
  for step in (1, 2):
    ckpts.save(_small_state(step, step), meta)
  ckpts.close()
  CORRUPTIONS[corruption](tmp_path / "checkpoints" / "2")

  ckpts = checkpoint_lib.Checkpoints(str(tmp_path / "checkpoints"), async_save=False)
  with pytest.raises(Exception, match=r"checkpoint .*checkpoints/2 does not read back: \w+"):
    ckpts.restore(2, _small_state(0, 0), meta)
  step, state = ckpts.restore_newest(_small_state(0, 0), meta)
  assert step == 1 and ckpts.all_steps() == [1]
  jax.tree.map(np.testing.assert_array_equal, state, _small_state(1, 1))
  assert os.listdir(tmp_path / "checkpoints.corrupt") == ["2"]
  ckpts.save(_small_state(2, 3), meta)  # step 2 can be written again
  ckpts.close()

  (tmp_path / "checkpoints" / "1" / "meta" / "metadata").write_bytes(b"\xff")
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path / "checkpoints"), async_save=False)
  CORRUPTIONS[corruption](tmp_path / "checkpoints" / "2")
  with pytest.raises(checkpoint_lib.CorruptCheckpointError,
                     match=r"(?s)no checkpoint .* reads back intact:\n  step 2 .*\n  step 1 .*"
                           r"moved aside, not deleted"):
    ckpts.restore_newest(_small_state(0, 0), meta)
  assert sorted(os.listdir(tmp_path / "checkpoints.corrupt")) == ["1", "2", "2-1"]


def test_a_second_run_on_a_workdir_stops_at_once_naming_the_holder(tmp_path, caplog):
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jresnet.training import "
                             "workdir_lock; workdir_lock.acquire(sys.argv[1]); print(flush=True); "
                             "time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE)
  try:
    holder.stdout.readline()  # the lock is held
    start = time.time()
    with pytest.raises(RuntimeError, match=rf"in use by process {holder.pid} on host "
                       rf"{socket.gethostname()}"):
      loop.train_and_evaluate(tiny_config(), str(tmp_path))
    assert time.time() - start < 10
    assert os.listdir(tmp_path) == ["train.lock"]  # nothing written, the lock left alone
  finally:
    holder.kill()
    holder.wait()
  # The holder is gone (the kernel released its lock): the next run takes the lock over, says so,
  # and gives it back when it ends.
  loop.train_and_evaluate(tiny_config(num_train_steps=1), str(tmp_path))
  assert any(f"from process {holder.pid}" in r.getMessage()
             and "without releasing" in r.getMessage() for r in caplog.records)
  assert not (tmp_path / "train.lock").exists()


@pytest.mark.parametrize("overrides, named", [
    ({"num_epochs": 0.0, "num_train_steps": None}, "num_epochs=0.0"),
    ({"num_epochs": -1.0, "num_train_steps": None}, "num_epochs=-1.0"),
    ({"num_train_steps": -5}, "num_train_steps=-5"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"batch_size": -8}, "batch_size=-8"),
    ({"eval_batch_size": 0}, "eval_batch_size=0"),
])
def test_non_positive_sizes_are_refused_before_anything_is_written(tmp_path, overrides, named):
  with pytest.raises(ValueError, match=rf"{named}.*must be positive"):
    loop.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_sigterm_during_start_up_exits_cleanly(tmp_path):
  proc = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "train.py"), "--config",
       os.path.join(REPO, "tests", "tiny_config.py"), "--workdir", str(tmp_path / "run")],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, "JRESNET_HUGE_PAGES": "0"})  # no re-exec: the handler is in place at once
  time.sleep(1.0)  # importing JAX and TensorFlow takes longer than this
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=deadline(20))
  assert proc.returncode == 0, out
  assert "SIGTERM during start-up: stopped before training" in out
  assert not os.listdir(tmp_path / "run" / "checkpoints")  # no step trained, none saved


def test_the_kept_best_checkpoint_is_the_best_evaluated_one(tmp_path):
  """Evaluations at steps 2, 4, 6 and checkpoints every 3 steps, the last one kept: the best
  evaluation (not the last here) is still among the checkpoints, and --mode=eval finds it."""
  config = tiny_config(num_train_steps=6, eval_every_steps=2, checkpoint_every_steps=3,
                       keep_checkpoints=1, seed=4)
  loop.train_and_evaluate(config, str(tmp_path))
  evals = [(r["accuracy"], r["step"]) for r in read_metrics(tmp_path / "metrics.jsonl")
           if r["split"] == "eval"]
  best_accuracy, best_step = max(evals)
  assert best_step == 2  # (what makes the case: here the first evaluation is the best)
  ckpts = checkpoint_lib.Checkpoints(str(tmp_path / "checkpoints"))
  assert ckpts.best_step() == best_step
  ckpts.close()
  config.eval_checkpoint = "best"
  assert evaluate.evaluate_checkpoint(config, str(tmp_path))["accuracy"] == best_accuracy


def test_eval_of_best_without_evaluated_checkpoints_says_so(tmp_path):
  config = tiny_config(num_train_steps=6, stop_after_steps=1, eval_checkpoint="best")
  loop.train_and_evaluate(config, str(tmp_path / "run"))  # checkpoint 1, never evaluated
  with pytest.raises(FileNotFoundError, match=r"no evaluated checkpoint .* steps 1\).*"
                                              r"eval_checkpoint=latest"):
    evaluate.evaluate_checkpoint(config, str(tmp_path / "run"))
  with pytest.raises(FileNotFoundError, match=r"no checkpoints in .*empty"):
    evaluate.evaluate_checkpoint(config, str(tmp_path / "empty"))
  assert not (tmp_path / "empty" / "checkpoints").exists()


def test_an_undecodable_eval_image_fails_before_training(tmp_path):
  from PIL import Image  # noqa: PLC0415

  for split, n in (("train", 8), ("test", 2)):
    for label in ("cat", "dog"):
      (tmp_path / "images" / split / label).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(
            tmp_path / "images" / split / label / f"{i}.png")
  bad = tmp_path / "images" / "test" / "dog" / "broken.png"
  bad.write_bytes(b"\x89PNG not really")
  config = tiny_config(**{"data.source": "folder", "data.path": str(tmp_path / "images"),
                          "data.cache_dir": "", "batch_size": 8})
  with pytest.raises(ValueError, match=rf"cannot be decoded: {bad}"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")  # not a step trained
