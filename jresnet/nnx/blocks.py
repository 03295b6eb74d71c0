"""Residual blocks and shortcuts as `flax.nnx` modules, the twins of `jresnet.models.blocks`.

Each block is built for a known input width (`in_features`), which NNX needs at construction and
linen reads from the input; the shortcut exists where that width or the stride changes, as in
linen. Submodule names are linen's (`conv1`, `bn1`, ..., `downsample`), so an NNX state path is the
linen variable path: `jresnet.nnx.from_linen` is a copy, not a renaming.

`conv` and `norm` are partials of `nnx.Conv` and `BatchNorm` with the model's dtypes,
initialiser, convolution primitive and `rngs` bound.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jresnet.models.architecture import bottleneck_width
from jresnet.models.layers import (
  avg_pool_2x2_same,
  avg_pool_ceil,
  torch_padding,
  zero_pad_channels,
)

ModuleDef = Callable[..., nnx.Module]


def _promote_input_only(arrays, dtype=None):
  """linen's BatchNorm precision: the input in `dtype`, the statistics, scale and bias as they
  are (float32). `nnx.BatchNorm`'s default casts all five to `dtype`, which in bfloat16 rounds
  the running statistics before they are used."""
  x, *rest = arrays
  return (x if dtype is None else jnp.asarray(x, dtype), *rest)


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` computing as linen's does (statistics and affine parameters in float32 for
  any `dtype`); with `frozen=True` it always normalises with (and never updates) its running
  statistics, whatever `train()` / `eval()` set on it or on any module above it."""

  def __init__(self, num_features: int, *, frozen: bool = False, **kwargs):
    super().__init__(num_features, promote_dtype=_promote_input_only, **kwargs)
    self.frozen = frozen

  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    return super().__call__(x, use_running_average=True if self.frozen else use_running_average)


def _last_bn(norm: ModuleDef, features: int, zero_init_residual: bool) -> nnx.Module:
  """A branch's last BatchNorm; zero gamma makes the block start as (ReLU of) its shortcut."""
  init = nnx.initializers.zeros if zero_init_residual else nnx.initializers.ones
  return norm(features, scale_init=init)


def conv3x3(conv: ModuleDef, in_features: int, features: int, strides: int, dilation: int = 1,
            groups: int = 1) -> nnx.Module:
  return conv(in_features, features, (3, 3), strides, padding=torch_padding(3, dilation),
              kernel_dilation=dilation, feature_group_count=groups)


def conv1x1(conv: ModuleDef, in_features: int, features: int, strides: int) -> nnx.Module:
  return conv(in_features, features, (1, 1), strides, padding="VALID")


class Shortcut(nnx.Module):
  """Where a block changes shape: 'A' (strided subsampling, zero-padded channels), 'B'
  (strided 1x1 convolution and BatchNorm) or 'D' (average pool, 1x1 convolution, BatchNorm; in a
  dilated stage a 2x2 stride-1 pool). `norm=None` drops the BatchNorm (pre-activation blocks)."""

  def __init__(self, in_features: int, features: int, strides: int, kind: str, conv: ModuleDef,
               norm: ModuleDef | None, dilation: int = 1):
    self.features, self.strides, self.kind, self.dilation = features, strides, kind, dilation
    if kind == "A":
      if features < in_features:
        raise ValueError(f"an option-A shortcut can only add channels ({in_features} -> "
                         f"{features}); use shortcut='B' or 'D'")
      return
    self.conv = conv1x1(conv, in_features, features, 1 if kind == "D" else strides)
    self.bn = None if norm is None else norm(features)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == "A":
      return zero_pad_channels(x[:, ::self.strides, ::self.strides, :], self.features)
    if self.kind == "D" and self.strides > 1:
      x = avg_pool_ceil(x, self.strides)
    elif self.kind == "D" and self.dilation > 1:
      x = avg_pool_2x2_same(x)
    x = self.conv(x)
    return x if self.bn is None else self.bn(x)


class ResidualBlock(nnx.Module):
  """What all blocks share: the shortcut rule and stochastic depth. `features` is the stage's
  base width; `drop_path` is the block's `nnx.Dropout` over whole examples (or None)."""

  expansion = 1

  def branch(self, y: jax.Array) -> jax.Array:
    """The residual branch, dropped per example in training where the block has `drop_path`."""
    return y if self.drop_path is None else self.drop_path(y)

  def _shortcut(self, in_features: int, features: int, strides: int, kind: str,
                conv: ModuleDef, norm: ModuleDef | None, dilation: int) -> None:
    """Identity where the block keeps the shape (`downsample = None`), else the shortcut."""
    out = features * self.expansion
    self.downsample = (None if in_features == out and strides == 1 else
                       Shortcut(in_features, out, strides, kind, conv, norm, dilation))

  def project(self, x: jax.Array, preact: jax.Array | None = None) -> jax.Array:
    if self.downsample is None:
      return x
    if preact is not None and self.downsample.kind != "A":
      x = preact  # pre-activation projections read the pre-activated input
    return self.downsample(x)


class BasicBlock(ResidualBlock):
  """Two 3x3 convolutions (ResNet-18/34, CIFAR ResNets)."""

  def __init__(self, in_features: int, features: int, conv: ModuleDef, norm: ModuleDef, *,
               strides: int = 1, dilation: int = 1, first_dilation: int | None = None,
               shortcut: str = "B", zero_init_residual: bool = True,
               drop_path: nnx.Dropout | None = None):
    self.conv1 = conv3x3(conv, in_features, features, strides, first_dilation or dilation)
    self.bn1 = norm(features)
    self.conv2 = conv3x3(conv, features, features, 1, dilation)
    self.bn2 = _last_bn(norm, features, zero_init_residual)
    self._shortcut(in_features, features, strides, shortcut, conv, norm, dilation)
    self.drop_path = drop_path

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(self.branch(y) + self.project(x))


class BottleneckBlock(ResidualBlock):
  """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4; the stride on the 3x3 (v1.5) or
  with `stride_in_1x1` on the first 1x1 (v1)."""

  expansion = 4

  def __init__(self, in_features: int, features: int, conv: ModuleDef, norm: ModuleDef, *,
               strides: int = 1, dilation: int = 1, first_dilation: int | None = None,
               groups: int = 1, width_per_group: int = 64, shortcut: str = "B",
               zero_init_residual: bool = True, stride_in_1x1: bool = False,
               drop_path: nnx.Dropout | None = None):
    s1, s3 = (strides, 1) if stride_in_1x1 else (1, strides)
    width, out = bottleneck_width(features, groups, width_per_group), features * self.expansion
    self.conv1 = conv1x1(conv, in_features, width, s1)
    self.bn1 = norm(width)
    self.conv2 = conv3x3(conv, width, width, s3, first_dilation or dilation, groups)
    self.bn2 = norm(width)
    self.conv3 = conv1x1(conv, width, out, 1)
    self.bn3 = _last_bn(norm, out, zero_init_residual)
    self._shortcut(in_features, features, strides, shortcut, conv, norm, dilation)
    self.drop_path = drop_path

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return nnx.relu(self.branch(y) + self.project(x))


class PreActBasicBlock(ResidualBlock):
  """Pre-activation basic block (v2): BN-ReLU before each convolution; a projection shortcut
  reads the pre-activated input and has no BatchNorm."""

  def __init__(self, in_features: int, features: int, conv: ModuleDef, norm: ModuleDef, *,
               strides: int = 1, dilation: int = 1, first_dilation: int | None = None,
               shortcut: str = "B", zero_init_residual: bool = True,
               drop_path: nnx.Dropout | None = None):
    self.bn1 = norm(in_features)
    self.conv1 = conv3x3(conv, in_features, features, strides, first_dilation or dilation)
    self.bn2 = _last_bn(norm, features, zero_init_residual)
    self.conv2 = conv3x3(conv, features, features, 1, dilation)
    self._shortcut(in_features, features, strides, shortcut, conv, None, dilation)
    self.drop_path = drop_path

  def __call__(self, x: jax.Array) -> jax.Array:
    preact = nnx.relu(self.bn1(x))
    y = self.conv2(nnx.relu(self.bn2(self.conv1(preact))))
    return self.branch(y) + self.project(x, preact)


class PreActBottleneckBlock(ResidualBlock):
  """Pre-activation bottleneck (v2): the block of ResNet-164 and ResNet-1001."""

  expansion = 4

  def __init__(self, in_features: int, features: int, conv: ModuleDef, norm: ModuleDef, *,
               strides: int = 1, dilation: int = 1, first_dilation: int | None = None,
               groups: int = 1, width_per_group: int = 64, shortcut: str = "B",
               zero_init_residual: bool = True, stride_in_1x1: bool = False,
               drop_path: nnx.Dropout | None = None):
    s1, s3 = (strides, 1) if stride_in_1x1 else (1, strides)
    width, out = bottleneck_width(features, groups, width_per_group), features * self.expansion
    self.bn1 = norm(in_features)
    self.conv1 = conv1x1(conv, in_features, width, s1)
    self.bn2 = norm(width)
    self.conv2 = conv3x3(conv, width, width, s3, first_dilation or dilation, groups)
    self.bn3 = _last_bn(norm, width, zero_init_residual)
    self.conv3 = conv1x1(conv, width, out, 1)
    self._shortcut(in_features, features, strides, shortcut, conv, None, dilation)
    self.drop_path = drop_path

  def __call__(self, x: jax.Array) -> jax.Array:
    preact = nnx.relu(self.bn1(x))
    y = self.conv2(nnx.relu(self.bn2(self.conv1(preact))))
    y = self.conv3(nnx.relu(self.bn3(y)))
    return self.branch(y) + self.project(x, preact)


BLOCKS = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): BottleneckBlock,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneckBlock,
}
