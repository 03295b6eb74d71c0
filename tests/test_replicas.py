"""Several independent runs in one program (config.replicas): each replica is the run of its own
seed, one checkpoint holds them all, and the records and exports say which is which."""

import os

import jax
import numpy as np
import pytest
from tiny_config import build, tiny_config

from jresnet import data, export
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import evaluate, loop, run_config
from jresnet.training.model import model_meta
from jresnet.training.records import read_metrics

STEPS = {"num_train_steps": 6, "eval_every_steps": 3}


def _records(workdir, split):
  return [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def _final_state(workdir, config):
  resolved, runner, info = build(config)
  target = runner.get_state(loop.init_state(resolved, runner, info.image_shape))
  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"), async_save=False)
  state = checkpoints.restore(checkpoints.latest_step(), target,
                              {"model": model_meta(runner.model, runner.replicas)})
  checkpoints.close()
  return state


def test_three_replicas_in_one_program(tmp_path):
  """A run of 3 replicas from seed 5 against the 3 runs of seeds 5, 6, 7 one by one: each
  replica is the run of its seed; the records give mean, std and the best; --mode=eval gives the
  same numbers; every replica is exported and the best is the model; a checkpoint of 3 replicas
  is refused to a run of 2 or 1. (One test: xdist would train a module fixture on each worker.)"""
  config = tiny_config(replicas=3, seed=5, **STEPS)
  final = loop.train_and_evaluate(config, str(tmp_path / "together"))
  together = _records(tmp_path / "together", "train")
  state = _final_state(tmp_path / "together", config)
  for i in range(3):
    alone = tmp_path / f"seed{5 + i}"
    loop.train_and_evaluate(tiny_config(seed=5 + i, **STEPS), str(alone))
    np.testing.assert_allclose([r[f"loss_r{i}"] for r in together],
                               [r["loss"] for r in _records(alone, "train")], rtol=1e-5)
    np.testing.assert_allclose([r[f"accuracy_r{i}"] for r in _records(tmp_path / "together",
                                                                      "eval")],
                               [r["accuracy"] for r in _records(alone, "eval")], atol=1e-6)
    single = _final_state(alone, tiny_config(seed=5 + i, **STEPS))
    jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
                 state.params, single.params)
    assert int(state.step[i]) == 6

  accuracies = [final[f"accuracy_r{i}"] for i in range(3)]
  assert final["accuracy"] == pytest.approx(np.mean(accuracies))
  assert final["accuracy_std"] == pytest.approx(np.std(accuracies))
  assert final["best_replica"] == int(np.argmax(accuracies))
  assert final["count"] == 64
  assert (tmp_path / "together" / "curves.png").stat().st_size > 10_000
  evaluated = evaluate.evaluate_checkpoint(config, str(tmp_path / "together"))
  assert [evaluated[f"accuracy_r{i}"] for i in range(3)] == accuracies

  exported = [export.load(str(tmp_path / "together" / f"model.r{i}.msgpack")) for i in range(3)]
  best = export.load(str(tmp_path / "together" / "model.msgpack"))
  for a, b in zip(jax.tree.leaves(best.variables),
                  jax.tree.leaves(exported[final["best_replica"]].variables), strict=True):
    np.testing.assert_array_equal(a, b)
  alone = export.load(str(tmp_path / "seed5" / "model.msgpack"))
  for a, b in zip(jax.tree.leaves(exported[0].variables), jax.tree.leaves(alone.variables),
                  strict=True):
    assert a.shape == b.shape  # each replica exports as a single model

  for replicas, named in ((2, "config has 2"), (1, "config has 1")):
    with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                       match=f"model replicas: checkpoint has 3, {named}"):
      loop.train_and_evaluate(tiny_config(replicas=replicas, seed=5,
                                          **{**STEPS, "num_train_steps": 9}),
                              str(tmp_path / "together"))


@pytest.mark.parametrize("overrides, message", [
    ({"parallel": "pmap"}, "replicas=2 need parallel='jit'"),
    ({"init_from": "resnet18.tv_in1k"}, "start every replica afresh; init_from"),
    ({"data.cache": False, "data.source": "folder"}, "needs the train split held in memory"),
])
def test_replicas_that_cannot_run_are_refused_before_training(tmp_path, overrides, message):
  if overrides.get("data.source") == "folder":
    from PIL import Image  # noqa: PLC0415

    for cls in ("a", "b"):
      os.makedirs(tmp_path / "images" / "train" / cls)
      for i in range(4):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "images" / "train" / cls /
                                                      f"{i}.png")
    overrides = {**overrides, "data.path": str(tmp_path / "images"), "data.eval_split": "train",
                 "data.cache_dir": ""}
  with pytest.raises((run_config.ConfigError, ValueError), match=message):
    loop.train_and_evaluate(tiny_config(replicas=2, **STEPS, **overrides), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "3")


def test_the_device_path_gives_replica_i_the_batches_of_seed_plus_i():
  cfg = tiny_config().data
  dataset = data.open(cfg)
  _, runner, _ = build(tiny_config())
  together = next(dataset.train_batches(runner.batch_sharding, batch_size=16, seed=[3, 4],
                                        start_step=5))
  for i in range(2):
    alone = next(dataset.train_batches(runner.batch_sharding, batch_size=16, seed=3 + i,
                                       start_step=5))
    for key in alone:
      np.testing.assert_array_equal(np.asarray(together[key][i]), np.asarray(alone[key]))


SWEEP = {"optimizer.learning_rate": [0.05, 0.1, 0.2], "optimizer.weight_decay": [0.0, 1e-4, 1e-3],
         "label_smoothing": [0.0, 0.1, 0.2]}


def test_a_sweep_trains_each_point_as_its_own_run(tmp_path):
  """A 3-point sweep of the learning rate, weight decay and label smoothing together in one
  program, against the 3 runs at those values."""
  import json  # noqa: PLC0415

  swept = tiny_config(seed=5, sweep=json.dumps(SWEEP), **STEPS)
  loop.train_and_evaluate(swept, str(tmp_path / "sweep"))
  together = _records(tmp_path / "sweep", "train")
  state = _final_state(tmp_path / "sweep", swept)
  for i in range(3):
    point = {field: values[i] for field, values in SWEEP.items()}
    alone = tiny_config(seed=5, **STEPS, **point)
    loop.train_and_evaluate(alone, str(tmp_path / f"point{i}"))
    records = _records(tmp_path / f"point{i}", "train")
    np.testing.assert_allclose([r[f"loss_r{i}"] for r in together], [r["loss"] for r in records],
                               rtol=1e-5)
    np.testing.assert_allclose([r[f"learning_rate_r{i}"] for r in together],
                               [r["learning_rate"] for r in records], rtol=1e-6)
    single = _final_state(tmp_path / f"point{i}", alone)
    jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
                 state.params, single.params)


def test_a_diverging_point_is_frozen_and_the_others_finish(tmp_path, capsys):
  config = tiny_config(seed=5, sweep='{"optimizer.learning_rate": [0.1, 1e30]}', **STEPS)
  final = loop.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  assert "replica 1 (seed 5, optimizer.learning_rate=1e+30): non-finite update at step 1" in out
  assert out.count("replica 1 (seed 5") == 1  # reported once
  assert "frozen (non-finite): replica 1" in out
  assert final["frozen_r1"] == 1 and final["accuracy_r1"] is None
  assert final["accuracy"] == final["accuracy_r0"] and final["best_replica"] == 0
  assert final["accuracy_std"] == 0.0
  state = _final_state(tmp_path, config)
  assert state.frozen_at.tolist() == [-1, 1] and state.step.tolist() == [6, 6]
  resolved, runner, info = build(config)  # the frozen replica kept its initial weights
  start = runner.get_state(loop.init_state(resolved, runner, info.image_shape))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1], b[1]), state.params, start.params)
  for row in _records(tmp_path, "train"):
    assert row["loss_r1"] is None and row["frozen_r1"] == 1


def test_when_every_replica_diverges_the_run_stops(tmp_path):
  with pytest.raises(loop.NonFiniteUpdateError, match="every replica's update went non-finite"):
    loop.train_and_evaluate(tiny_config(sweep='{"optimizer.learning_rate": [1e30, 1e31]}',
                                        **STEPS), str(tmp_path))


@pytest.mark.parametrize("sweep, message", [
    ('{"optimizer.momentum": [0.8, 0.9]}', "optimizer.momentum cannot be swept"),
    ('{"optimizer.learning_rate": [0.1, 0.2], "label_smoothing": [0.1]}', "as many values"),
    ('{"label_smoothing": [0.1, 1.5]}', r"label_smoothing=1.5 must be in \[0, 1\)"),
    ("[0.1, 0.2]", "must map fields to lists of numbers"),
    ("lr=0.1", "is not JSON"),
])
def test_a_sweep_that_cannot_run_is_refused(tmp_path, sweep, message):
  with pytest.raises(run_config.ConfigError, match=message):
    loop.train_and_evaluate(tiny_config(sweep=sweep, **STEPS), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
