"""The Flax NNX ResNets against the linen ones: the same function, training and weights.

Tiny architectures that together take every option (versions, blocks, shortcuts, stems, widths,
groups, output stride, features, frozen BatchNorm, dtype, remat) keep the file quick.
"""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import deadline
from flax import nnx, traverse_util

import jresnet
import jresnet.nnx
from jresnet.nnx import training
from jresnet.training import step as linen_step
from jresnet.training.state import TrainState

CASES = {
    # name: (linen model, input shape NHWC)
    "cifar-v1.5-basic-A": (jresnet.ResNet(depth=8, family="cifar", num_classes=10),
                           (8, 16, 16, 3)),
    "cifar-v2-basic-B-width_multiplier": (
        jresnet.ResNet(depth=8, family="cifar", version="v2", block="basic",
                       width_multiplier=0.5, num_classes=10), (8, 16, 16, 3)),
    "imagenet-v1-bottleneck-groups-1channel": (
        jresnet.ResNet(stage_sizes=(1, 1), block="bottleneck", version="v1", widths=(8, 16),
                       groups=2, width_per_group=32, input_channels=1, num_classes=5),
        (8, 32, 32, 1)),
    "deep-D-bottleneck-os8": (
        jresnet.ResNet(stage_sizes=(1, 1, 1), block="bottleneck", stem="deep", stem_width=8,
                       shortcut="D", widths=(8, 16, 24), output_stride=8, num_classes=5),
        (8, 32, 32, 3)),
    "v2-bottleneck-headless": (
        jresnet.ResNet(stage_sizes=(1, 2), block="bottleneck", version="v2", widths=(8, 16),
                       num_classes=None, zero_init_residual=False),
        (8, 32, 32, 3)),
    "cifar-frozen_bn-bf16-remat": (
        jresnet.ResNet(depth=8, family="cifar", frozen_bn=True, dtype=jnp.bfloat16, remat=True,
                       num_classes=10), (8, 16, 16, 3)),
}


# The linen references and the pure step compile at XLA's lowest backend (LLVM) optimisation
# level: the same operations in half the compile time, which is most of this file's time.
REFERENCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _random_variables(model: jresnet.ResNet, shape, seed: int = 0) -> dict:
  """Random variables of the model's shapes (numpy; no init to compile): He-scaled kernels,
  BatchNorm affine parameters and statistics away from their initial values, so that no branch
  is zeroed by zero-gamma and eval and train modes differ."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape[1:]))))
  rng = np.random.default_rng(seed)
  draw = {"kernel": lambda n: rng.normal(0, np.sqrt(2 / np.prod(n[:-1])), n),
          "scale": lambda n: rng.uniform(0.5, 1.0, n), "bias": lambda n: rng.normal(0, 0.1, n),
          "mean": lambda n: rng.normal(0, 0.1, n), "var": lambda n: rng.uniform(0.75, 1.25, n)}
  flat = {path: draw[path[-1]](spec.shape).astype(np.float32)
          for path, spec in traverse_util.flatten_dict(shapes).items()}
  return traverse_util.unflatten_dict(flat)


def _tolerance(model: jresnet.ResNet) -> dict:
  # The interop tests' float32 tolerance, also for bfloat16 computation: both models compute the
  # same operations in the same precisions.
  return {"atol": 1e-4, "rtol": 0}


@pytest.mark.parametrize("name", CASES)
def test_eval_outputs_equal_linen_and_round_trip_is_exact(name):
  model, shape = CASES[name]
  variables = _random_variables(model, shape)
  x = jax.random.normal(jax.random.key(1), shape)
  run_linen = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, return_features=True)),
                      compiler_options=REFERENCE_COMPILER_OPTIONS)
  logits, features = run_linen(variables, x)

  net = jresnet.nnx.from_linen(variables, model)  # loaded weights come in eval mode
  assert isinstance(net, jresnet.nnx.ResNet) and net.spec == model
  got_logits, got_features = nnx.jit(lambda m, x: (m(x), m(x, return_features=True)))(net, x)
  assert got_logits.dtype == jnp.float32
  assert np.abs(logits).max() > 0.1  # not a comparison of near-zero numbers
  np.testing.assert_allclose(got_logits, logits, **_tolerance(model))
  info = net.feature_info()
  assert got_features.keys() == features.keys() == {f["name"] for f in info}
  for f in info:
    assert got_features[f["name"]].shape == (shape[0], shape[1] // f["stride"],
                                             shape[2] // f["stride"], f["channels"])
    np.testing.assert_allclose(np.asarray(got_features[f["name"]], np.float32),
                               np.asarray(features[f["name"]], np.float32), **_tolerance(model))

  back = jresnet.nnx.to_linen(net)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, back, variables)


def _batches(shape, num_classes, n=3):
  rng = np.random.default_rng(2)
  return [{"image": rng.standard_normal(shape, dtype=np.float32),
           "label": rng.integers(0, num_classes, shape[0]).astype(np.int32)} for _ in range(n)]


TX = optax.sgd(0.1, momentum=0.9)


# Compiling a train step is what costs here: a plain model with the `nnx.jit` step, and the one
# with frozen BatchNorm, bfloat16 and remat (the options that change training) with the pure
# `jax.jit` step; the other architectures share these steps' code.
@pytest.mark.parametrize("name, form", [("cifar-v1.5-basic-A", "nnx.jit"),
                                        ("cifar-frozen_bn-bf16-remat", "jax.jit")])
def test_three_train_steps_equal_linen(name, form):
  """The project's linen train step and an NNX one, from the same weights and batches: the
  same losses, BatchNorm statistics and parameters."""
  model, shape = CASES[name]
  variables = _random_variables(model, shape)
  batches = _batches(shape, model.num_classes)

  cfg = linen_step.StepConfig(model=model, tx=TX, schedule=optax.constant_schedule(0.1),
                              num_classes=model.num_classes)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                     batch_stats=variables["batch_stats"], opt_state=TX.init(variables["params"]),
                     ema_params=None, rng=jnp.zeros((2,), jnp.uint32))
  linen_train = jax.jit(functools.partial(linen_step.train_step, cfg=cfg),
                        compiler_options=REFERENCE_COMPILER_OPTIONS)
  linen_losses = []
  for batch in batches:
    state, metrics = linen_train(state, batch)
    linen_losses.append(float(metrics["loss"]))

  net = jresnet.nnx.from_linen(variables, model)
  optimizer = nnx.Optimizer(net, TX, wrt=nnx.Param)
  net.train()
  if form == "nnx.jit":
    losses = [float(training.train_step(net, optimizer, b)["loss"]) for b in batches]
  else:
    graphdef, nnx_state = nnx.split((net, optimizer))
    pure_step = training.pure_train_step.lower(graphdef, nnx_state, batches[0]).compile(
        compiler_options=REFERENCE_COMPILER_OPTIONS)
    losses = []
    for batch in batches:
      nnx_state, metrics = pure_step(nnx_state, batch)
      losses.append(float(metrics["loss"]))
    nnx.update((net, optimizer), nnx_state)

  # fp32 tolerance; bfloat16 gradients differ in their last bits with XLA's fusion choices.
  tolerance = 1e-3 if model.dtype == jnp.bfloat16 else 1e-5
  np.testing.assert_allclose(losses, linen_losses, rtol=tolerance)
  got = jresnet.nnx.to_linen(net)
  close = functools.partial(np.testing.assert_allclose, atol=tolerance)
  jax.tree.map(close, got["batch_stats"], state.batch_stats)
  jax.tree.map(close, got["params"], state.params)
  if model.frozen_bn:  # frozen BatchNorm ignores train(): its statistics stay as loaded
    jax.tree.map(np.testing.assert_array_equal, got["batch_stats"], variables["batch_stats"])
  else:
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max() > 1e-4,
                                            got["batch_stats"], variables["batch_stats"])))


def test_orbax_checkpoint_of_nnx_state_restores_exactly(tmp_path):
  import orbax.checkpoint as ocp  # noqa: PLC0415

  model, shape = CASES["cifar-v1.5-basic-A"]
  net = jresnet.nnx.from_linen(_random_variables(model, shape), model)
  optimizer = nnx.Optimizer(net, TX, wrt=nnx.Param)
  net.train()
  training.train_step(net, optimizer, _batches(shape, 10, n=1)[0])  # non-initial state
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "state", nnx.state(net))
    checkpointer.wait_until_finished()
    fresh = jresnet.nnx.abstract_model(model)
    restored = checkpointer.restore(tmp_path / "state", nnx.state(fresh))
  nnx.update(fresh, restored)
  jax.tree.map(np.testing.assert_array_equal, jresnet.nnx.to_linen(fresh),
               jresnet.nnx.to_linen(net))
  batch = _batches(shape, 10, n=1)[0]
  net.eval()
  fresh.eval()
  assert training.eval_step(fresh, batch) == training.eval_step(net, batch)


def test_pretrained_file_loads_into_nnx(tmp_path):
  """`jresnet.pretrained` on a local safetensors file, then into NNX: the same weights."""
  model, shape = CASES["cifar-v1.5-basic-A"]
  variables = _random_variables(model, shape)
  jresnet.weights.save_safetensors(str(tmp_path / "w.safetensors"), variables, model)
  net = jresnet.pretrained(str(tmp_path / "w.safetensors"), model=model)
  jax.tree.map(np.testing.assert_array_equal,
               jresnet.nnx.to_linen(jresnet.nnx.from_linen(net.variables, net.model)), variables)


def test_torchvision_state_dict_into_nnx_and_back():
  torch = pytest.importorskip("torch")
  from tests import torch_reference as ref  # noqa: PLC0415
  try:
    torchvision = ref.import_torchvision()
  except ImportError as e:
    pytest.skip(f"{e}; `make test` installs the reference libraries")
  torch.manual_seed(0)
  shape = (2, 3, 32, 32)
  torch_model = ref.randomise_batchnorm(torchvision.models.resnet.ResNet(
      torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10), shape)
  state_dict = torch_model.state_dict()
  net = jresnet.nnx.from_torch(state_dict, jresnet.ResNet(stage_sizes=(1, 1, 1, 1),
                                                          num_classes=10))
  net.eval()
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x)).numpy()
  got = nnx.jit(lambda m, x: m(x))(net, x.transpose(0, 2, 3, 1))
  scale = np.abs(expected).max()  # as tests/test_interop.py: 1e-4 relative to the largest logit
  assert scale > 0.5
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4 * max(1.0, scale), rtol=0)
  back = jresnet.nnx.to_torch(net, as_tensors=True)
  assert back.keys() == state_dict.keys()
  assert all(torch.equal(back[k], v) for k, v in state_dict.items()
             if not k.endswith("num_batches_tracked"))


def test_named_constructors_mirror_the_linen_zoo():
  assert jresnet.nnx.zoo.NAMES == jresnet.models.zoo.__all__ and len(jresnet.nnx.zoo.NAMES) > 20
  net = nnx.eval_shape(lambda: jresnet.nnx.ResNeXt50_32x4d(rngs=nnx.Rngs(0)))
  assert net.spec == jresnet.ResNeXt50_32x4d()
  assert sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.Param))) == 25_028_904


def test_bad_input_is_named():
  with pytest.raises(ValueError, match=r"depth must be one of 18, 26"):
    jresnet.nnx.ResNet(depth=42, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"scan_blocks=True is available in the linen model only"):
    jresnet.nnx.CifarResNet20(scan_blocks=True, rngs=nnx.Rngs(0))
  small = jresnet.ResNet(stage_sizes=(1, 1), widths=(8, 16), num_classes=10)
  variables = _random_variables(small, (1, 32, 32, 3))
  with pytest.raises(ValueError, match=r"(?s)missing params/layer1/block1/conv1/kernel.*"
                                       r"params/layer2/block0/conv1/kernel: the variables have "
                                       r"shape \(3, 3, 8, 16\), the model needs \(3, 3, 8, 8\)"):
    jresnet.nnx.from_linen(variables, small.clone(stage_sizes=(2, 1), widths=(8, 8)))


def test_scanned_linen_variables_load_into_the_unrolled_nnx_model():
  model, shape = CASES["cifar-v2-basic-B-width_multiplier"]
  model = model.clone(depth=14)  # two blocks per stage: something to scan
  variables = _random_variables(model, shape)
  scanned = jresnet.to_scanned(variables)
  net = jresnet.nnx.from_linen(scanned, model.clone(scan_blocks=True))
  jax.tree.map(np.testing.assert_array_equal, jresnet.nnx.to_linen(net), variables)


def test_import_jresnet_nnx_imports_no_tensorflow():
  code = ("import sys; sys.modules['tensorflow'] = sys.modules['ml_collections'] = None; "
          "import jresnet; assert 'jresnet.nnx' not in sys.modules; "
          "from jresnet.nnx import training; assert jresnet.nnx.training is training; "
          "bad = [m for m in sys.modules if m.startswith(('tensorflow.', 'jresnet.data', "
          "'jresnet.training'))]; assert not bad, bad")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=deadline(20))
  assert run.returncode == 0, run.stderr[-2000:]


def test_summary_of_an_nnx_model_counts_its_own_parameters():
  """`jresnet.summary` takes an NNX model (through its linen spec): the table is the linen one,
  and its parameter count is the NNX model's own count of `nnx.Param` elements."""
  model, shape = CASES["cifar-v2-basic-B-width_multiplier"]
  net = jresnet.nnx.abstract_model(model)
  table = jresnet.summary(net, shape)
  assert str(table) == str(jresnet.summary(model, shape))
  assert table.total_params == sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
  with pytest.raises(TypeError, match="Linear"):
    jresnet.summary(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), (1, 2))
