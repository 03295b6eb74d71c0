"""timm's model keywords, meaning what they mean in timm: `num_classes=0`, `features_only` and
`out_indices`, `in_chans`, `reset_classifier`, `drop_rate`, `drop_path_rate`; in linen, NNX,
`create_model` and `pretrained`, against timm's own models where timm defines the behaviour.

Small models and inputs keep the file quick; timm's models are built, not downloaded (a
"pretrained" file is a random timm model saved locally).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jresnet
import jresnet.nnx
from jresnet import interop, weights
from jresnet.models import blocks
from jresnet.training import step as step_lib
from jresnet.training.state import create_train_state
from tests import torch_reference as ref

torch = pytest.importorskip("torch")

TINY = dict(stage_sizes=(1, 2), block="basic", widths=(8, 16), zero_init_residual=False)
QUICK_COMPILE = {"xla_backend_optimization_level": 0}  # the same operations, compiled sooner


@pytest.fixture(scope="module")
def timm():
  try:
    return ref.import_timm()
  except ImportError as e:
    pytest.skip(f"{e}; `make test` installs the reference libraries")


def _close(got, expected):
  """float32 rounding, relative to the scale of `expected` (a torch tensor, NCHW or (N, C))."""
  expected = expected.detach().numpy()
  if expected.ndim == 4:
    expected = expected.transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=1e-4)


# --- one spelling of "no head" ---------------------------------------------------------------

def test_num_classes_zero_is_no_head_everywhere_and_none_the_same():
  x = jnp.ones((2, 16, 16, 3))
  for spelling in (0, None):
    model = jresnet.ResNet(**TINY, num_classes=spelling)
    assert model == jresnet.ResNet(**TINY, num_classes=0) and model.num_classes == 0
    variables = jresnet.init_variables(model, 0)
    assert "fc" not in variables["params"] and model.apply(variables, x).shape == (2, 16)
    assert nnx.eval_shape(lambda spec=model: jresnet.nnx.ResNet(spec=spec, rngs=nnx.Rngs(0))).fc \
        is None
    nnx_resnet18 = nnx.eval_shape(
        lambda n=spelling: jresnet.nnx.ResNet18(num_classes=n, rngs=nnx.Rngs(0)))
    for made in (jresnet.ResNet18(num_classes=spelling),
                 jresnet.create_model("resnet18", num_classes=spelling), nnx_resnet18.spec):
      assert made.num_classes == 0 and made.left_out_modules() == ("fc",)
  assert jresnet.create_model("resnet18").num_classes == 1000
  with pytest.raises(ValueError, match="num_classes must be a class count, or 0 for no head"):
    jresnet.ResNet18(num_classes=-1)


# --- features_only and out_indices -----------------------------------------------------------

@pytest.mark.parametrize("out_indices", [None, (1, 3), (-1,), 2])
def test_features_only_equals_timms_backbone(out_indices, timm):
  """The same maps, the same `feature_info`, and the same parameters (timm keeps no stage after
  the last selected one): timm's state dict loads strictly."""
  torch.manual_seed(0)
  shape = (1, 3, 64, 64)
  keywords = {} if out_indices is None else {"out_indices": out_indices}
  torch_model = ref.randomise_batchnorm(
      timm.create_model("resnet26d", features_only=True, **keywords), shape)
  model = jresnet.create_model("resnet26d", features_only=True, data_format="NCHW", **keywords)
  timm_info = [{k: f[k] for k in ("num_chs", "reduction", "module")}
               for f in torch_model.feature_info.get_dicts()]
  assert [{k: f[k] for k in ("num_chs", "reduction", "module")}
          for f in model.feature_info()] == timm_info
  variables = interop.from_torch(torch_model.state_dict(), model)  # strict: the same tensors
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x))
  got = jax.jit(model.apply, compiler_options=QUICK_COMPILE)(variables, x)
  assert isinstance(got, list) and len(got) == len(expected) == len(timm_info)
  for ours, theirs in zip(got, expected):
    _close(ours, theirs)
  net = jresnet.nnx.from_linen(variables, model)
  for ours, theirs in zip(nnx.jit(lambda net, x: net(x))(net, x), got):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


def test_out_indices_out_of_range_or_without_features_only_are_refused():
  with pytest.raises(ValueError, match=r"index this model's 5 feature levels \(act1, layer1"):
    jresnet.ResNet18(features_only=True, out_indices=(5,))
  with pytest.raises(ValueError, match="out_indices selects the feature maps of features_only"):
    jresnet.ResNet18(out_indices=(1,))


# --- in_chans and pretrained weights ---------------------------------------------------------

@pytest.fixture(scope="module")
def timm_resnet18_file(timm, tmp_path_factory):
  """A random timm ResNet-18 saved as .safetensors: the 'pretrained' weights of these tests."""
  torch.manual_seed(0)
  torch_model = ref.randomise_batchnorm(timm.create_model("resnet18"), (2, 3, 32, 32))
  path = str(tmp_path_factory.mktemp("timm") / "resnet18.safetensors")
  from safetensors.torch import save_file  # noqa: PLC0415
  save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, path)
  return path


@pytest.mark.parametrize("in_chans", [1, 2, 5])
def test_adapt_input_conv_is_timms(in_chans, timm):
  from timm.models import adapt_input_conv  # noqa: PLC0415
  weight = np.random.default_rng(in_chans).standard_normal((8, 3, 7, 7), dtype=np.float32)
  expected = adapt_input_conv(in_chans, torch.from_numpy(weight)).numpy()
  np.testing.assert_allclose(weights.adapt_input_conv(weight, in_chans), expected, rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("in_chans, num_classes", [(1, 0), (5, 10)])
def test_pretrained_in_chans_and_head_equal_timms(in_chans, num_classes, timm,
                                                  timm_resnet18_file):
  """timm's `create_model(pretrained=True, in_chans=..., num_classes=...)` from the same file:
  the adapted first convolution and the loaded backbone give timm's outputs (no head: the pooled
  features; a new head: initialised by each side, so compared before it)."""
  torch_model = timm.create_model(
      "resnet18", pretrained=True, in_chans=in_chans, num_classes=num_classes,
      pretrained_cfg_overlay={"file": timm_resnet18_file}).eval()
  net = jresnet.pretrained(timm_resnet18_file, model=jresnet.ResNet18(), input_channels=in_chans,
                           num_classes=num_classes)
  assert net.model.input_channels == in_chans and net.model.num_classes == num_classes
  assert ("fc" in net.variables["params"]) == bool(num_classes)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, in_chans), dtype=np.float32)
  with torch.no_grad():
    pooled = torch_model.forward_head(torch_model.forward_features(
        torch.from_numpy(x.transpose(0, 3, 1, 2))), pre_logits=True)
  _close(net.model.clone(num_classes=0).apply(
      {**net.variables, "params": {k: v for k, v in net.variables["params"].items() if k != "fc"}},
      x), pooled)


def test_create_model_takes_in_chans_as_input_channels():
  assert jresnet.create_model("resnet18", in_chans=1) == jresnet.ResNet18(input_channels=1)
  with pytest.raises(ValueError, match="in_chans .* or input_channels, not both"):
    jresnet.create_model("resnet18", in_chans=1, input_channels=1)


# --- reset_classifier ------------------------------------------------------------------------

def test_reset_classifier_replaces_or_removes_the_head_as_timm(timm):
  torch.manual_seed(0)
  torch_model = ref.randomise_batchnorm(timm.create_model("resnet18"), (2, 3, 32, 32))
  model = jresnet.ResNet18()
  variables = interop.from_torch(torch_model.state_dict(), model)
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
  torch_model.reset_classifier(0)
  with torch.no_grad():
    pooled = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  headless, headless_variables = jresnet.reset_classifier(model, variables, 0)
  assert headless.num_classes == 0 and "fc" not in headless_variables["params"]
  _close(headless.apply(headless_variables, x), pooled)
  assert "fc" in variables["params"] and model.num_classes == 1000  # the inputs are unchanged

  new, new_variables = jresnet.reset_classifier(headless, headless_variables, 7, key=3)
  assert new == jresnet.ResNet18(num_classes=7)
  jax.tree.map(np.testing.assert_array_equal, new_variables["params"]["fc"],
               jresnet.init_variables(new, 3)["params"]["fc"])
  for name in ("stem", "layer4"):
    jax.tree.map(np.testing.assert_array_equal, new_variables["params"][name],
                 variables["params"][name])

  net = jresnet.nnx.from_linen(variables, model)
  net.reset_classifier(0, rngs=nnx.Rngs(0))
  assert net.fc is None and net.spec.num_classes == 0
  np.testing.assert_allclose(net(x), headless.apply(headless_variables, x), rtol=1e-6, atol=1e-6)
  net.reset_classifier(7, rngs=nnx.Rngs(0))
  assert net(x).shape == (2, 7)


# --- drop_rate and drop_path_rate ------------------------------------------------------------

def _recorded_block_rates(model: jresnet.ResNet, shape) -> list[float]:
  """The `drop_path_rate` each linen block is built with, in network order."""
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, blocks.ResidualBlock) and context.method_name == "__call__":
      rates.append(context.module.drop_path_rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return rates


def test_drop_path_rates_follow_timms_rule(timm):
  for name in ("resnet18", "resnet50"):
    torch_model = timm.create_model(name, drop_path_rate=0.2)
    expected = [block.drop_path.drop_prob if block.drop_path is not None else 0.0
                for stage in (torch_model.layer1, torch_model.layer2, torch_model.layer3,
                              torch_model.layer4) for block in stage]
    model = jresnet.create_model(name, drop_path_rate=0.2)
    np.testing.assert_allclose(sum(map(list, model.drop_path_rates()), []), expected, rtol=1e-12)
  tiny = jresnet.ResNet(**TINY, drop_path_rate=0.3, num_classes=4)
  np.testing.assert_allclose(_recorded_block_rates(tiny, (1, 16, 16, 3)), [0.0, 0.15, 0.3])
  net = jresnet.nnx.ResNet(spec=tiny, rngs=nnx.Rngs(0))
  assert net.layer1.block0.drop_path is None
  assert [net.layer2.block0.drop_path.rate, net.layer2.block1.drop_path.rate] == [0.15, 0.3]
  with pytest.raises(ValueError, match="drop_path_rate needs unrolled blocks"):
    jresnet.ResNet(**TINY, drop_path_rate=0.1, scan_blocks=True)


@pytest.mark.parametrize("version", ["v1.5", "v2"])
def test_evaluation_is_unchanged_by_drop_rates_in_linen_and_nnx(version):
  model = jresnet.ResNet(**TINY, version=version, num_classes=4)
  dropping = model.clone(drop_rate=0.5, drop_path_rate=0.5)
  variables = jresnet.init_variables(model, 0)
  assert jax.tree.structure(jresnet.init_variables(dropping, 0)) == jax.tree.structure(variables)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  expected = model.apply(variables, x)
  np.testing.assert_array_equal(dropping.apply(variables, x), expected)
  np.testing.assert_array_equal(jresnet.nnx.from_linen(variables, dropping)(x), expected)
  trained, _ = dropping.apply(variables, x, train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(0)})
  plain, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(trained, plain)  # in training they act


@pytest.mark.parametrize("block", [blocks.BasicBlock, blocks.BottleneckBlock,
                                   blocks.PreActBasicBlock, blocks.PreActBottleneckBlock])
def test_drop_path_keeps_or_drops_each_examples_branch(block):
  """In training each example's residual branch is either kept, scaled by 1 / keep_prob, or
  dropped whole: the output is the shortcut plus 0 or branch / keep_prob. (An identity
  activation and running-statistics BatchNorm make the branch readable from the outputs.)"""
  rate, features = 0.25, 4
  make = functools.partial(
      block, features=features, conv=functools.partial(nn.Conv, use_bias=False),
      norm=functools.partial(nn.BatchNorm, use_running_average=True), act=lambda y: y,
      zero_init_residual=False, deterministic=False)
  x = jax.random.normal(jax.random.key(0), (64, 4, 4, features * block.expansion))
  full = make(drop_path_rate=0.0)
  variables = full.init(jax.random.key(1), x)
  branch = full.apply(variables, x) - x
  out = make(drop_path_rate=rate).apply(variables, x, rngs={"dropout": jax.random.key(2)})
  kept = np.all(np.isclose(out - x, branch / (1 - rate), atol=1e-5), axis=(1, 2, 3))
  dropped = np.all(out == x, axis=(1, 2, 3))
  assert np.all(kept ^ dropped) and kept.any() and dropped.any()
  assert 0.1 < dropped.mean() < 0.45  # about `rate` of 64 examples


def test_drop_rate_drops_pooled_features_before_the_head():
  model = jresnet.ResNet(**TINY, num_classes=0, frozen_bn=True)
  variables = jresnet.init_variables(model, 0)
  x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  pooled = model.apply(variables, x)
  out = model.clone(drop_rate=0.5).apply(variables, x, train=True,
                                         rngs={"dropout": jax.random.key(0)})
  dropped = out == 0
  np.testing.assert_allclose(np.where(dropped, 0, out), np.where(dropped, 0, 2 * pooled),
                             rtol=1e-6)
  assert 0.3 < dropped.mean() < 0.7


def test_train_step_gives_the_model_a_dropout_rng_per_step():
  """The training step passes a 'dropout' key derived from the state's key and the step: a step
  is reproducible (resume) and consecutive steps draw different masks."""
  model = jresnet.ResNet(stage_sizes=(2,), widths=(4,), family="cifar", stem_features=4,
                         num_classes=3, drop_rate=0.5, drop_path_rate=0.5)
  cfg = step_lib.StepConfig(model=model, tx=optax.sgd(0.1), schedule=optax.constant_schedule(0.1),
                            num_classes=3)
  state = create_train_state(model, cfg.tx, (8, 8, 3), 0, False)
  batch = {"image": jax.random.normal(jax.random.key(1), (8, 8, 8, 3)),
           "label": jnp.arange(8) % 3, "mask": jnp.ones(8, bool)}
  step = jax.jit(functools.partial(step_lib.train_step, cfg=cfg), compiler_options=QUICK_COMPILE)
  _, first = step(state, batch)
  _, again = step(state, batch)
  _, later = step(state.replace(step=state.step + 1), batch)
  assert first["loss"] == again["loss"] and first["loss"] != later["loss"]
