"""Accelerator readiness, checked from this CPU: the jitted ResNet-50 train and eval steps (bf16
computation, batch sharded over a 'data' mesh of 8 devices) lower for CUDA and TPU with
`jax.export`. Anything that only works on CPU (a CPU-only custom call or kernel, a host callback,
an unsupported dtype or sharding) fails here rather than on the accelerator."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tiny_config import tiny_config

import jresnet
from jresnet.data import DatasetInfo
from jresnet.training import loop
from jresnet.training.state import create_train_state

PLATFORMS = ("cuda", "tpu")
BATCH = 16


@pytest.fixture(scope="module")
def resnet50_runner():
  _, runner = loop.build(tiny_config(), DatasetInfo(1000, (224, 224, 3), {"train": 1000}, None),
                         model=jresnet.ResNet50(dtype=jnp.bfloat16))
  state = jax.eval_shape(lambda: create_train_state(runner.model, runner.step_config.tx,
                                                    (224, 224, 3), 0, False))
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                      sharding=runner.replicated), state)
  rows = runner.batch_sharding
  batch = {"image": jax.ShapeDtypeStruct((BATCH, 224, 224, 3), jnp.float32, sharding=rows),
           "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32, sharding=rows),
           "mask": jax.ShapeDtypeStruct((BATCH,), jnp.bool_, sharding=rows)}
  return runner, state, batch


def _check(exported, text_must_contain):
  assert exported.platforms == PLATFORMS
  assert exported.nr_devices == jax.device_count() == 8
  text = exported.mlir_module()
  for needle in text_must_contain:
    assert needle in text, needle
  assert "custom_call" not in text.replace("@Sharding", "").replace("@SPMDFullToShardShape", "") \
      .replace("@SPMDShardToFullShape", ""), "a custom call is backend-specific"


def test_train_step_lowers_for_gpu_and_tpu(resnet50_runner):
  runner, state, batch = resnet50_runner
  exported = jax.export.export(runner.train_step, platforms=PLATFORMS)(state, batch)
  # bf16 convolutions, float32 parameters in and out, the batch split over the 8 devices.
  _check(exported, ["stablehlo.convolution", "bf16",
                    'tensor<16x224x224x3xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}'])
  param_avals = [a for a in exported.in_avals if a.shape == (7, 7, 3, 64)]
  assert param_avals and all(a.dtype == jnp.float32 for a in param_avals)


def test_eval_step_lowers_for_gpu_and_tpu(resnet50_runner):
  runner, state, batch = resnet50_runner
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  exported = jax.export.export(runner.eval_step, platforms=PLATFORMS)(variables, batch)
  _check(exported, ["stablehlo.convolution", "bf16"])


def test_the_check_catches_cpu_only_code():
  """Negative control: a host callback (like a CPU-only kernel) cannot be exported for them."""
  def step(x):
    y = jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    return y + 1

  mesh_data = NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))
  spec = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=mesh_data)
  with pytest.raises(Exception, match="(?i)callback"):
    jax.export.export(jax.jit(functools.partial(step)), platforms=PLATFORMS)(spec)


def test_cpu_convolution_stays_out_of_accelerator_lowering():
  """jresnet's default convolution lowers for GPU/TPU to exactly lax's graph; for CPU to its
  matmul formulation (the control: the comparison can tell the two apart)."""
  def grads(conv):
    def loss(x, w):
      return jnp.sum(conv(x, w, (1, 1), ((0, 0), (0, 0)),
                          dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))

  spec = (jax.ShapeDtypeStruct((4, 8, 8, 16), jnp.float32),
          jax.ShapeDtypeStruct((1, 1, 16, 32), jnp.float32))

  def ops(conv, platforms):
    text = jax.export.export(grads(conv), platforms=platforms)(*spec).mlir_module()
    return set(re.findall(r"stablehlo\.(\w+)", text))

  from jresnet.models.convolution import conv_general_dilated
  assert ops(conv_general_dilated, PLATFORMS) == ops(lax.conv_general_dilated, PLATFORMS)
  assert "dot_general" not in ops(conv_general_dilated, PLATFORMS)
  assert "dot_general" in ops(conv_general_dilated, ("cpu",))
  assert "dot_general" not in ops(lax.conv_general_dilated, ("cpu",))
