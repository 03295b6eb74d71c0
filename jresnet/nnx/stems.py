"""Stems as `flax.nnx` modules, the twins of `jresnet.models.stems` (same names, same layers).

With `preact=True` (v2) a stem ends at its last convolution (and pooling), without BatchNorm.
"""

import jax
from flax import nnx

from jresnet.models.layers import torch_padding
from jresnet.nnx.blocks import ModuleDef


def _conv3x3(conv: ModuleDef, in_features: int, features: int, strides: int) -> nnx.Module:
  return conv(in_features, features, (3, 3), strides, padding=torch_padding(3))


class Stem(nnx.Module):
  def _norm_act(self, norm: ModuleDef, features: int, preact: bool) -> None:
    self.bn1 = None if preact else norm(features)

  def norm_act(self, x: jax.Array) -> jax.Array:
    return x if self.bn1 is None else nnx.relu(self.bn1(x))


class ImageNetStem(Stem):
  """7x7/2 convolution, BatchNorm, ReLU: 224 -> 112 (the ResNet max-pools it to 56)."""

  def __init__(self, in_features: int, features: int, conv: ModuleDef, norm: ModuleDef, *,
               preact: bool = False):
    self.conv1 = conv(in_features, features, (7, 7), 2, padding=torch_padding(7))
    self._norm_act(norm, features, preact)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm_act(self.conv1(x))


class CifarStem(Stem):
  """One 3x3/1 convolution, no pooling."""

  def __init__(self, in_features: int, features: int, conv: ModuleDef, norm: ModuleDef, *,
               preact: bool = False):
    self.conv1 = _conv3x3(conv, in_features, features, 1)
    self._norm_act(norm, features, preact)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm_act(self.conv1(x))


class DeepStem(Stem):
  """Three 3x3 convolutions (the first strided) of widths `width`, `width`, `features`
  (ResNet-C/D; the ResNet max-pools the result)."""

  def __init__(self, in_features: int, features: int, conv: ModuleDef, norm: ModuleDef, *,
               preact: bool = False, width: int = 32):
    self.conv1_0 = _conv3x3(conv, in_features, width, 2)
    self.bn1_0 = norm(width)
    self.conv1_1 = _conv3x3(conv, width, width, 1)
    self.bn1_1 = norm(width)
    self.conv1_2 = _conv3x3(conv, width, features, 1)
    self._norm_act(norm, features, preact)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.bn1_0(self.conv1_0(x)))
    x = nnx.relu(self.bn1_1(self.conv1_1(x)))
    return self.norm_act(self.conv1_2(x))


STEMS = {"imagenet": ImageNetStem, "cifar": CifarStem, "deep": DeepStem}
