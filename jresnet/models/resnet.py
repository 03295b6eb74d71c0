"""The ResNet family as one Flax module, configured by depth or by explicit stages."""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jresnet.models import architecture, convolution
from jresnet.models.blocks import BLOCKS
from jresnet.models.layers import (
  PADDINGS,
  ModuleDef,
  conv_kernel_init,
  dense_kernel_init,
  global_avg_pool,
  max_pool_3x3_s2,
)
from jresnet.models.stems import STEMS

Dtype = Any


class Stage(nn.Module):
  """`num_blocks` blocks; the first may change shape, the others are identical.

  With `scan=True` the identical blocks run as one `nn.scan` (parameters stacked along a leading
  axis under `blocks`), so compile time does not grow with depth. `remat=True` recomputes each
  block's activations in the backward pass instead of storing them.
  """

  block: ModuleDef
  num_blocks: int
  strides: int
  scan: bool = False
  remat: bool = False
  dilation: int = 1
  first_dilation: int = 1
  drop_path_rates: Sequence[float] | None = None  # one per block (stochastic depth); None: 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    block = functools.partial(self.block, dilation=self.dilation)
    if self.remat:
      block = functools.partial(nn.remat(block.func), *block.args, **block.keywords)
    rates = self.drop_path_rates or (0.0,) * self.num_blocks
    x = block(strides=self.strides, first_dilation=self.first_dilation,
              drop_path_rate=rates[0], name="block0")(x)
    if self.scan and self.num_blocks > 1:
      body = lambda module, carry, _: (module(carry), None)
      scanned = nn.scan(body, variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True}, length=self.num_blocks - 1)
      x, _ = scanned(block(strides=1, name="blocks"), x, None)
    else:
      for i in range(1, self.num_blocks):
        x = block(strides=1, drop_path_rate=rates[i], name=f"block{i}")(x)
    return x


class ResNet(nn.Module):
  """Deep residual network (He et al. 2015; v2: 2016), torchvision-compatible.

  `ResNet(depth=50)` is torchvision's resnet50; `ResNet(depth=20, family='cifar')` the CIFAR
  ResNet-20 of the paper; `ResNet(depth=1001, family='cifar', version='v2')` the pre-activation
  ResNet-1001. See `jresnet.models.architecture` for the depth rules and defaults.

  Call with NHWC images (or NCHW with `data_format="NCHW"`, transposed once at the entry):
  `model.apply(variables, x)` returns float32 logits, or with `return_features=True` a dict of
  NHWC feature maps: for the strided stems the stride-2 map after the stem's activation (`act1`,
  before the max-pool), the stem's output, and each stage's.

  `num_classes=0` (or None, the same) builds no head: the call returns the pooled features.
  `features_only=True` is timm's backbone: the call returns the list of the feature maps at
  `out_indices` (timm's levels: the stem's activation, then each stage; an int n: the last n;
  None: all of them) in network order, `feature_info()` describes them, and the model has no head
  and no stage after the last selected one.

  `drop_rate` (dropout on the pooled features, before the head) and `drop_path_rate` (stochastic
  depth: block i of N drops its residual branch with probability drop_path_rate * i / (N - 1),
  timm's rule) act in training only, where they need a 'dropout' rng:
  `apply(..., train=True, rngs={"dropout": key})`. Evaluation is unchanged by them.

  BatchNorm trains (normalises with the batch's statistics and updates the running ones) when
  the call can update them: `apply(variables, x, mutable=["batch_stats"])` trains,
  `apply(variables, x)` evaluates. An explicit `train=True` or `train=False` overrides that.
  """

  depth: int | None = None
  num_classes: int | None = 1000      # 0 (or None, the same): no head
  family: str = "imagenet"
  stage_sizes: Sequence[int] | None = None
  block: str | None = None             # 'basic' | 'bottleneck'; default from depth
  version: str = "v1.5"                # 'v1' (stride on 1x1), 'v1.5' (on 3x3), 'v2' (pre-act)
  stem: str | None = None              # 'imagenet' | 'cifar' | 'deep'; default from family
  stem_width: int = 32                 # inner width of the deep stem
  stem_features: int | None = None     # the stem's output channels; default 64, CIFAR 16
  shortcut: str | None = None          # 'A' | 'B' | 'D'; default A for CIFAR v1, else B
  widths: Sequence[int] | None = None  # base width per stage; default from family
  width_multiplier: float = 1.0        # Wide ResNet (Zagoruyko & Komodakis): all stage widths
  groups: int = 1                      # ResNeXt cardinality
  width_per_group: int = 64            # bottleneck width per group (128: wide_resnet50_2)
  input_channels: int = 3
  zero_init_residual: bool = True
  dtype: Dtype = jnp.float32           # computation
  param_dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9             # = PyTorch's momentum 0.1
  bn_epsilon: float = 1e-5
  axis_name: str | None = None         # BatchNorm statistics across this mapped axis (pmap)
  axis_index_groups: Any = None        # ... within these groups of devices only
  scan_blocks: bool = False
  remat: bool = False
  # The convolution primitive: a CPU-fast gradient by default; lax.conv_general_dilated is plain.
  conv_general_dilated: Callable = convolution.conv_general_dilated
  output_stride: int = 32              # 16 or 8: dilate the last stages instead of striding
  frozen_bn: bool = False              # BatchNorm always uses (and never updates) running stats
  data_format: str = "NHWC"            # of the input; 'NCHW' (PyTorch loaders) is transposed once
  # 'torch': symmetric, as torchvision; 'same': XLA's 'SAME' on the 3x3 convolutions and the
  # max-pool (the extra row and column after, on even sizes), as flax's examples/imagenet.
  padding: str = "torch"
  drop_rate: float = 0.0               # dropout before the head, in training
  drop_path_rate: float = 0.0          # stochastic depth of the last block; earlier: less
  features_only: bool = False          # timm's backbone: a list of feature maps, no head
  out_indices: Sequence[int] | int | None = None  # features_only: timm's levels (int n: last n)

  def __post_init__(self):
    if self.num_classes is None or self.features_only:
      self.num_classes = 0  # one spelling of "no head", as timm's
    if not isinstance(self.num_classes, int) or self.num_classes < 0:
      raise ValueError(f"num_classes must be a class count, or 0 for no head; "
                       f"got {self.num_classes!r}")
    for rate in ("drop_rate", "drop_path_rate"):
      if not 0.0 <= getattr(self, rate) < 1.0:
        raise ValueError(f"{rate} must be in [0, 1); got {getattr(self, rate)}")
    if self.drop_path_rate and self.scan_blocks:
      raise ValueError("drop_path_rate needs unrolled blocks (scan_blocks=False): timm's rule "
                       "gives every block its own rate, scanned blocks share one module")
    if self.out_indices is not None and not self.features_only:
      raise ValueError("out_indices selects the feature maps of features_only=True; set both")
    self.architecture  # noqa: B018 (a bad depth fails here, at construction, not at trace time)
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f"output_stride must be 8, 16 or 32; got {self.output_stride}")
    if self.data_format not in ("NHWC", "NCHW"):
      raise ValueError(f"data_format must be 'NHWC' or 'NCHW'; got {self.data_format!r}")
    if self.padding not in PADDINGS:
      raise ValueError(f"padding must be 'torch' (torchvision's) or 'same' (XLA's, flax's "
                       f"examples/imagenet's); got {self.padding!r}")
    if self.features_only:
      self.feature_info()  # out-of-range out_indices fail here, at construction
    super().__post_init__()

  @property
  def architecture(self) -> architecture.Architecture:
    return architecture.resolve(
        depth=self.depth, family=self.family, stage_sizes=self.stage_sizes, block=self.block,
        version=self.version, stem=self.stem, shortcut=self.shortcut, widths=self.widths,
        width_multiplier=self.width_multiplier, groups=self.groups,
        width_per_group=self.width_per_group, stem_features=self.stem_features)

  def input_shape(self, image_size: int, batch: int = 1) -> tuple[int, int, int, int]:
    """The shape of `batch` square images in the model's `data_format`."""
    if self.data_format == "NCHW":
      return (batch, self.input_channels, image_size, image_size)
    return (batch, image_size, image_size, self.input_channels)

  @property
  def stem_stride(self) -> int:
    """ImageNet and deep stems reduce by 4 (strided conv + max-pool); the CIFAR stem keeps size."""
    return 4 if self.architecture.stem in ("imagenet", "deep") else 1

  def stage_strides(self) -> list[tuple[int, int, int]]:
    """(stride, dilation, first block's dilation) per stage for the requested output stride.

    Past `output_stride`, a stage keeps the resolution and dilates its 3x3 convolutions instead
    (torchvision's `replace_stride_with_dilation`, timm's `output_stride`).
    """
    arch = self.architecture
    stride = self.stem_stride
    dilation, out = 1, []
    for i in range(len(arch.stage_sizes)):
      s = 1 if i == 0 else 2
      previous = dilation
      if s > 1 and stride >= self.output_stride:
        dilation, s = dilation * s, 1
      stride *= s
      out.append((s, dilation, previous))
    return out

  def feature_info(self) -> list[dict]:
    """Each feature map that `return_features=True` returns (with `features_only=True`: those
    the call returns, timm's levels at `out_indices`): its key (`name`), channels and stride, and
    the same as timm's `feature_info` describes them (`num_chs`, `reduction`, and `module`, the
    timm ResNet module the map is the output of)."""
    maps = self._feature_maps()
    if not self.features_only:
      return maps
    levels = [f for f in maps if f["module"] != "maxpool"]  # timm's: act1, layer1, layer2, ...
    indices = range(len(levels)) if self.out_indices is None else self.out_indices
    if isinstance(indices, int):  # the last n levels, as in timm
      indices = range(-indices, 0)
    if not indices or any(not -len(levels) <= i < len(levels) for i in indices):
      raise ValueError(f"out_indices must index this model's {len(levels)} feature levels "
                       f"({', '.join(f['name'] for f in levels)}); got {self.out_indices}")
    return [levels[i] for i in sorted({i % len(levels) for i in indices})]

  def num_built_stages(self) -> int:
    """The stages the model has: all, or with `features_only` up to the last selected map."""
    if not self.features_only:
      return len(self.architecture.stage_sizes)
    last = self.feature_info()[-1]["name"]
    return int(last.removeprefix("layer")) if last.startswith("layer") else 0

  def left_out_modules(self) -> tuple[str, ...]:
    """The top-level modules of the full network (timm's and torchvision's names) that this
    model does not build: the head `fc` without classes, and with `features_only` the stages
    after the last selected map (and a v2 network's final BatchNorm)."""
    num_stages = len(self.architecture.stage_sizes)
    later = tuple(f"layer{i + 1}" for i in range(self.num_built_stages(), num_stages))
    final_bn = ("bn_final",) if later and self.architecture.preact else ()
    return (("fc",) if not self.num_classes else ()) + later + final_bn

  def drop_path_rates(self) -> list[tuple[float, ...]]:
    """Each built stage's per-block stochastic-depth rates: block i of the network's N gets
    `drop_path_rate * i / (N - 1)` (timm's linear rule; the first block 0, the last the rate)."""
    sizes = self.architecture.stage_sizes
    last = max(sum(sizes) - 1, 1)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [tuple(self.drop_path_rate * (start + j) / last for j in range(n))
            for start, n in zip(starts[:self.num_built_stages()], sizes)]

  def _feature_maps(self) -> list[dict]:
    arch = self.architecture
    expansion = 4 if arch.block == "bottleneck" else 1
    stride = self.stem_stride
    maps = [("stem", "maxpool" if stride > 1 else "act1", arch.stem_features, stride)]
    if stride > 1:
      maps.insert(0, ("act1", "act1", arch.stem_features, stride // 2))
    for i, ((s, _, _), width) in enumerate(zip(self.stage_strides(), arch.widths)):
      stride *= s
      maps.append((f"layer{i + 1}", f"layer{i + 1}", width * expansion, stride))
    return [{"name": name, "channels": channels, "stride": stride, "num_chs": channels,
             "reduction": stride, "module": module} for name, module, channels, stride in maps]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool | None = None, return_features: bool = False):
    arch = self.architecture
    if train is None:
      train = self.is_mutable_collection("batch_stats")
    chex.assert_rank(x, 4)
    if self.data_format == "NCHW":
      x = jnp.transpose(x, (0, 2, 3, 1))
    if x.shape[-1] != self.input_channels:
      raise ValueError(f"expected {self.data_format} images with {self.input_channels} channels "
                       f"(input_channels); got shape {x.shape} (data_format NHWC or NCHW)")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=conv_kernel_init,
                             conv_general_dilated=self.conv_general_dilated)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train or self.frozen_bn,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             axis_name=self.axis_name, axis_index_groups=self.axis_index_groups)

    stem_kwargs = {"width": self.stem_width} if arch.stem == "deep" else {}
    x = STEMS[arch.stem](arch.stem_features, conv, norm, preact=arch.preact, pool=False,
                         padding=self.padding, name="stem", **stem_kwargs)(x.astype(self.dtype))
    features = {}
    if self.stem_stride > 1:  # the stride-2 map, then the max-pool the stem leaves to us
      features["act1"] = x
      x = max_pool_3x3_s2(x, self.padding)
    features["stem"] = x
    block = functools.partial(
        BLOCKS[arch.block, arch.preact], conv=conv, norm=norm, groups=self.groups,
        width_per_group=self.width_per_group, shortcut=arch.shortcut,
        zero_init_residual=self.zero_init_residual, stride_in_1x1=arch.stride_in_1x1,
        padding=self.padding, deterministic=not train)
    num_stages = self.num_built_stages()
    for i, ((strides, dilation, first_dilation), num_blocks, width, rates) in enumerate(
        zip(self.stage_strides(), arch.stage_sizes, arch.widths, self.drop_path_rates())):
      x = Stage(functools.partial(block, features=width), num_blocks, strides=strides,
                scan=self.scan_blocks, remat=self.remat, dilation=dilation,
                first_dilation=first_dilation, drop_path_rates=rates, name=f"layer{i + 1}")(x)
      features[f"layer{i + 1}"] = x
    if arch.preact and num_stages == len(arch.stage_sizes):  # the BN-ReLU no block applies
      x = nn.relu(norm(name="bn_final")(x))
      features[f"layer{num_stages}"] = x
    if self.features_only:
      return [features[f["name"]] for f in self.feature_info()]
    if return_features:
      return features

    x = global_avg_pool(x)
    if self.drop_rate:
      x = nn.Dropout(self.drop_rate, deterministic=not train, name="head_drop")(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=dense_kernel_init, name="fc")(x)
      chex.assert_shape(x, (features["stem"].shape[0], self.num_classes))
    return x.astype(jnp.float32)
