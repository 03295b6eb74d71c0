"""A two-stage ResNet on 8x8 synthetic images, for the training tests: seconds per run.

Also a config file for train.py (`--config tests/tiny_config.py`), so tests can run the real
command line.
"""

from configs import default
from jresnet import data
from jresnet.training import loop, run_config


def tiny_config(**overrides):
  """A two-stage CIFAR-style ResNet on 8x8 synthetic images: seconds per run."""
  c = default.get_config()
  c.model.depth = None
  c.model.stage_sizes = (1, 1)
  c.model.widths = (8, 16)
  c.model.shortcut = "B"
  c.data.source = "synthetic"
  c.data.preprocess = "none"
  c.data.image_shape = (8, 8, 3)
  c.data.num_examples = 64
  c.data.threads = 1
  c.batch_size = 16
  c.num_train_steps = 6
  c.log_every_steps = 1
  c.eval_every_steps = 3
  c.async_checkpoints = False
  for field, value in overrides.items():
    run_config.set_field(c, field, value)
  return c


def build(config):
  """`config` resolved, its runner and its dataset's info, as train_and_evaluate builds them."""
  info = data.open(config.data).info
  resolved, runner = loop.build(config, info)
  return resolved, runner, info


def initial_state(config):
  """The initial train state of a run of `config`, one copy (as a checkpoint holds it)."""
  resolved, runner, info = build(config)
  return runner.get_state(loop.init_state(resolved, runner, info.image_shape))


def get_config():
  return tiny_config()
