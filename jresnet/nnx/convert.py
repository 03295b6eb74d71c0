"""Weights between NNX models and linen variables, exactly, and through them every other format.

The NNX model's state paths are the linen variable paths (`stem/conv1/kernel`,
`layer1/block0/bn1/mean`, ...), with `nnx.Param` for linen's `params` and `nnx.BatchStat` for its
`batch_stats`: converting is a copy. torchvision/timm state dicts and `jresnet.pretrained` go
through linen variables and `jresnet.interop`, the one converter there is.
"""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx, traverse_util

from jresnet import interop
from jresnet.models import resnet as linen_resnet
from jresnet.models.layout import to_unrolled
from jresnet.nnx.resnet import ResNet

COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def abstract_model(spec: linen_resnet.ResNet) -> ResNet:
  """The NNX twin of a linen model with shapes for its variables: nothing is initialised. The
  random streams of its dropout (`drop_rate`, `drop_path_rate`) are real, seeded with 0
  (`nnx.reseed(model, default=seed)` reseeds them)."""
  model = nnx.eval_shape(lambda: ResNet(spec=spec.clone(scan_blocks=False), rngs=nnx.Rngs(0)))
  nnx.reseed(model, default=0)
  return model


def from_linen(variables: Mapping, model: ResNet | linen_resnet.ResNet) -> ResNet:
  """Linen variables ({'params', 'batch_stats'}, unrolled or scanned) -> the NNX model's state.

  `model` is an NNX `ResNet`, updated in place, or a linen `jresnet.ResNet`, whose NNX twin is
  built without initialising anything. Every variable of the model must be given with its shape
  and none other; otherwise a ValueError names them. Returns the NNX model in eval mode (BatchNorm
  on the loaded running statistics, as linen's `apply(variables, x)`); `model.train()` to train.
  """
  if isinstance(model, linen_resnet.ResNet):
    model = abstract_model(model)
  given = {(collection, *path): value for collection, tree in to_unrolled(variables).items()
           for path, value in traverse_util.flatten_dict(tree).items()}
  state = nnx.state(model, nnx.Any(*COLLECTIONS.values()))  # not dropout's rng state
  problems, pure = [], {}
  for path, variable in nnx.to_flat_state(state):
    collection = next((c for c, t in COLLECTIONS.items() if isinstance(variable, t)), None)
    key = (collection, *map(str, path))
    name, shape = "/".join(key), variable.get_value().shape
    if key not in given:
      problems.append(f"missing {name} (shape {shape})")
      continue
    value = given.pop(key)
    if tuple(value.shape) != tuple(shape):
      problems.append(f"{name}: the variables have shape {tuple(value.shape)}, the model "
                      f"needs {tuple(shape)}")
      continue
    pure[path] = (value, variable.get_value().dtype)
  problems += [f"unexpected {'/'.join(key)} (shape {tuple(v.shape)})" for key, v in given.items()]
  if problems:
    raise ValueError(f"the variables do not fit this model ({model.spec.architecture}):\n  "
                     + "\n  ".join(problems))
  pure = {path: jnp.asarray(value, dtype) for path, (value, dtype) in pure.items()}
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(pure))
  nnx.update(model, state)
  model.eval()
  return model


def to_linen(model: ResNet) -> dict[str, Any]:
  """The NNX model's state as linen variables {'params', 'batch_stats'} for `model.spec`."""
  return {collection: nnx.to_pure_dict(nnx.state(model, kind))
          for collection, kind in COLLECTIONS.items()}


def from_torch(state_dict: Mapping[str, Any], model: ResNet | linen_resnet.ResNet) -> ResNet:
  """A torchvision/timm-layout state dict -> the NNX model (see `interop.from_torch`)."""
  spec = model if isinstance(model, linen_resnet.ResNet) else model.spec
  return from_linen(interop.from_torch(state_dict, spec.clone(scan_blocks=False)), model)


def to_torch(model: ResNet, as_tensors: bool = False) -> dict[str, Any]:
  """The NNX model's weights as a torchvision/timm-layout state dict (see `interop.to_torch`)."""
  return interop.to_torch(to_linen(model), model.spec, as_tensors)
