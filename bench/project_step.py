"""The project's own jitted train and eval steps on one device, as `train.py` builds them.

SGD with momentum from `jresnet.training.optim` (weight decay masked off BatchNorm and biases),
`jresnet.training.parallel.JitMesh` over a one-device mesh (state donated), and a synthetic
batch already on the device, so that only the step is measured. Needs ml_collections (the
optimiser takes a ConfigDict); `bench.gpu` therefore builds its own step.
"""

import time

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from jresnet.training import optim, parallel
from jresnet.training import state as state_lib
from jresnet.training import step as step_lib


def sgd_config() -> ConfigDict:
  """The fields of configs/default.py that `optim.create_optimizer` reads (that module imports
  the TensorFlow input pipeline, which a step benchmark must not load)."""
  return ConfigDict(dict(optimizer=dict(name="sgd", momentum=0.9, nesterov=False,
                                        weight_decay=1e-4),
                         weight_decay_mask=True, grad_clip_norm=None, frozen_stages=None,
                         backbone_lr_scale=1.0))


def runner(model) -> tuple[parallel.JitMesh, state_lib.TrainState]:
  schedule = optax.constant_schedule(0.1)
  tx = optim.create_optimizer(sgd_config(), schedule)
  cfg = step_lib.StepConfig(model=model, tx=tx, schedule=schedule, num_classes=model.num_classes)
  return parallel.JitMesh(cfg, jax.devices()[:1]), tx


def batch(run: parallel.JitMesh, size: int, image_size: int, num_classes: int) -> dict:
  images = jax.random.normal(jax.random.key(1), (size, image_size, image_size, 3), jnp.float32)
  labels = jax.random.randint(jax.random.key(2), (size,), 0, num_classes)
  return jax.device_put({"image": images, "label": labels, "mask": jnp.ones((size,), bool)},
                        run.data)


def compiled(fn, *args):
  """`fn.lower(*args).compile()` and the seconds it took."""
  start = time.perf_counter()
  executable = fn.lower(*args).compile()
  return executable, time.perf_counter() - start


def train(model, size: int, image_size: int):
  """(compile seconds, step(), sync()) for the train step on a synthetic batch."""
  run, tx = runner(model)
  state = run.create_state(lambda: state_lib.create_train_state(
      model, tx, (image_size, image_size, 3), seed=0, use_ema=False))
  data = batch(run, size, image_size, model.num_classes)
  executable, seconds = compiled(run.train_step, state, data)
  holder = [state]

  def step():
    holder[0], _ = executable(holder[0], data)

  return seconds, step, lambda: jax.block_until_ready(holder[0])


def evaluate(model, size: int, image_size: int):
  """(compile seconds, step(), sync()) for the eval step on a synthetic batch."""
  run, tx = runner(model)
  state = run.create_state(lambda: state_lib.create_train_state(
      model, tx, (image_size, image_size, 3), seed=0, use_ema=False))
  variables, data = state.eval_variables(), batch(run, size, image_size, model.num_classes)
  executable, seconds = compiled(run.eval_step, variables, data)
  out = []

  def step():
    out[:] = [executable(variables, data)]

  return seconds, step, lambda: jax.block_until_ready(out)
