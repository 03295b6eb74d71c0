"""train.py's own jitted train and eval steps on one device, for the benchmarks.

`loop.build` over configs/default.py (SGD with momentum, weight decay masked off BatchNorm and
biases, the JitMesh runner with the state donated) for a given model, on a one-device mesh, with
a synthetic batch already on the device, so that only the step is measured.
"""

import time

import jax
import jax.numpy as jnp

from configs import default
from jresnet.data import DatasetInfo
from jresnet.training import loop, parallel


def build(model, batch_size: int, image_size: int) -> parallel.Runner:
  """The default run's runner for `model`, `batch_size` and square images of `image_size`."""
  config = default.get_config()
  config.batch_size = batch_size
  config.num_train_steps = 1000
  info = DatasetInfo(model.num_classes, (image_size, image_size, 3), {"train": 1000 * batch_size},
                     None)
  return loop.build(config, info, model=model, devices=jax.devices()[:1])[1]


def initial_state(runner: parallel.Runner, image_size: int):
  return runner.init_state((image_size, image_size, 3), seed=0)


def batch(runner: parallel.Runner, size: int, image_size: int) -> dict:
  """A synthetic batch of `size` images in the runner's placement."""
  images = jax.random.normal(jax.random.key(1), (size, image_size, image_size, 3), jnp.float32)
  labels = jax.random.randint(jax.random.key(2), (size,), 0, runner.model.num_classes)
  return jax.device_put({"image": images, "label": labels, "mask": jnp.ones((size,), bool)},
                        runner.batch_sharding)


def compiled(fn, *args):
  """`fn.lower(*args).compile()` and the seconds it took."""
  start = time.perf_counter()
  executable = fn.lower(*args).compile()
  return executable, time.perf_counter() - start


def train(model, size: int, image_size: int):
  """(compile seconds, step(), sync()) for the train step on a synthetic batch."""
  runner = build(model, size, image_size)
  state, data = initial_state(runner, image_size), batch(runner, size, image_size)
  executable, seconds = compiled(runner.train_step, state, data)
  holder = [state]

  def step():
    holder[0], _ = executable(holder[0], data)

  return seconds, step, lambda: jax.block_until_ready(holder[0])


def evaluate(model, size: int, image_size: int):
  """(compile seconds, step(), sync()) for the eval step on a synthetic batch."""
  runner = build(model, size, image_size)
  variables = initial_state(runner, image_size).eval_variables()
  data = batch(runner, size, image_size)
  executable, seconds = compiled(runner.eval_step, variables, data)
  out = []

  def step():
    out[:] = [executable(variables, data)]

  return seconds, step, lambda: jax.block_until_ready(out)
