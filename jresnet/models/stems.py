"""Stems: the layers between the image and the first residual stage.

With `preact=True` (v2 models) a stem ends at its last convolution (and pooling): the first block's
own BatchNorm-ReLU pre-activates it, as in He et al. 2016 and Haiku's ResNetV2. `pool=False`
leaves out the strided stems' final max-pool (the ResNet applies it itself, to return the
stride-2 map as a feature). `padding="same"` gives the 3x3 convolutions and the max-pool XLA's
'SAME' padding; the 7x7 convolution pads 3 on each side either way, as flax's examples/imagenet
does.
"""

import flax.linen as nn
import jax

from jresnet.models.layers import ModuleDef, conv_padding, max_pool_3x3_s2, torch_padding


class Stem(nn.Module):
  features: int
  conv: ModuleDef
  norm: ModuleDef
  preact: bool = False
  act: ModuleDef = nn.relu
  pool: bool = True
  padding: str = "torch"

  def max_pool(self, x: jax.Array) -> jax.Array:
    return max_pool_3x3_s2(x, self.padding) if self.pool else x

  def norm_act(self, x: jax.Array) -> jax.Array:
    return x if self.preact else self.act(self.norm(name="bn1")(x))


class ImageNetStem(Stem):
  """7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max-pool: 224 -> 56."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(self.features, (7, 7), 2, padding=torch_padding(7), name="conv1")(x)
    return self.max_pool(self.norm_act(x))


class CifarStem(Stem):
  """One 3x3/1 convolution, no pooling: for 32x32 inputs (He et al. 2015, section 4.2)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(self.features, (3, 3), 1, padding=conv_padding(3, 1, self.padding),
                  name="conv1")(x)
    return self.norm_act(x)


class DeepStem(Stem):
  """Three 3x3 convolutions (the first strided) instead of the 7x7: ResNet-C/D (He et al. 2019).

  Widths `width`, `width`, `features`, as timm's `deep_stem` with `stem_width` (32 for resnet50d).
  """

  width: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, (features, strides) in enumerate([(self.width, 2), (self.width, 1)]):
      x = self.conv(features, (3, 3), strides, padding=conv_padding(3, 1, self.padding),
                    name=f"conv1_{i}")(x)
      x = self.act(self.norm(name=f"bn1_{i}")(x))
    x = self.conv(self.features, (3, 3), 1, padding=conv_padding(3, 1, self.padding),
                  name="conv1_2")(x)
    return self.max_pool(self.norm_act(x))


STEMS = {"imagenet": ImageNetStem, "cifar": CifarStem, "deep": DeepStem}
