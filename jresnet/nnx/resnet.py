"""The ResNet family as a `flax.nnx.Module`, configured exactly as the linen `jresnet.ResNet`.

The model is written natively in NNX rather than wrapped with `flax.nnx.bridge.ToNNX`: the
native module follows `train()` / `eval()` and updates its BatchNorm statistics by itself (the
wrapper needs `train=True, mutable=[...]` at every call), exists without a first call on an
example input, and splits into a state of the model's variables only, at linen's paths (the
wrapper's also holds its RNG state); compiled, the two are the same program and run at the same
speed (BENCHMARKS.md, "Flax NNX").

Its options are the linen model's fields: the linen module is kept as `model.spec`, so that the
depth rules, defaults and validation of `jresnet.models.architecture` and the per-stage strides of
`output_stride` are computed once, by the same code.
"""

import functools

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jresnet.models import resnet as linen_resnet
from jresnet.models.layers import (
    conv_kernel_init,
    dense_kernel_init,
    global_avg_pool,
    max_pool_3x3_s2,
)
from jresnet.nnx.blocks import BLOCKS, BatchNorm
from jresnet.nnx.stems import STEMS


class Stage(nnx.Module):
  """`len(blocks)` blocks, held as `block0`, `block1`, ... (linen's names); the first may change
  shape. With `remat=True` each block's activations are recomputed in the backward pass."""

  def __init__(self, blocks: list[nnx.Module], remat: bool = False):
    self.num_blocks, self.remat = len(blocks), remat
    for i, block in enumerate(blocks):
      setattr(self, f"block{i}", block)

  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      block = getattr(self, f"block{i}")
      x = nnx.remat(lambda block, x: block(x))(block, x) if self.remat else block(x)
    return x


class ResNet(nnx.Module):
  """Deep residual network in Flax NNX: `ResNet(depth=50, rngs=nnx.Rngs(0))`.

  Keyword options are those of the linen `jresnet.ResNet` (`family`, `stage_sizes`, `block`,
  `version`, `stem`, `shortcut`, `widths`, `width_multiplier`, `groups`, `width_per_group`,
  `input_channels`, `dtype`, `output_stride`, `frozen_bn`, `remat`, `axis_name`, ...), or pass
  the linen module itself as `spec=`. `scan_blocks` is linen's only: NNX models are unrolled
  (scanned linen variables load into them, see `jresnet.nnx.from_linen`).

  Like every NNX module it is built in training mode (BatchNorm on batch statistics, which it
  updates); `model.eval()` switches to the running statistics, `model.train()` back.
  `model(x)` takes NHWC images and returns float32 logits, or with `return_features=True` a dict
  of the stem's and every stage's feature map (`feature_info()` names them); `features_only`,
  `out_indices`, `drop_rate` and `drop_path_rate` are linen's (dropout draws from `rngs`, in
  training mode only). `model.reset_classifier(num_classes, rngs=...)` replaces the head.
  """

  def __init__(self, depth: int | None = None, *, rngs: nnx.Rngs,
               spec: linen_resnet.ResNet | None = None, **options):
    if spec is None:
      spec = linen_resnet.ResNet(depth=depth, **options)
    elif depth is not None or options:
      spec = spec.clone(**options, **({} if depth is None else {"depth": depth}))
    if spec.scan_blocks:
      raise ValueError("scan_blocks=True is available in the linen model only; build the NNX "
                       "model unrolled (scan_blocks=False): scanned variables load into it")
    if spec.padding != "torch":
      raise ValueError(f"padding={spec.padding!r} is available in the linen model only; the NNX "
                       "model pads as torchvision does (padding='torch')")
    self.spec = spec
    arch = spec.architecture
    conv = functools.partial(
        nnx.Conv, use_bias=False, dtype=spec.dtype, param_dtype=spec.param_dtype,
        kernel_init=conv_kernel_init, conv_general_dilated=spec.conv_general_dilated, rngs=rngs)
    norm = functools.partial(
        BatchNorm, frozen=spec.frozen_bn, momentum=spec.bn_momentum, epsilon=spec.bn_epsilon,
        dtype=spec.dtype, param_dtype=spec.param_dtype, axis_name=spec.axis_name,
        axis_index_groups=spec.axis_index_groups, rngs=rngs)

    stem_kwargs = {"width": spec.stem_width} if arch.stem == "deep" else {}
    self.stem = STEMS[arch.stem](spec.input_channels, arch.stem_features, conv, norm,
                                 preact=arch.preact, **stem_kwargs)
    block_cls = BLOCKS[arch.block, arch.preact]
    block_kwargs = {"shortcut": arch.shortcut, "zero_init_residual": spec.zero_init_residual}
    if arch.block == "bottleneck":
      block_kwargs.update(groups=spec.groups, width_per_group=spec.width_per_group,
                          stride_in_1x1=arch.stride_in_1x1)
    features = arch.stem_features
    for i, ((strides, dilation, first_dilation), num_blocks, width, rates) in enumerate(
        zip(spec.stage_strides(), arch.stage_sizes, arch.widths, spec.drop_path_rates())):
      blocks = []
      for j in range(num_blocks):
        drop_path = (nnx.Dropout(rates[j], broadcast_dims=(1, 2, 3), rngs=rngs) if rates[j]
                     else None)
        blocks.append(block_cls(features, width, conv, norm, strides=strides if j == 0 else 1,
                                dilation=dilation,
                                first_dilation=first_dilation if j == 0 else None,
                                drop_path=drop_path, **block_kwargs))
        features = width * block_cls.expansion
      setattr(self, f"layer{i + 1}", Stage(blocks, remat=spec.remat))
    built_all = spec.num_built_stages() == len(arch.stage_sizes)
    self.bn_final = norm(features) if arch.preact and built_all else None
    self.head_drop = nnx.Dropout(spec.drop_rate, rngs=rngs) if spec.drop_rate else None
    self.fc = self._head(spec.num_classes, rngs)

  def _head(self, num_classes: int, rngs: nnx.Rngs) -> nnx.Linear | None:
    spec = self.spec
    return (nnx.Linear(spec.feature_info()[-1]["channels"], num_classes, dtype=spec.dtype,
                       param_dtype=spec.param_dtype, kernel_init=dense_kernel_init, rngs=rngs)
            if num_classes else None)

  def reset_classifier(self, num_classes: int, *, rngs: nnx.Rngs) -> None:
    """A fresh head for `num_classes` drawn from `rngs` (timm's `reset_classifier`), or none for
    `num_classes=0`, in place; everything else is kept."""
    if self.spec.features_only:
      raise ValueError("a features_only model has no classifier to reset")
    self.spec = self.spec.clone(num_classes=num_classes)
    self.fc = self._head(self.spec.num_classes, rngs)

  @property
  def architecture(self):
    return self.spec.architecture

  def feature_info(self) -> list[dict]:
    """Name, channels and stride of each feature map that `return_features=True` returns."""
    return self.spec.feature_info()

  def __call__(self, x: jax.Array, return_features: bool = False):
    spec = self.spec
    chex.assert_rank(x, 4)
    if spec.data_format == "NCHW":
      x = jnp.transpose(x, (0, 2, 3, 1))
    if x.shape[-1] != spec.input_channels:
      raise ValueError(f"expected {spec.data_format} images with {spec.input_channels} channels "
                       f"(input_channels); got shape {x.shape}")
    x = self.stem(x.astype(spec.dtype))
    features = {}
    if spec.stem_stride > 1:  # the stride-2 map, then the max-pool
      features["act1"] = x
      x = max_pool_3x3_s2(x)
    features["stem"] = x
    num_stages = spec.num_built_stages()
    for i in range(num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
      features[f"layer{i + 1}"] = x
    if self.bn_final is not None:  # v2 ends with the BN-ReLU that no later block applies
      x = nnx.relu(self.bn_final(x))
      features[f"layer{num_stages}"] = x
    if spec.features_only:
      return [features[f["name"]] for f in spec.feature_info()]
    if return_features:
      return features
    x = global_avg_pool(x)
    if self.head_drop is not None:
      x = self.head_drop(x)
    if self.fc is not None:
      x = self.fc(x)
    return x.astype(jnp.float32)
