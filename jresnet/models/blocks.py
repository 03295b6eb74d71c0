"""Residual blocks: post-activation (v1, v1.5) and pre-activation (v2), basic and bottleneck.

Every block receives `conv` (a partial of `nn.Conv` with the model's dtypes and initialiser) and
`norm` (a partial of `nn.BatchNorm` with the train flag and axis name already bound), so blocks hold
only what varies between them. Submodule names follow torchvision (`conv1`, `bn1`, ...,
`downsample`), which keeps `jresnet.interop` a renaming.
"""

import flax.linen as nn
import jax

from jresnet.models import architecture
from jresnet.models.layers import (
  ModuleDef,
  avg_pool_2x2_same,
  avg_pool_ceil,
  conv_padding,
  zero_pad_channels,
)

SHORTCUTS = ("A", "B", "D")


def _last_bn_init(zero_init_residual: bool):
  """Zero gamma on a branch's last BatchNorm makes the block start as (ReLU of) its shortcut."""
  return nn.initializers.zeros if zero_init_residual else nn.initializers.ones


class Shortcut(nn.Module):
  """The shortcut where a block changes shape.

  'A': parameter-free, strided subsampling plus zero-padded channels (He et al. 2015, CIFAR).
  'B': projection, a strided 1x1 convolution and BatchNorm (torchvision's `downsample`).
  'D': average pooling, then a 1x1 convolution and BatchNorm (ResNet-D, He et al. 2019; timm).
      In a dilated stage the pool keeps its 2x2 window at stride 1 (timm's AvgPool2dSame).
  `norm=None` drops the BatchNorm, as pre-activation blocks do.
  """

  features: int
  strides: int
  kind: str
  conv: ModuleDef
  norm: ModuleDef | None
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == "A":
      if self.features < x.shape[-1]:
        raise ValueError(f"an option-A shortcut can only add channels ({x.shape[-1]} -> "
                         f"{self.features}); use shortcut='B' or 'D'")
      return zero_pad_channels(x[:, ::self.strides, ::self.strides, :], self.features)
    strides = self.strides
    if self.kind == "D" and strides > 1:
      x, strides = avg_pool_ceil(x, strides), 1
    elif self.kind == "D" and self.dilation > 1:
      x = avg_pool_2x2_same(x)
    x = self.conv(self.features, (1, 1), strides, padding="VALID", name="conv")(x)
    return x if self.norm is None else self.norm(name="bn")(x)


class ResidualBlock(nn.Module):
  """Fields shared by all blocks. `features` is the stage's base width (torchvision's `planes`)."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1
  first_dilation: int | None = None  # of the first 3x3 (the stage's previous dilation); None: same
  groups: int = 1
  width_per_group: int = 64
  shortcut: str = "B"
  zero_init_residual: bool = True
  stride_in_1x1: bool = False
  act: ModuleDef = nn.relu
  padding: str = "torch"             # of the 3x3 convolutions: 'torch' | 'same' (XLA's)
  drop_path_rate: float = 0.0        # stochastic depth of the residual branch
  deterministic: bool = True         # False in training: drop path draws from the 'dropout' rng
  expansion = 1

  @property
  def out_features(self) -> int:
    return self.features * self.expansion

  def project(self, x: jax.Array, preact: jax.Array | None = None) -> jax.Array:
    """Identity where the block keeps the shape, else the shortcut.

    Pre-activation blocks pass `preact`: their projection reads it and has no BatchNorm.
    """
    if x.shape[-1] == self.out_features and self.strides == 1:
      return x
    if preact is not None and self.shortcut != "A":
      x = preact
    return Shortcut(self.out_features, self.strides, self.shortcut, self.conv,
                    self.norm if preact is None else None, self.dilation, name="downsample")(x)

  def drop_path(self, branch: jax.Array) -> jax.Array:
    """Stochastic depth (timm's DropPath): in training each example's residual branch is dropped
    with probability `drop_path_rate`, else scaled by 1 / (1 - drop_path_rate); the identity in
    evaluation. Dropout of whole examples: a mask broadcast over height, width and channels."""
    if not self.drop_path_rate:
      return branch
    return nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3),
                      deterministic=self.deterministic, name="drop_path")(branch)

  def conv3x3(self, features: int, strides: int, name: str, groups: int = 1,
              first: bool = False) -> nn.Module:
    """A 3x3 convolution; `first` marks the block's first 3x3, which keeps the dilation the
    stage had before it was dilated (torchvision's `previous_dilation`, timm's `first_dilation`)."""
    d = (self.first_dilation or self.dilation) if first else self.dilation
    return self.conv(features, (3, 3), strides, padding=conv_padding(3, d, self.padding),
                     kernel_dilation=d, feature_group_count=groups, name=name)

  def conv1x1(self, features: int, strides: int, name: str) -> nn.Module:
    return self.conv(features, (1, 1), strides, padding="VALID", name=name)

  @property
  def bottleneck_width(self) -> int:
    return architecture.bottleneck_width(self.features, self.groups, self.width_per_group)


class BasicBlock(ResidualBlock):
  """Two 3x3 convolutions (ResNet-18/34, CIFAR ResNets); v1 and v1.5 coincide here."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv3x3(self.features, self.strides, "conv1", first=True)(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv3x3(self.features, 1, "conv2")(y)
    y = self.norm(scale_init=_last_bn_init(self.zero_init_residual), name="bn2")(y)
    return self.act(self.drop_path(y) + self.project(x))


class BottleneckBlock(ResidualBlock):
  """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4.

  The stride sits on the 3x3 (v1.5, torchvision) or, with `stride_in_1x1=True`, on the first 1x1
  (the original v1 of He et al. 2015 and Caffe's released models).
  """

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    width = self.bottleneck_width
    y = self.act(self.norm(name="bn1")(self.conv1x1(width, s1, "conv1")(x)))
    y = self.act(self.norm(name="bn2")(self.conv3x3(width, s3, "conv2", self.groups, True)(y)))
    y = self.conv1x1(self.out_features, 1, "conv3")(y)
    y = self.norm(scale_init=_last_bn_init(self.zero_init_residual), name="bn3")(y)
    return self.act(self.drop_path(y) + self.project(x))


class PreActBasicBlock(ResidualBlock):
  """Pre-activation basic block (v2, He et al. 2016, "Identity Mappings").

  BN-ReLU comes before each convolution; a projection shortcut reads the pre-activated input and
  has no BatchNorm of its own. Zero gamma on `bn2` zeroes the branch: ReLU(0) convolved is 0.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    preact = self.act(self.norm(name="bn1")(x))
    y = self.conv3x3(self.features, self.strides, "conv1", first=True)(preact)
    y = self.norm(scale_init=_last_bn_init(self.zero_init_residual), name="bn2")(y)
    y = self.conv3x3(self.features, 1, "conv2")(self.act(y))
    return self.drop_path(y) + self.project(x, preact)


class PreActBottleneckBlock(ResidualBlock):
  """Pre-activation bottleneck (v2): the block of ResNet-164 and ResNet-1001."""

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    width = self.bottleneck_width
    preact = self.act(self.norm(name="bn1")(x))
    y = self.conv1x1(width, s1, "conv1")(preact)
    y = self.conv3x3(width, s3, "conv2", self.groups, True)(self.act(self.norm(name="bn2")(y)))
    y = self.norm(scale_init=_last_bn_init(self.zero_init_residual), name="bn3")(y)
    y = self.conv1x1(self.out_features, 1, "conv3")(self.act(y))
    return self.drop_path(y) + self.project(x, preact)


BLOCKS = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): BottleneckBlock,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneckBlock,
}
