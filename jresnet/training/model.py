"""The configured model: built from config.model for a dataset, named in one line of the run's
log, and described as a checkpoint must agree with it."""

import dataclasses
import json

from ml_collections import ConfigDict

from jresnet.models import ResNet
from jresnet.models.architecture import IMAGENET_DEPTHS, LAYERS_PER_BLOCK
from jresnet.training.run_config import ConfigError


def build_model(config: ConfigDict, num_classes: int, input_channels: int) -> ResNet:
  """The configured ResNet for a dataset of `num_classes` and `input_channels`."""
  fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name"}
  kwargs = config.model.to_dict()
  unknown = set(kwargs) - fields
  if unknown:
    raise ConfigError(f"unknown model option(s) {sorted(unknown)}; ResNet takes {sorted(fields)}")
  try:
    return ResNet(**kwargs, num_classes=num_classes, input_channels=input_channels,
                  dtype=config.precision)
  except ValueError as error:  # the architecture's own check of the model fields
    raise ConfigError(f"config.model: {error}") from None


def describe_model(model: ResNet) -> str:
  """The model line of a run: what its fields build. A CIFAR-family depth says that it builds a
  three-stage 6n+2 (9n+2) network, not the ImageNet ResNet of that depth."""
  arch = model.architecture
  built = (f"{arch.block} blocks, stages {arch.stage_sizes}, widths {arch.widths}, stem "
           f"{arch.stem}, {model.num_classes} classes")
  if model.depth is None:
    return f"model: {built}"
  if model.family != "cifar":
    return f"model: depth {model.depth}, family {model.family}: {built}"
  rule = f"{3 * LAYERS_PER_BLOCK[arch.block]}n+2"
  line = (f"model: depth {model.depth}, family cifar: the CIFAR ResNet of depth {rule} "
          f"(n={arch.stage_sizes[0]}), {built}")
  if model.depth in IMAGENET_DEPTHS:
    line += f" (not the ImageNet ResNet-{model.depth}: --config.model.family=imagenet builds that)"
  return line


def model_meta(model: ResNet, replicas: int = 1) -> dict:
  """What a checkpoint must agree on with the configured model, as JSON values; and the number of
  runs it holds side by side, where more than one."""
  meta = {**dataclasses.asdict(model.architecture), "num_classes": model.num_classes,
          "groups": model.groups, "width_per_group": model.width_per_group,
          "input_channels": model.input_channels, "scan_blocks": model.scan_blocks}
  if replicas > 1:
    meta["replicas"] = replicas
  return json.loads(json.dumps(meta))
