"""jresnet in place of the `models` module of flax's examples/imagenet.

Code written for the example swaps one import, `from jresnet.compat import flax_imagenet as
models`, and keeps calling `models.ResNet50(num_classes=..., dtype=...)`. The constructors take the
example's names and fields and build `jresnet.ResNet` modules with the example's padding
(`padding="same"`) and BatchNorm statistics synchronised over the pmapped axis `'batch'`. Called
as the example calls its models (`train=True` by default there), they train BatchNorm exactly when
`batch_stats` is mutable, so `apply(v, x, mutable=['batch_stats'])` trains and
`apply(v, x, train=False, mutable=False)` evaluates. Two differences remain: logits are float32
whatever `dtype` is, and the kernels are initialised as torchvision initialises them.

`from_example` and `to_example` convert variables (`params`, `batch_stats`) between the example's
flat layout (`conv_init`, `bn_init`, `BottleneckResNetBlock_7/Conv_1`, `.../norm_proj`, `Dense_0`)
and jresnet's nested one (`stem/conv1`, `layer2/block1/conv2`, `.../downsample/bn`, `fc`): a
checkpoint trained with the example gives the example's logits in jresnet.
"""

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jresnet.interop import variable_shapes
from jresnet.models import ResNet as JResNet
from jresnet.models import to_scanned, to_unrolled
from jresnet.models.blocks import BasicBlock, BottleneckBlock

# The example's block classes, by its names: jresnet's blocks of the same architecture.
ResNetBlock = BasicBlock
BottleneckResNetBlock = BottleneckBlock
_BLOCK_KINDS = {ResNetBlock: "basic", BottleneckResNetBlock: "bottleneck"}
_EXAMPLE_BLOCK_NAMES = {"basic": "ResNetBlock", "bottleneck": "BottleneckResNetBlock"}


def ResNet(stage_sizes: Sequence[int], block_cls: Any, num_classes: int, num_filters: int = 64,
           dtype: Any = jnp.float32, act: Any = nn.relu, conv: Any = nn.Conv, *,
           axis_name: str | None = "batch", **options) -> JResNet:
  """The example's `ResNet(stage_sizes, block_cls, num_classes, num_filters, dtype, act, conv)`
  as a `jresnet.ResNet` with the example's padding and `axis_name='batch'`.

  `options` are further `jresnet.ResNet` fields (`param_dtype`, `scan_blocks`, `remat`, `name`,
  ...); `axis_name=None` gives a model for `jax.jit` instead of `jax.pmap`.
  """
  if conv is nn.ConvLocal:
    raise NotImplementedError("nn.ConvLocal (the example's ResNet18Local, _ResNet1Local) is not "
                              "offered: jresnet's convolutions are nn.Conv; use ResNet18, _ResNet1")
  if conv is not nn.Conv:
    raise NotImplementedError(f"conv={conv!r} is not offered: jresnet's models use nn.Conv")
  if act not in (nn.relu, jax.nn.relu):
    raise NotImplementedError(f"act={act!r} is not offered: jresnet's blocks use nn.relu")
  if block_cls not in _BLOCK_KINDS:
    raise ValueError(f"block_cls must be ResNetBlock or BottleneckResNetBlock; got {block_cls!r}")
  return JResNet(stage_sizes=tuple(stage_sizes), block=_BLOCK_KINDS[block_cls],
                 num_classes=num_classes, stem_features=num_filters,
                 widths=tuple(num_filters * 2**i for i in range(len(stage_sizes))),
                 dtype=dtype, padding="same", axis_name=axis_name, **options)


ResNet18 = functools.partial(ResNet, stage_sizes=[2, 2, 2, 2], block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=BottleneckResNetBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=[3, 4, 23, 3], block_cls=BottleneckResNetBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=[3, 8, 36, 3], block_cls=BottleneckResNetBlock)
ResNet200 = functools.partial(ResNet, stage_sizes=[3, 24, 36, 3],
                              block_cls=BottleneckResNetBlock)
ResNet18Local = functools.partial(ResNet, stage_sizes=[2, 2, 2, 2], block_cls=ResNetBlock,
                                  conv=nn.ConvLocal)
_ResNet1 = functools.partial(ResNet, stage_sizes=[1], block_cls=ResNetBlock)
_ResNet1Local = functools.partial(ResNet, stage_sizes=[1], block_cls=ResNetBlock, conv=nn.ConvLocal)


# --- variables: the example's flat layout <-> jresnet's nested one ------------------------------

_BLOCK_MODULE = re.compile(r"(conv|bn)(\d)$")


def _check_convertible(model: JResNet) -> None:
  arch = model.architecture
  example_like = (arch.stem == "imagenet" and arch.shortcut == "B" and not arch.preact
                  and not arch.stride_in_1x1 and model.groups == 1 and model.width_per_group == 64)
  if not example_like:
    raise ValueError("the example's layout holds v1.5 ResNets with the 7x7 stem, projection "
                     f"shortcuts and no groups; this model is {arch}")


def _example_names(model: JResNet) -> dict[tuple[str, ...], tuple[str, ...]]:
  """jresnet module path -> the example's, for every module of `model` that holds variables."""
  arch = model.architecture
  block_name = _EXAMPLE_BLOCK_NAMES[arch.block]
  names = {("stem", "conv1"): ("conv_init",), ("stem", "bn1"): ("bn_init",), ("fc",): ("Dense_0",)}
  index = 0
  for stage, num_blocks in enumerate(arch.stage_sizes):
    for block in range(num_blocks):
      prefix, example = (f"layer{stage + 1}", f"block{block}"), f"{block_name}_{index}"
      for n in range(1, 4):
        names[(*prefix, f"conv{n}")] = (example, f"Conv_{n - 1}")
        names[(*prefix, f"bn{n}")] = (example, f"BatchNorm_{n - 1}")
      names[(*prefix, "downsample", "conv")] = (example, "conv_proj")
      names[(*prefix, "downsample", "bn")] = (example, "norm_proj")
      index += 1
  return names


def _convert(variables: Mapping, target: Mapping, source_path, source_name: str) -> dict:
  """`variables` re-keyed onto `target`'s paths, each collection on its own: the variable at
  target path `p` is `variables[collection][source_path(p)]`. Every target variable of a given
  collection must be there with its shape and nothing else, or a ValueError lists the others."""
  problems, out = [], {}
  for collection, tree in variables.items():
    if collection not in target:
      problems.append(f"unexpected collection {collection!r}")
      continue
    given = traverse_util.flatten_dict(tree)
    flat = {}
    for path, spec in traverse_util.flatten_dict(target[collection]).items():
      key = source_path(path)
      if key not in given:
        problems.append(f"missing {collection}/{'/'.join(key)} (shape {spec.shape})")
        continue
      value = given.pop(key)
      if tuple(np.shape(value)) != tuple(spec.shape):
        problems.append(f"{collection}/{'/'.join(key)}: shape {tuple(np.shape(value))}, the "
                        f"model needs {tuple(spec.shape)}")
        continue
      flat[path] = jnp.asarray(value)
    problems += [f"unexpected {collection}/{'/'.join(key)}" for key in given]
    out[collection] = traverse_util.unflatten_dict(flat)
  if problems:
    raise ValueError(f"the {source_name} variables do not fit this model:\n  "
                     + "\n  ".join(problems))
  return out


def _layouts(model: JResNet) -> tuple[dict, dict, dict]:
  """`model`'s variable shapes (unrolled) and the renamings jresnet -> example -> jresnet."""
  _check_convertible(model)
  to_names = _example_names(model)
  from_names = {example: path for path, example in to_names.items()}
  shapes = to_unrolled(variable_shapes(model.clone(scan_blocks=False)))
  return shapes, to_names, from_names


def _rename(names: Mapping, path: tuple[str, ...]) -> tuple[str, ...]:
  return (*names[path[:-1]], path[-1])


def from_example(variables: Mapping, model: JResNet) -> dict:
  """The example's variables (`params`, `batch_stats`, or either) -> `model`'s.

  `model` is the matching jresnet model (e.g. `flax_imagenet.ResNet50(num_classes=1000)`, or any
  `jresnet.ResNet` of that architecture; `padding="same"` gives the example's outputs). The
  values are kept as they are, so converting back is exact.
  """
  shapes, to_names, _ = _layouts(model)
  out = _convert(variables, shapes, functools.partial(_rename, to_names), "example's")
  return to_scanned(out) if model.scan_blocks else out


def to_example(variables: Mapping, model: JResNet) -> dict:
  """`model`'s variables (unrolled or scanned) -> the example's flat layout, exactly."""
  shapes, to_names, from_names = _layouts(model)
  example_shapes = {collection: traverse_util.unflatten_dict(
                        {_rename(to_names, path): spec
                         for path, spec in traverse_util.flatten_dict(tree).items()})
                    for collection, tree in shapes.items()}
  return _convert(to_unrolled(variables), example_shapes,
                  functools.partial(_rename, from_names), "jresnet")
