"""Inference export: a trained model's architecture, parameters and BatchNorm statistics in one
msgpack file, loadable with jresnet alone (no training code, no TensorFlow, no optimiser state).

    model, variables = jresnet.export.load("runs/cifar10/model.msgpack")
    logits = model.apply(variables, images, train=False)
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jresnet.models import ResNet

_NOT_SAVED = {"parent", "name", "conv_general_dilated"}  # tree position and code, not architecture


def model_kwargs(model: ResNet) -> dict:
  """The ResNet's constructor arguments as JSON values (dtypes by name)."""
  kwargs = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in _NOT_SAVED}
  for key in ("dtype", "param_dtype"):
    kwargs[key] = jnp.dtype(kwargs[key]).name
  return json.loads(json.dumps(kwargs))


def save(path: str, model: ResNet, variables: dict) -> None:
  """Writes `model`'s architecture and `variables` ({'params', 'batch_stats'}) to `path`."""
  payload = {"model": json.dumps(model_kwargs(model)),
             "variables": jax.tree.map(np.asarray, jax.device_get(dict(variables)))}
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(payload))


def load(path: str) -> tuple[ResNet, dict]:
  """The model and variables that `save` wrote."""
  with open(path, "rb") as f:
    payload = serialization.msgpack_restore(f.read())
  kwargs = json.loads(payload["model"])
  for key in ("stage_sizes", "widths"):
    if kwargs.get(key) is not None:
      kwargs[key] = tuple(kwargs[key])
  return ResNet(**kwargs), payload["variables"]
