"""Convert between torchvision-layout state dicts and jresnet variables, both ways, exactly.

torchvision names a ResNet's tensors `conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`,
`layer1.0.downsample.0.weight`, `fc.weight`, ...; jresnet's module names mirror them, so a
conversion is a renaming plus a layout change: convolution kernels OIHW <-> HWIO, dense kernels
(out, in) <-> (in, out). The ResNet-D and deep-stem names follow timm (`downsample.1`, `conv1.0`).

Conversion works on numpy arrays (torch only for `to_torch(as_tensors=True)`); reading a weights
file is `jresnet.weights.read_state_dict`.
"""

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jresnet.models import ResNet, to_scanned, to_unrolled

# jresnet leaf name -> torch tensor name, per collection.
_LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# timm's deep stem is nn.Sequential(conv, bn, relu, conv, bn, relu, conv).
_DEEP_STEM = {"conv1_0": "conv1.0", "bn1_0": "conv1.1", "conv1_1": "conv1.3",
              "bn1_1": "conv1.4", "conv1_2": "conv1.6"}


def _module_name(path: tuple[str, ...], avg_down: bool) -> str:
  """jresnet module path -> torch name: layer1/block0/downsample/conv -> layer1.0.downsample.0."""
  names = []
  for parent, part in zip(("",) + path, path):
    block = re.fullmatch(r"block(\d+)", part)
    if part == "stem":
      continue
    if block:
      names.append(block.group(1))
    elif part in _DEEP_STEM:
      names.append(_DEEP_STEM[part])
    elif parent == "downsample":
      names.append(str({"conv": 0, "bn": 1}[part] + int(avg_down)))
    else:
      names.append(part)
  return ".".join(names)


def torch_key(collection: str, path: tuple[str, ...], avg_down: bool = False) -> str:
  """The torchvision/timm key of one jresnet variable (path without the collection)."""
  return f"{_module_name(path[:-1], avg_down)}.{_LEAVES[collection, path[-1]]}"


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  return value.T if value.ndim == 2 else value  # Dense (in, out) -> (out, in)


def _from_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return value.T if value.ndim == 2 else value


def _as_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def variable_shapes(model: ResNet, image_size: int = 64) -> dict:
  """The model's variables as ShapeDtypeStructs, without computing anything."""
  x = jax.ShapeDtypeStruct(model.input_shape(image_size), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def from_torch(state_dict: Mapping[str, Any], model: ResNet) -> dict:
  """torchvision-layout state dict (torch tensors or numpy arrays) -> jresnet variables for `model`.

  Every tensor of the model must be present with the right shape, and every tensor of the state
  dict must be used (apart from `num_batches_tracked`); otherwise a ValueError names them.
  """
  avg_down = model.architecture.shortcut == "D"
  target = to_unrolled(variable_shapes(model.clone(scan_blocks=False)))
  used, problems, out = set(), [], {}
  for collection, tree in target.items():
    flat = {}
    for path, spec in traverse_util.flatten_dict(tree).items():
      key = torch_key(collection, path, avg_down)
      if key not in state_dict:
        problems.append(f"missing {key} (for {collection}/{'/'.join(path)}, shape {spec.shape})")
        continue
      value = _as_numpy(state_dict[key])
      used.add(key)  # listed once: as a wrong shape, not also as unexpected
      if value.shape != _torch_shape(spec.shape):
        problems.append(f"{key}: the state dict has shape {value.shape}, the model needs "
                        f"{_torch_shape(spec.shape)}")
        continue
      value = _from_torch_layout(value)
      flat[path] = jnp.asarray(value, spec.dtype)
    out[collection] = traverse_util.unflatten_dict(flat)
  unused = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
  problems += [f"unexpected {k} (shape {tuple(np.shape(state_dict[k]))})" for k in unused]
  if problems:
    raise ValueError("the state dict does not fit this model "
                     f"({model.architecture}):\n  " + "\n  ".join(problems))
  return to_scanned(out) if model.scan_blocks else out


def to_torch(variables: Mapping, model: ResNet, as_tensors: bool = False) -> dict[str, Any]:
  """jresnet variables -> torchvision-layout state dict (numpy arrays, or torch tensors).

  `num_batches_tracked` is included (as 0) so that torch's strict `load_state_dict` accepts it.
  """
  avg_down = model.architecture.shortcut == "D"
  state_dict = {}
  for collection, tree in to_unrolled(variables).items():
    for path, value in traverse_util.flatten_dict(tree).items():
      key = torch_key(collection, path, avg_down)
      state_dict[key] = _to_torch_layout(np.asarray(value))
      if collection == "batch_stats" and path[-1] == "mean":
        state_dict[key.replace("running_mean", "num_batches_tracked")] = np.array(0, np.int64)
  if as_tensors:
    import torch  # noqa: PLC0415 (optional dependency)
    state_dict = {k: torch.tensor(v) for k, v in state_dict.items()}
  return state_dict
