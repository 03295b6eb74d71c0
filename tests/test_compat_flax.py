"""jresnet as a drop-in for flax's examples/imagenet: BatchNorm's mode follows the mutability of
`batch_stats`, the example's padding, names and parameter layout, and its way of calling models."""

import functools
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import deadline
from flax import errors
from flax.training import train_state

import jresnet
from jresnet.compat import flax_imagenet
from jresnet.data import DatasetInfo
from jresnet.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- BatchNorm trains exactly when its statistics are mutable ----------------------------------

SMALL = jresnet.ResNet(stage_sizes=(1, 1), num_classes=10)


@pytest.fixture(scope="module")
def small_variables():
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  return SMALL.init(jax.random.key(0), images), images


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_mutable_batch_stats_train_exactly_as_train_true(small_variables):
  variables, images = small_variables
  logits, updates = SMALL.apply(variables, images, mutable=["batch_stats"])
  want_logits, want_updates = SMALL.apply(variables, images, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(logits, want_logits)
  _assert_trees_equal(updates, want_updates)
  moved = jax.tree.map(lambda new, old: bool(jnp.any(new != old)),
                       updates["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(moved)), "every BatchNorm's statistics should have moved"


def test_immutable_call_evaluates_and_explicit_train_wins(small_variables):
  variables, images = small_variables
  evaluated = SMALL.apply(variables, images, train=False)
  np.testing.assert_array_equal(SMALL.apply(variables, images), evaluated)
  logits, updates = SMALL.apply(variables, images, train=False, mutable=["batch_stats"])
  np.testing.assert_array_equal(logits, evaluated)
  _assert_trees_equal(updates["batch_stats"], variables["batch_stats"])
  with pytest.raises(errors.ModifyScopeVariableError):  # train=True needs them mutable, as ever
    SMALL.apply(variables, images, train=True)


def test_init_is_unchanged_by_the_mutability_default(small_variables):
  variables, images = small_variables
  _assert_trees_equal(variables, SMALL.init(jax.random.key(0), images, train=False))
  _assert_trees_equal(variables, jresnet.init_variables(SMALL, jax.random.key(0), (1, 32, 32, 3)))


# --- the example's architecture, names and layout ----------------------------------------------


class ExampleBlock(nn.Module):
  """The example's ResNetBlock / BottleneckResNetBlock, restated as the reference: its XLA 'SAME'
  padding, its auto-names (Conv_i, BatchNorm_i) and its projection (conv_proj, norm_proj)."""

  filters: int
  strides: int
  bottleneck: bool
  norm: Any

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False)
    strides = (self.strides, self.strides)
    if self.bottleneck:
      y = nn.relu(self.norm()(conv(self.filters, (1, 1))(x)))
      y = nn.relu(self.norm()(conv(self.filters, (3, 3), strides)(y)))
      y = self.norm(scale_init=nn.initializers.zeros)(conv(4 * self.filters, (1, 1))(y))
    else:
      y = nn.relu(self.norm()(conv(self.filters, (3, 3), strides)(x)))
      y = self.norm(scale_init=nn.initializers.zeros)(conv(self.filters, (3, 3))(y))
    if x.shape != y.shape:
      x = self.norm(name="norm_proj")(conv(y.shape[-1], (1, 1), strides, name="conv_proj")(x))
    return nn.relu(x + y)


class ExampleResNet(nn.Module):
  """The example's ResNet (v1.5): 7x7 stem padded (3, 3), 'SAME' max-pool, flat block names."""

  stage_sizes: Sequence[int]
  bottleneck: bool
  num_classes: int
  num_filters: int = 64

  @nn.compact
  def __call__(self, x, train: bool = True):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5)
    x = nn.Conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                name="conv_init")(x)
    x = nn.max_pool(nn.relu(norm(name="bn_init")(x)), (3, 3), strides=(2, 2), padding="SAME")
    block_name = "BottleneckResNetBlock" if self.bottleneck else "ResNetBlock"
    index = 0
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = ExampleBlock(self.num_filters * 2**i, 2 if i > 0 and j == 0 else 1, self.bottleneck,
                         norm, name=f"{block_name}_{index}")(x)
        index += 1
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


EXAMPLES = {  # constructor name and arguments -> the reference's
    "ResNet18": ({}, {"stage_sizes": (2, 2, 2, 2), "bottleneck": False}),
    "ResNet50": ({}, {"stage_sizes": (3, 4, 6, 3), "bottleneck": True}),
    "_ResNet1": ({"num_filters": 32}, {"stage_sizes": (1,), "bottleneck": False,
                                       "num_filters": 32}),
}


def _randomised(shapes, seed):
  """Variables of these shapes drawn at random (variances positive), so that no zero gamma hides
  a branch."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(
      rng.uniform(0.5, 1.5, x.shape) if x.ndim == 1 else rng.normal(0, 0.2, x.shape), x.dtype),
      shapes)


@pytest.fixture(scope="module", params=EXAMPLES)
def example(request):
  """(the jresnet model, the reference, its randomised variables, images of 64 px)."""
  options, reference_options = EXAMPLES[request.param]
  reference = ExampleResNet(num_classes=10, **reference_options)
  images = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
  variables = _randomised(jax.eval_shape(reference.init, jax.random.key(0), images), 3)
  model = getattr(flax_imagenet, request.param)(num_classes=10, axis_name=None, **options)
  return model, reference, variables, images


def test_example_checkpoint_gives_the_example_logits(example):
  model, reference, variables, images = example
  converted = flax_imagenet.from_example(variables, model)
  evaluate = jax.jit(lambda m, v: m.apply(v, images, train=False), static_argnums=0)
  np.testing.assert_array_equal(evaluate(model, converted), evaluate(reference, variables))
  train = jax.jit(lambda m, v: m.apply(v, images, mutable=["batch_stats"]), static_argnums=0)
  logits, updates = train(model, converted)
  want_logits, want_updates = train(reference, variables)
  np.testing.assert_array_equal(logits, want_logits)
  _assert_trees_equal(flax_imagenet.to_example(updates, model), want_updates)
  torch_padded = evaluate(model.clone(padding="torch"), converted)
  assert not np.allclose(torch_padded, evaluate(reference, variables), atol=1e-3)


def test_conversion_round_trips_exactly_both_ways(example):
  model, _, variables, _ = example
  _assert_trees_equal(flax_imagenet.to_example(flax_imagenet.from_example(variables, model),
                                               model), variables)
  ours = _randomised(jresnet.interop.variable_shapes(model), 4)
  _assert_trees_equal(flax_imagenet.from_example(flax_imagenet.to_example(ours, model), model),
                      ours)
  scanned = model.clone(scan_blocks=True)
  _assert_trees_equal(flax_imagenet.from_example(variables, scanned),
                      jresnet.to_scanned(flax_imagenet.from_example(variables, model)))


def test_what_jresnet_does_not_offer_fails_in_one_line():
  for local in (flax_imagenet.ResNet18Local, flax_imagenet._ResNet1Local):
    with pytest.raises(NotImplementedError, match="nn.ConvLocal"):
      local(num_classes=10)
  with pytest.raises(NotImplementedError, match="act="):
    flax_imagenet.ResNet18(num_classes=10, act=nn.swish)
  with pytest.raises(ValueError, match="block_cls must be"):
    flax_imagenet.ResNet(stage_sizes=[1], block_cls=nn.Dense, num_classes=10)
  with pytest.raises(ValueError, match="padding must be"):
    jresnet.ResNet(depth=18, padding="SAME")
  with pytest.raises(ValueError, match="linen model only"):
    jresnet.nnx.ResNet(18, padding="same", rngs=None)


def test_variables_that_do_not_fit_are_named():
  model = flax_imagenet._ResNet1(num_classes=10)
  params = flax_imagenet.to_example(
      _randomised(jresnet.interop.variable_shapes(model), 5), model)["params"]
  broken = {**params, "Dense_1": params["Dense_0"]}
  del broken["bn_init"]
  with pytest.raises(ValueError, match=r"missing params/bn_init/bias(.|\n)*unexpected "
                                       r"params/Dense_1/bias"):
    flax_imagenet.from_example({"params": broken}, model)
  with pytest.raises(ValueError, match="7x7 stem, projection shortcuts"):
    flax_imagenet.from_example({"params": params}, jresnet.ResNet50D())


def test_padding_passes_through_the_zoo_and_create_model():
  assert jresnet.ResNet50(padding="same").padding == "same"
  assert jresnet.create_model("resnet18", padding="same").padding == "same"


# --- called as the example's train.py calls its models -----------------------------------------

NUM_DEVICES = 2
PER_DEVICE = 4


def _create_model(*, model_cls, half_precision, **kwargs):
  """The example's model factory: half precision is float16 off TPUs."""
  dtype = jnp.float16 if half_precision else jnp.float32
  return model_cls(num_classes=10, dtype=dtype, **kwargs)


class TrainState(train_state.TrainState):
  batch_stats: Any


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _train_step(state, batch):
  """One SGD step, BatchNorm trained by making `batch_stats` mutable (no `train=`)."""
  def loss_fn(params):
    logits, model_state = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                         batch["image"], mutable=["batch_stats"])
    return _cross_entropy(logits, batch["label"]), model_state

  (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=jax.lax.pmean(grads, "batch"),
                                batch_stats=jax.lax.pmean(model_state["batch_stats"], "batch"))
  return state, jax.lax.pmean(loss, "batch"), model_state["batch_stats"]


def _eval_step(state, batch):
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          batch["image"], train=False, mutable=False)
  return logits, jax.lax.pmean(_cross_entropy(logits, batch["label"]), "batch")


@pytest.mark.parametrize("half_precision", [False, True])
def test_the_example_training_calls_train_batchnorm_across_devices(half_precision):
  model = _create_model(model_cls=flax_imagenet._ResNet1, half_precision=half_precision)
  tolerance = 1e-2 if half_precision else 1e-5
  init = jax.jit(model.init)
  variables = init({"params": jax.random.key(0)}, jnp.ones((1, 32, 32, 3), model.dtype))
  state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                            batch_stats=variables["batch_stats"],
                            tx=optax.sgd(0.05, momentum=0.9, nesterov=True))
  rng = np.random.default_rng(0)
  scales = np.linspace(0.5, 2, NUM_DEVICES * PER_DEVICE)[:, None, None, None]  # devices differ
  images = rng.normal(size=(NUM_DEVICES * PER_DEVICE, 32, 32, 3)) * scales
  batch = {"image": jnp.asarray(images, model.dtype),
           "label": jnp.asarray(rng.integers(0, 10, NUM_DEVICES * PER_DEVICE))}
  sharded = jax.tree.map(lambda x: x.reshape(NUM_DEVICES, PER_DEVICE, *x.shape[1:]), batch)
  devices = jax.local_devices()[:NUM_DEVICES]
  train_step = jax.pmap(_train_step, "batch", in_axes=(None, 0), out_axes=(None, None, 0),
                        devices=devices)
  eval_step = jax.pmap(_eval_step, "batch", in_axes=(None, 0), out_axes=(0, None),
                       devices=devices)

  before = state.batch_stats
  losses = []
  for _ in range(6):
    state, loss, per_device_stats = train_step(state, sharded)
    losses.append(float(loss))
    for stats in jax.tree.leaves(per_device_stats):  # BatchNorm itself averaged over devices
      np.testing.assert_array_equal(stats[0], stats[1])
  moved = jax.tree.map(lambda new, old: bool(jnp.any(new != old)), state.batch_stats, before)
  assert all(jax.tree.leaves(moved))
  assert losses[-1] < 0.7 * losses[0], losses

  # After one step from `before`, the statistics are those of the whole batch on one device.
  first, _, _ = train_step(state.replace(batch_stats=before), sharded)
  _, whole = model.clone(axis_name=None).apply(
      {"params": state.params, "batch_stats": before}, batch["image"], mutable=["batch_stats"])
  for got, want in zip(jax.tree.leaves(first.batch_stats), jax.tree.leaves(whole)):
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)

  logits, eval_loss = eval_step(state, sharded)
  assert logits.dtype == jnp.float32 and np.isfinite(eval_loss)
  np.testing.assert_allclose(logits.reshape(-1, 10), model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False),
      rtol=tolerance, atol=tolerance)


# --- the example's config on train.py ----------------------------------------------------------

EXAMPLE_DEFAULT_CONFIG = '''
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "ResNet50"
  config.dataset = "imagenet2012:5.*.*"
  config.learning_rate = 0.1
  config.warmup_epochs = 5.0
  config.momentum = 0.9
  config.batch_size = 128
  config.shuffle_buffer_size = 16 * 128
  config.prefetch = 10
  config.num_epochs = 100.0
  config.log_every_steps = 100
  config.cache = False
  config.half_precision = False
  config.num_train_steps = -1
  config.steps_per_eval = -1
  config.profile = True
  return config
'''
EXAMPLE_HALF_CONFIG = '''
from configs import default as default_lib


def get_config():
  config = default_lib.get_config()
  config.batch_size = 1024
  config.half_precision = True
  config.num_train_steps = 5000
  return config
'''
IMAGENET_TRAIN_EXAMPLES = 1_281_167


@pytest.fixture(scope="module")
def example_configs(tmp_path_factory):
  directory = tmp_path_factory.mktemp("example") / "configs"
  directory.mkdir()
  (directory / "default.py").write_text(EXAMPLE_DEFAULT_CONFIG)
  (directory / "half.py").write_text(EXAMPLE_HALF_CONFIG)
  return directory


def _example_schedule(example, steps_per_epoch):
  """The example's learning rate: linear warm-up from 0, then cosine decay to 0, in whole steps
  per epoch, the base rate scaled by batch / 256."""
  base = example.learning_rate * example.batch_size / 256
  warmup_steps = example.warmup_epochs * steps_per_epoch
  decay_steps = max(example.num_epochs - example.warmup_epochs, 1) * steps_per_epoch
  return optax.join_schedules([optax.linear_schedule(0.0, base, warmup_steps),
                               optax.cosine_decay_schedule(base, decay_steps)], [warmup_steps])


def _load_translated(text, path):
  path.write_text(text)
  spec = importlib.util.spec_from_file_location("translated_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name", ["default", "half"])
def test_translated_config_follows_the_example_schedule_step_for_step(example_configs, name,
                                                                      tmp_path):
  example = flax_imagenet.load_example_config(str(example_configs / f"{name}.py"))
  text, not_mapped = flax_imagenet.translate_config(example, IMAGENET_TRAIN_EXAMPLES)
  config = _load_translated(text, tmp_path / "translated.py")
  resolved, runner = loop.build(config, DatasetInfo(1000, (224, 224, 3),
                                                    {"train": IMAGENET_TRAIN_EXAMPLES}, None))
  steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // example.batch_size
  assert resolved.num_train_steps == int(steps_per_epoch * example.num_epochs)
  steps = jnp.arange(resolved.num_train_steps + 1)
  ours = jax.jit(jax.vmap(runner.step_config.schedule))(steps)
  theirs = jax.jit(jax.vmap(_example_schedule(example, steps_per_epoch)))(steps)
  assert float(jnp.max(jnp.abs(ours - theirs))) <= 1e-6
  assert runner.model.padding == "same" and runner.model.depth == 50
  assert config.precision == ("bfloat16" if example.half_precision else "float32")
  assert config.stop_after_steps == (5000 if name == "half" else None)
  assert ("fp16 loss scaling is not offered" in text) == example.half_precision
  assert any(item.startswith("profile=True") for item in not_mapped)


def test_translated_optimiser_takes_the_example_steps(example_configs, tmp_path):
  """SGD with Nesterov momentum on the gradient plus the example's L2 term on kernels."""
  example = flax_imagenet.load_example_config(str(example_configs / "default.py"))
  example.warmup_epochs = 0.0  # full steps from the first, so that the L2 term counts
  config = _load_translated(flax_imagenet.translate_config(example, 256 * 1000)[0],
                            tmp_path / "translated.py")
  _, runner = loop.build(config, DatasetInfo(10, (32, 32, 3), {"train": 256 * 1000}, None))
  theirs_tx = optax.sgd(_example_schedule(example, 2000), momentum=0.9, nesterov=True)
  params = _randomised(jresnet.interop.variable_shapes(SMALL)["params"], 6)
  ours, theirs = runner.step_config.tx.init(params), theirs_tx.init(params)

  @jax.jit
  def both_updates(grads, ours, theirs):
    l2 = jax.tree.map(lambda g, p: g + 1e-4 * p if p.ndim > 1 else g, grads, params)
    return (runner.step_config.tx.update(grads, ours, params),
            theirs_tx.update(l2, theirs, params))

  for step in range(3):
    (update, ours), (want, theirs) = both_updates(_randomised(params, 7 + step), ours, theirs)
    for a, b in zip(jax.tree.leaves(update), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_train_py_names_the_translation_for_an_example_config(example_configs, tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"), "--config",
       str(example_configs / "default.py"), "--workdir", str(tmp_path / "run")],
      cwd=str(tmp_path), capture_output=True, text=True, timeout=deadline(20),
      env={**os.environ, "JRESNET_HUGE_PAGES": "0",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == flax_imagenet.translation_hint(
      str(example_configs / "default.py"))
  assert not (tmp_path / "run").exists()


def test_translate_config_command(example_configs):
  out = subprocess.run(
      [sys.executable, "-m", "jresnet.compat.flax_imagenet", "translate-config",
       str(example_configs / "half.py"), "--train-examples", str(IMAGENET_TRAIN_EXAMPLES)],
      capture_output=True, text=True, timeout=deadline(20),
      env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
  assert out.returncode == 0, out.stderr
  assert "c.stop_after_steps = 5000" in out.stdout
  assert "not carried over: profile=True" in out.stderr
