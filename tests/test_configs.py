"""Every config under configs/ builds: model, schedule and optimiser, and documents its command."""

import importlib
import pathlib

import jax
import pytest

from jresnet.training import optim
from jresnet.training.model import build_model

CONFIGS = sorted(p.stem for p in pathlib.Path("configs").glob("*.py")
                 if p.stem not in ("__init__", "default"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_documents_its_command(name):
  module = importlib.import_module(f"configs.{name}")
  assert f"python train.py --config configs/{name}.py" in module.__doc__
  config = module.get_config()
  config.precision = "float32"
  model = build_model(config, num_classes=10, input_channels=3)
  assert model.architecture  # valid depth and stages
  schedule = optim.create_schedule(config, 1000, 100.0)
  tx = optim.create_optimizer(config, schedule)
  assert 0 < float(schedule(500)) <= optim.base_learning_rate(config)
  params = {"conv": {"kernel": jax.numpy.ones((3, 3, 1, 1))}, "bn": {"scale": jax.numpy.ones(1)}}
  tx.init(params)


def test_goyal_learning_rate_scales_with_batch():
  config = importlib.import_module("configs.imagenet_resnet50").get_config()
  assert optim.base_learning_rate(config) == pytest.approx(0.4)  # 0.1 x 1024 / 256
  schedule = optim.create_schedule(config, 9000, 100.0)  # 90 "epochs" of 100 steps
  assert float(schedule(0)) == 0.0 and float(schedule(500)) == pytest.approx(0.4)
  assert float(schedule(3100)) == pytest.approx(0.04) and float(schedule(8500)) == pytest.approx(
      0.0004)
