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
  _, runner, info = build(config)
  target = runner.get_state(runner.init_state(info.image_shape, config.seed))
  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"), async_save=False)
  state = checkpoints.restore(checkpoints.latest_step(), target,
                              {"model": model_meta(runner.model, runner.replicas)})
  checkpoints.close()
  return state


@pytest.fixture(scope="module")
def three(tmp_path_factory):
  """A run of 3 replicas from seed 5, and the 3 runs of seeds 5, 6, 7 one by one."""
  root = tmp_path_factory.mktemp("replicas")
  config = tiny_config(replicas=3, seed=5, **STEPS)
  final = loop.train_and_evaluate(config, str(root / "together"))
  for i in range(3):
    loop.train_and_evaluate(tiny_config(seed=5 + i, **STEPS), str(root / f"seed{5 + i}"))
  return root, config, final


def test_each_replica_is_the_run_of_its_seed(three):
  root, config, _ = three
  together = _records(root / "together", "train")
  state = _final_state(root / "together", config)
  for i in range(3):
    alone = root / f"seed{5 + i}"
    np.testing.assert_allclose([r[f"loss_r{i}"] for r in together],
                               [r["loss"] for r in _records(alone, "train")], rtol=1e-5)
    np.testing.assert_allclose([r[f"accuracy_r{i}"] for r in _records(root / "together", "eval")],
                               [r["accuracy"] for r in _records(alone, "eval")], atol=1e-6)
    single = _final_state(alone, tiny_config(seed=5 + i, **STEPS))
    jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
                 state.params, single.params)
    assert int(state.step[i]) == 6


def test_records_give_mean_std_and_the_best_replica(three, capsys):
  root, config, final = three
  accuracies = [final[f"accuracy_r{i}"] for i in range(3)]
  assert final["accuracy"] == pytest.approx(np.mean(accuracies))
  assert final["accuracy_std"] == pytest.approx(np.std(accuracies))
  assert final["best_replica"] == int(np.argmax(accuracies))
  assert final["count"] == 64
  assert (root / "together" / "curves.png").stat().st_size > 10_000
  # --mode=eval of the final checkpoint: every replica again, the same numbers.
  evaluated = evaluate.evaluate_checkpoint(config, str(root / "together"))
  assert [evaluated[f"accuracy_r{i}"] for i in range(3)] == accuracies


def test_each_replica_is_exported_and_the_best_is_the_model(three):
  root, _, final = three
  exported = [export.load(str(root / "together" / f"model.r{i}.msgpack")) for i in range(3)]
  best = export.load(str(root / "together" / "model.msgpack"))
  for a, b in zip(jax.tree.leaves(best.variables),
                  jax.tree.leaves(exported[final["best_replica"]].variables), strict=True):
    np.testing.assert_array_equal(a, b)
  alone = export.load(str(root / "seed5" / "model.msgpack"))
  for a, b in zip(jax.tree.leaves(exported[0].variables), jax.tree.leaves(alone.variables),
                  strict=True):
    assert a.shape == b.shape  # each replica exports as a single model


def test_a_checkpoint_of_another_replica_count_is_refused(three):
  root, _, _ = three
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match="model replicas: checkpoint has 3, config has 2"):
    loop.train_and_evaluate(tiny_config(replicas=2, seed=5, **{**STEPS, "num_train_steps": 9}),
                            str(root / "together"))
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match="model replicas: checkpoint has 3, config has 1"):
    loop.train_and_evaluate(tiny_config(seed=5, **{**STEPS, "num_train_steps": 9}),
                            str(root / "together"))


@pytest.mark.parametrize("overrides, message", [
    ({"parallel": "pmap"}, "replicas=2 needs parallel='jit'"),
    ({"init_from": "resnet18.tv_in1k"}, "init_from .one set of weights. is for a single run"),
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
  together = next(dataset.train_batches(runner.batch_sharding, batch_size=16, seed=3,
                                        start_step=5, replicas=2))
  for i in range(2):
    alone = next(dataset.train_batches(runner.batch_sharding, batch_size=16, seed=3 + i,
                                       start_step=5))
    for key in alone:
      np.testing.assert_array_equal(np.asarray(together[key][i]), np.asarray(alone[key]))
