"""The model a config describes: `config.model`'s ResNet fields at the resolved precision.

Imports neither the input pipeline nor the records (both load TensorFlow), so a benchmark on a
machine without TensorFlow builds exactly the model that train.py trains.
"""

import dataclasses

import jax
from ml_collections import ConfigDict

from jresnet.models import ResNet

ACCELERATOR_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def resolve_precision(precision: str) -> str:
  """'auto': bfloat16 computation on GPU and TPU, float32 on CPU (where bf16 rarely pays)."""
  if precision == "auto":
    return "bfloat16" if jax.default_backend() in ACCELERATOR_BACKENDS else "float32"
  if precision not in ("float32", "bfloat16"):
    raise ValueError(f"precision must be auto, float32 or bfloat16; got {precision!r}")
  return precision


def build_model(config: ConfigDict, num_classes: int, input_channels: int) -> ResNet:
  """The configured ResNet for a dataset of `num_classes` and `input_channels`."""
  fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
  kwargs = config.model.to_dict()
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"unknown model option(s) {sorted(unknown)}; ResNet takes {sorted(fields)}")
  return ResNet(**kwargs, num_classes=num_classes, input_channels=input_channels,
                dtype=config.precision)
