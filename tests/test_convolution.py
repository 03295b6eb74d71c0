"""The CPU convolution (`jresnet.models.convolution`) against `lax.conv_general_dilated`: values,
input gradients and kernel gradients agree within float32 tolerance for every geometry ResNets
use, with and without batch chunking; unsupported cases are lax itself; a scanned ResNet's gradient
compiles to convolutions in the layout XLA:CPU's fast kernels need. The XLA:CPU compiler options
of the steps change no gradient."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jresnet
from jresnet.models import convolution
from jresnet.training import parallel

NHWC = ("NHWC", "HWIO", "NHWC")
# (batch, size, in, out, kernel, stride, padding, dilation)
GEOMETRIES = {
    "3x3": (4, 9, 5, 6, 3, 1, ((1, 1), (1, 1)), 1),
    "3x3 stride 2": (4, 9, 5, 6, 3, 2, ((1, 1), (1, 1)), 1),
    "1x1": (4, 8, 5, 6, 1, 1, ((0, 0), (0, 0)), 1),
    "1x1 stride 2": (4, 9, 5, 6, 1, 2, ((0, 0), (0, 0)), 1),
    "7x7 stride 2 stem": (2, 17, 3, 8, 7, 2, ((3, 3), (3, 3)), 1),
    "3x3 dilation 2": (3, 10, 4, 5, 3, 1, ((2, 2), (2, 2)), 2),
    "SAME stride 2": (3, 10, 4, 5, 3, 2, "SAME", 1),
}


def value_and_grads(conv, x, w, stride, padding, dilation):
  def f(x, w):
    return conv(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                dimension_numbers=NHWC)
  y, vjp = jax.vjp(f, x, w)
  cotangent = jax.random.normal(jax.random.key(3), y.shape, y.dtype)
  return (y, *vjp(cotangent))


def assert_close(actual, expected, rtol=2e-5):
  for a, e in zip(actual, expected, strict=True):
    assert a.shape == e.shape and a.dtype == e.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32),
                               rtol=rtol, atol=rtol * float(jnp.abs(e).max()))


@pytest.mark.parametrize("chunk_bytes", [convolution.CHUNK_BYTES, 1], ids=["one chunk", "chunked"])
@pytest.mark.parametrize("name", GEOMETRIES)
def test_matches_lax(name, chunk_bytes, monkeypatch):
  monkeypatch.setattr(convolution, "CHUNK_BYTES", chunk_bytes)
  n, size, c, o, k, stride, padding, dilation = GEOMETRIES[name]
  x = jax.random.normal(jax.random.key(0), (n, size, size, c))
  w = jax.random.normal(jax.random.key(1), (k, k, c, o))
  args = (x, w, stride, padding, dilation)
  expected = jax.jit(value_and_grads, static_argnums=(0, 3, 4, 5))(lax.conv_general_dilated,
                                                                    *args)
  actual = jax.jit(value_and_grads, static_argnums=(0, 3, 4, 5))(
      convolution.conv_general_dilated, *args)
  assert_close(actual, expected)


def test_bfloat16_within_bfloat16_tolerance():
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 16), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16), jnp.bfloat16)
  args = (x, w, 1, ((1, 1), (1, 1)), 1)
  expected = value_and_grads(lax.conv_general_dilated, *args)
  assert_close(value_and_grads(convolution.conv_general_dilated, *args), expected, rtol=2e-2)


def test_chunks_divide_the_batch():
  assert convolution.batch_chunk(128, convolution.CHUNK_BYTES // 5) == 4
  assert convolution.batch_chunk(6, convolution.CHUNK_BYTES // 4) == 3
  assert convolution.batch_chunk(7, convolution.CHUNK_BYTES) == 1
  assert convolution.batch_chunk(7, 10 * convolution.CHUNK_BYTES) == 1


def test_grouped_convolution_is_lax_itself():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
  w = jax.random.normal(jax.random.key(1), (3, 3, 2, 8))
  kwargs = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=NHWC,
                feature_group_count=4)
  ours = jax.make_jaxpr(lambda x, w: convolution.conv_general_dilated(x, w, **kwargs))(x, w)
  assert "platform_index" not in str(ours) and "custom_vjp" not in str(ours)


def _resnet_loss(model, variables, x):
  """A train-mode loss of the parameters that reaches every convolution."""
  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return jnp.sum(logits ** 2)
  return loss


def _resnet_gradient(model, variables, x, compiler_options=None):
  loss = _resnet_loss(model, variables, x)
  return jax.jit(jax.grad(loss), compiler_options=compiler_options)(variables["params"])


def test_scanned_gradients_compile_to_canonical_convolutions():
  """Inside a scanned stage (a while loop) XLA:CPU leaves convolutions in whatever layout they
  come in, and any but NHWC/HWIO runs on its generic path, 30x slower: every convolution of a
  scanned ResNet's gradient must already be in that layout."""
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  model = jresnet.ResNet(depth=20, family="cifar", num_classes=10, scan_blocks=True)
  variables = model.init(jax.random.key(1), x)
  hlo = jax.jit(jax.grad(_resnet_loss(model, variables, x))).lower(
      variables["params"]).compile().as_text()
  labels = re.findall(r" convolution\(.*dim_labels=([^,]+)", hlo)
  assert len(labels) >= 7 and set(labels) == {"b01f_01io->b01f"}, labels


def test_resnet_gradients_match_the_plain_formulation():
  """The whole train-mode ResNet-20 (its default convolution) against lax's convolution."""
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  ours = jresnet.CifarResNet20(zero_init_residual=False)
  plain = ours.clone(conv_general_dilated=lax.conv_general_dilated)
  variables = ours.init(jax.random.key(1), x)
  grads = [_resnet_gradient(ours, variables, x), _resnet_gradient(plain, variables, x)]
  assert_close(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), rtol=1e-4)


def test_cpu_compiler_options_apply_and_keep_the_gradients():
  """The steps' XLA:CPU options (convolutions off YNNPACK) are known to this jaxlib and change
  no ResNet-20 gradient beyond float32 tolerance."""
  assert parallel.compiler_options("cpu") == parallel.CPU_OPTIONS
  assert parallel.compiler_options("gpu") is None
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  model = jresnet.CifarResNet20(zero_init_residual=False)
  variables = model.init(jax.random.key(1), x)
  grads = [_resnet_gradient(model, variables, x, parallel.CPU_OPTIONS),
           _resnet_gradient(model, variables, x)]
  assert_close(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), rtol=1e-4)
