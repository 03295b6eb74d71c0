"""Architecture properties of jresnet's models: counts, zero-gamma, layouts, errors, summary."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jresnet
from jresnet.models import blocks
from jresnet.models.layers import conv_kernel_init

# torchvision's published numbers: parameters, and GMACs at 224x224.
TORCHVISION = {
    "ResNet18": (11_689_512, 1.814),
    "ResNet34": (21_797_672, 3.664),
    "ResNet50": (25_557_032, 4.089),
    "ResNet101": (44_549_160, 7.801),
    "ResNet152": (60_192_808, 11.514),
    "ResNeXt50_32x4d": (25_028_904, 4.230),
    "WideResNet50_2": (68_883_240, 11.398),
}


@pytest.mark.parametrize("name", TORCHVISION)
def test_parameter_counts_and_macs_equal_torchvision(name):
  params, gmacs = TORCHVISION[name]
  s = jresnet.summary(getattr(jresnet, name)(), (1, 224, 224, 3))
  assert s.total_params == params
  assert abs(s.total_macs / 1e9 - gmacs) / gmacs < 0.01


@pytest.mark.parametrize("model, millions", [
    (jresnet.CifarResNet20(), 0.27), (jresnet.CifarResNet56(), 0.85),
    (jresnet.CifarResNet110(), 1.7), (jresnet.CifarPreActResNet164(), 1.7),
    (jresnet.CifarPreActResNet1001(), 10.3)])
def test_cifar_parameter_counts_match_the_papers(model, millions):
  total = jresnet.summary(model, (1, 32, 32, 3)).total_params
  assert round(total / 1e6, 2 if millions < 1 else 1) == millions


# --- zero-gamma: at initialisation every block is (ReLU of) its shortcut ----------------------

EPS = 1e-5
CONV = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_kernel_init)
NORM = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=EPS)


def _expected_shortcut(x, params, block):
  """The shortcut recomputed by hand from the block's parameters (BN at its initial statistics)."""
  s, preact = block.strides, isinstance(block, (blocks.PreActBasicBlock,
                                                blocks.PreActBottleneckBlock))
  if x.shape[-1] == block.out_features and s == 1:
    return x
  if block.shortcut == "A":
    sub = x[:, ::s, ::s, :]
    extra = block.out_features - x.shape[-1]
    return jnp.pad(sub, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  if preact:
    x = jax.nn.relu(x / jnp.sqrt(1 + EPS))  # bn1 at init, then ReLU
  if block.shortcut == "D":
    n, h, w, c = x.shape
    x = x.reshape(n, h // s, s, w // s, s, c).mean(axis=(2, 4))
  else:
    x = x[:, ::s, ::s, :]
  y = jnp.einsum("nhwc,cd->nhwd", x, params["downsample"]["conv"]["kernel"][0, 0])
  return y if preact else y / jnp.sqrt(1 + EPS)


BLOCK_CASES = [
    # (block class, in channels, features, strides, shortcut, stride_in_1x1)
    (blocks.BasicBlock, 16, 16, 1, "B", False),
    (blocks.BasicBlock, 16, 32, 2, "B", False),
    (blocks.BasicBlock, 16, 32, 2, "A", False),
    (blocks.BasicBlock, 16, 32, 2, "D", False),
    (blocks.BottleneckBlock, 64, 16, 1, "B", False),
    (blocks.BottleneckBlock, 32, 16, 2, "B", False),
    (blocks.BottleneckBlock, 32, 16, 2, "B", True),
    (blocks.BottleneckBlock, 32, 16, 2, "D", False),
    (blocks.PreActBasicBlock, 16, 16, 1, "B", False),
    (blocks.PreActBasicBlock, 16, 32, 2, "B", False),
    (blocks.PreActBasicBlock, 16, 32, 2, "A", False),
    (blocks.PreActBottleneckBlock, 64, 16, 1, "B", False),
    (blocks.PreActBottleneckBlock, 32, 16, 2, "B", False),
]


@pytest.mark.parametrize("cls, cin, features, strides, shortcut, stride_in_1x1", BLOCK_CASES)
def test_zero_gamma_block_is_its_shortcut_at_init(cls, cin, features, strides, shortcut,
                                                  stride_in_1x1):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, cin))

  def run(zero_init_residual):
    block = cls(features, CONV, NORM, strides=strides, shortcut=shortcut,
                stride_in_1x1=stride_in_1x1, zero_init_residual=zero_init_residual)
    variables = block.init(jax.random.key(1), x)
    return block, variables["params"], block.apply(variables, x)

  block, params, y = run(True)
  expected = _expected_shortcut(x, params, block)
  if not isinstance(block, (blocks.PreActBasicBlock, blocks.PreActBottleneckBlock)):
    expected = jax.nn.relu(expected)
  assert y.shape == expected.shape
  np.testing.assert_allclose(y, expected, atol=1e-5)
  _, _, y_no_zero_gamma = run(False)  # the property comes from zero gamma, not by accident
  assert np.abs(y_no_zero_gamma - expected).max() > 1e-2


# --- layouts: scanned, unrolled and rematerialised models compute the same function ----------

@pytest.mark.parametrize("model", [jresnet.CifarResNet20(),
                                   jresnet.ResNet(depth=29, family="cifar", version="v2"),
                                   jresnet.ResNet(stage_sizes=(2, 3), block="bottleneck",
                                                  widths=(8, 16))])
def test_scanned_and_unrolled_models_agree(model):
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape),
                           variables)  # away from zero gamma, so every block matters
  scanned = model.clone(scan_blocks=True)
  scanned_vars = jresnet.to_scanned(variables)
  assert jax.tree.structure(scanned_vars) == jax.tree.structure(
      jax.eval_shape(lambda: scanned.init(jax.random.key(1), x)))
  jax.tree.map(np.testing.assert_array_equal, jresnet.to_unrolled(scanned_vars), variables)

  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)
  for other, other_vars in [(scanned, scanned_vars), (model.clone(remat=True), variables),
                            (scanned.clone(remat=True), scanned_vars)]:
    close(other.apply(other_vars, x), model.apply(variables, x))
    (y, updates), (y_ref, updates_ref) = [
        m.apply(v, x, train=True, mutable=["batch_stats"])
        for m, v in [(other, other_vars), (model, variables)]]
    close(y, y_ref)
    jax.tree.map(close, jresnet.to_unrolled(updates), updates_ref)


def test_return_features_gives_every_stage():
  model = jresnet.ResNet50()
  feats = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 224, 224, 3)), return_features=True)[0])
  assert {k: v.shape for k, v in feats.items()} == {
      "act1": (2, 112, 112, 64), "stem": (2, 56, 56, 64), "layer1": (2, 56, 56, 256),
      "layer2": (2, 28, 28, 512), "layer3": (2, 14, 14, 1024), "layer4": (2, 7, 7, 2048)}
  assert [(f["name"], f["num_chs"], f["reduction"], f["module"]) for f in model.feature_info()] == [
      ("act1", 64, 2, "act1"), ("stem", 64, 4, "maxpool"), ("layer1", 256, 4, "layer1"),
      ("layer2", 512, 8, "layer2"), ("layer3", 1024, 16, "layer3"), ("layer4", 2048, 32, "layer4")]
  cifar = jresnet.CifarResNet20()  # no strided stem: no stride-2 map
  assert [f["name"] for f in cifar.feature_info()] == ["stem", "layer1", "layer2", "layer3"]


def test_nchw_input_equals_nhwc():
  model = jresnet.ResNet(stage_sizes=(1, 1), widths=(8, 16), num_classes=4)
  x = jax.random.normal(jax.random.key(0), (2, 33, 31, 3))
  variables = jresnet.init_variables(model, 1)
  nchw = model.clone(data_format="NCHW")
  x_nchw = jnp.transpose(x, (0, 3, 1, 2))
  features = jax.jit(lambda m, v, x: m.apply(v, x, return_features=True), static_argnums=0)
  jax.tree.map(np.testing.assert_array_equal, features(nchw, variables, x_nchw),
               features(model, variables, x))
  jaxpr = str(jax.make_jaxpr(lambda v, x: nchw.apply(v, x))(variables, x_nchw))
  assert jaxpr.count("transpose") == 1  # converted once, at the entry
  with pytest.raises(ValueError, match=r"data_format must be 'NHWC' or 'NCHW'"):
    jresnet.ResNet18(data_format="channels_first")


def test_bfloat16_computation_keeps_float32_params_and_logits():
  model = jresnet.CifarResNet20(dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert model.apply(variables, x).dtype == jnp.float32
  jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x))(variables))
  assert "conv_general_dilated" in jaxpr and "bf16[2,32,32,16]" in jaxpr


def test_one_channel_inputs():
  model = jresnet.ResNet18(input_channels=1, num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 1)))
  assert variables["params"]["stem"]["conv1"]["kernel"].shape == (7, 7, 1, 64)


# --- bad input fails early and says what is valid ---------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 42}, r"depth must be one of 18, 26, 34, 50, 101, 152, 200"),
    ({"depth": 21, "family": "cifar"}, r"6n\+2 \(e\.g\. 20, 32, 44, 56, 110, 1202\)"),
    ({"depth": 111, "family": "cifar", "version": "v2"}, r"9n\+2"),
    ({"depth": 18, "groups": 32}, r"basic blocks support only groups=1"),
    ({"depth": 50, "version": "v3"}, r"version must be one of v1, v1\.5, v2"),
    ({"depth": 50, "family": "mnist"}, r"family must be one of imagenet, cifar"),
    ({"stage_sizes": (2, 0, 2)}, r"stage_sizes must be positive"),
    ({"depth": 50, "stage_sizes": (3, 4, 6, 3)}, r"exactly one of depth"),
    ({"depth": 50, "shortcut": "C"}, r"shortcut must be one of A, B, D"),
])
def test_invalid_architecture_raises_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    jresnet.ResNet(**kwargs)


def test_channels_first_input_is_rejected_with_a_hint():
  model = jresnet.ResNet18()
  with pytest.raises(ValueError, match=r"NHWC images with 3 channels"):
    model.init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)))


def test_summary_table():
  text = str(jresnet.summary(jresnet.ResNet50(num_classes=10), (1, 224, 224, 3)))
  assert "layer3 (Stage)" in text and "(1, 14, 14, 1024)" in text
  assert "Total params: 23,528,522" in text  # 25,557,032 - 2048 * 990 - 990
  assert "Total mult-adds (G): 4.087" in text


# --- init_variables: model.init's values, bit for bit, without the forward pass ---------------

@pytest.mark.parametrize("model", [
    jresnet.ResNet(stage_sizes=(1, 1), widths=(16, 32), family="cifar", num_classes=10),
    jresnet.ResNet(stage_sizes=(1,), block="bottleneck", widths=(4,), stem="deep", stem_width=4,
                   shortcut="D", version="v2", num_classes=3)],
    ids=["cifar-basic-A", "preact-bottleneck-deep-D"])
def test_init_variables_equals_model_init_bitwise(model):
  key = jax.random.key(3)
  expected = model.init(key, jnp.zeros((1, 16, 16, 3)))
  got = jresnet.init_variables(model, key)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for (path, want), have in zip(jax.tree_util.tree_leaves_with_path(expected),
                                jax.tree.leaves(got)):
    assert have.dtype == want.dtype and have.shape == want.shape, path
    np.testing.assert_array_equal(np.asarray(have).view(np.uint8),
                                  np.asarray(want).view(np.uint8), err_msg=str(path))
