"""Padding, pooling and initialisers that reproduce PyTorch's layers exactly.

XLA's 'SAME' padding puts the extra row/column of a strided convolution at the end, PyTorch pads
symmetrically. Every convolution and pooling layer here therefore takes explicit symmetric padding,
so that torchvision weights give torchvision's outputs; `padding="same"` chooses XLA's instead,
as flax's examples/imagenet pads, so that its weights give its outputs.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]
Padding = tuple[tuple[int, int], tuple[int, int]]



@dataclasses.dataclass(frozen=True)
class VarianceScaling:
  """`jax.nn.initializers.variance_scaling(scale, mode, distribution)`, with its arguments kept
  so that `jresnet.models.initialisation` can draw all of a model's kernels at once."""

  scale: float
  mode: str          # fan_in | fan_out | fan_avg
  distribution: str  # normal | uniform | truncated_normal

  def __call__(self, key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return nn.initializers.variance_scaling(self.scale, self.mode, self.distribution)(
        key, shape, dtype)


# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu'), an untruncated normal.
conv_kernel_init = VarianceScaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
dense_kernel_init = VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_padding(kernel_size: int, dilation: int = 1) -> Padding:
  """PyTorch's `padding=k // 2 * dilation` on both sides of both spatial axes."""
  p = (kernel_size - 1) // 2 * dilation
  return ((p, p), (p, p))


PADDINGS = ("torch", "same")


def conv_padding(kernel_size: int, dilation: int = 1, padding: str = "torch") -> Padding | str:
  """A convolution's padding: PyTorch's (`torch_padding`) or XLA's 'SAME' (`padding="same"`)."""
  return "SAME" if padding == "same" else torch_padding(kernel_size, dilation)


def max_pool_3x3_s2(x: jax.Array, padding: str = "torch") -> jax.Array:
  """torch.nn.MaxPool2d(3, stride=2, padding=1), or with `padding="same"` XLA's 'SAME' (no
  padding before, one after, on even sizes). The padding is -inf, never chosen."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=conv_padding(3, 1, padding))


def avg_pool_ceil(x: jax.Array, stride: int) -> jax.Array:
  """torch.nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False): ResNet-D."""
  pad = tuple((0, (-size) % stride) for size in x.shape[1:3])
  return nn.avg_pool(x, (stride, stride), strides=(stride, stride), padding=pad,
                     count_include_pad=False)


def avg_pool_2x2_same(x: jax.Array) -> jax.Array:
  """timm's AvgPool2dSame(2, stride=1): zeros padded after each axis, always divided by 4."""
  return nn.avg_pool(x, (2, 2), strides=(1, 1), padding=((0, 1), (0, 1)), count_include_pad=True)


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))


def zero_pad_channels(x: jax.Array, features: int) -> jax.Array:
  """Pads channels with zeros on both sides, as the CIFAR option-A shortcut does."""
  extra = features - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))

