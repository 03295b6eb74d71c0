"""What a config describes, for a dataset of a given shape: the model at its precision, the
learning-rate schedule, the optimiser and the compiled steps' runner.

Imports no input pipeline (which loads TensorFlow), so a benchmark on a machine without
TensorFlow trains exactly what train.py trains; `loop.plan` adds the dataset.
"""

import dataclasses
import math
from collections.abc import Iterable

import jax
import numpy as np
import optax
from ml_collections import ConfigDict

from jresnet.models import ResNet
from jresnet.models.architecture import IMAGENET_DEPTHS, LAYERS_PER_BLOCK
from jresnet.training import optim, parallel, run_config
from jresnet.training import step as step_lib
from jresnet.training.state import TrainState, create_train_state

ACCELERATOR_BACKENDS = ("gpu", "cuda", "rocm", "tpu")
PRECISION_ALIASES = {"bf16": "bfloat16", "fp32": "float32"}


class ConfigError(ValueError):
  """A config value that no run can use; the message names the field and what it accepts."""


def resolve_precision(precision: str) -> str:
  """'auto': bfloat16 computation on GPU and TPU, float32 on CPU (where bf16 rarely pays); 'bf16'
  and 'fp32' are the short names of the other two."""
  precision = PRECISION_ALIASES.get(precision, precision)
  if precision == "auto":
    return "bfloat16" if jax.default_backend() in ACCELERATOR_BACKENDS else "float32"
  if precision not in ("float32", "bfloat16"):
    raise ConfigError(f"precision must be auto, float32 (fp32) or bfloat16 (bf16); "
                      f"got {precision!r}")
  return precision


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


@dataclasses.dataclass
class Recipe:
  """Everything derived from the config and the dataset's shape before compiling.

  `config` is a resolved copy: precision, num_train_steps, learning_rate_resolved and num_classes
  filled in, as the workdir's config.json records them. `info` is the dataset's
  `jresnet.data.DatasetInfo` where the recipe was made from the dataset itself (`loop.plan`), None
  where only its shape was given (benchmarks, tests).
  """

  config: ConfigDict
  model: ResNet
  image_shape: tuple[int, ...]
  total_steps: int
  steps_per_epoch: float
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  runner: parallel.JitMesh | parallel.Pmap
  info: object | None = None

  @property
  def use_ema(self) -> bool:
    return self.config.ema_decay is not None

  def create_state(self) -> TrainState:
    """The initial train state (seed `config.seed`), placed as the runner keeps it."""
    return self.runner.create_state(lambda: create_train_state(
        self.model, self.tx, self.image_shape, self.config.seed, use_ema=self.use_ema))

  def metrics_over(self, variables, batches: Iterable[dict]) -> dict:
    """Loss, top-1 and top-5 accuracy summed over `batches` (in the runner's placement), then
    divided by the real (mask True) examples among them."""
    sums = None
    for batch in batches:
      out = self.runner.eval_step(variables, batch)
      sums = out if sums is None else jax.tree.map(np.add, sums, out)
    return step_lib.summarise_eval(self.runner.to_host(sums))


# The accepted values of the config's numbers, as intervals (lowest, highest, whether each end is
# included); None, where a field allows it, means "derived" and is not checked. A tuple's every
# element must lie in its field's interval.
POSITIVE = (0, math.inf, False, False)
NON_NEGATIVE = (0, math.inf, True, False)
FRACTION = (0, 1, True, False)  # momenta, decays, smoothing
UNIT = (0, 1, True, True)
VALUE_RANGES = {
    **dict.fromkeys((
        "batch_size", "eval_batch_size", "num_train_steps", "stop_after_steps", "log_every_steps",
        "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints", "bn_span",
        "grad_clip_norm", "model.width_multiplier", "model.stem_width", "model.widths",
        "model.groups", "model.width_per_group", "model.bn_epsilon", "optimizer.lr_base_batch",
        "optimizer.eps", "schedule.decay_factor", "schedule.div_factor",
        "schedule.final_div_factor", "data.image_size", "data.image_shape", "data.num_examples",
        "data.shuffle_buffer", "data.threads"), POSITIVE),
    **dict.fromkeys((
        "num_epochs", "optimizer.learning_rate", "optimizer.weight_decay",
        "optimizer.trust_coefficient", "backbone_lr_scale", "schedule.warmup_epochs",
        "schedule.warmup_start_lr", "data.prefetch", "data.max_cache_mb"), NON_NEGATIVE),
    **dict.fromkeys(("optimizer.momentum", "optimizer.b1", "optimizer.b2", "label_smoothing",
                     "ema_decay"), FRACTION),
    **dict.fromkeys(("model.bn_momentum", "schedule.final_lr_fraction", "schedule.boundaries",
                     "schedule.pct_start"), UNIT),
}


def _interval(low, high, low_included, high_included) -> str:
  return f"{'[' if low_included else '('}{low:g}, {high:g}{']' if high_included else ')'}"


def _inside(value, low, high, low_included, high_included) -> bool:
  """Whether `value` lies in the interval (NaN nowhere; infinity only at an included end)."""
  return ((low <= value if low_included else low < value)
          and (value <= high if high_included else value < high))


def check_values(config: ConfigDict) -> None:
  """Every number of VALUE_RANGES in its interval, and a run that trains: one ValueError naming
  each field out of range and its accepted values, before anything is read or written."""
  ranges = dict(VALUE_RANGES)
  if config.num_train_steps is None:  # num_epochs sets the length of the run
    ranges["num_epochs"] = POSITIVE
  bad = []
  for field, interval in ranges.items():
    value = run_config.field_value(config, field)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if value is not None and not all(_inside(v, *interval) for v in values):
      words = "positive, in" if interval[:3] == (0, math.inf, False) else "in"
      bad.append(f"{field}={value!r} must be {words} {_interval(*interval)}")
  if bad:
    raise ConfigError(f"{'; '.join(bad)} (config fields out of range)")


def build(config: ConfigDict, num_classes: int, image_shape: tuple[int, ...],
          train_examples: int, *, model: ResNet | None = None, devices=None) -> Recipe:
  """The recipe for a dataset of `num_classes`, images of `image_shape` (H, W, C) and
  `train_examples` training examples. An invalid architecture, precision, schedule, optimiser or
  batch size or step count fails here, before anything is compiled.

  `model` replaces the configured model and its precision (benchmarks and tests build their
  models directly); `devices` (jit only) limits the mesh, which defaults to every device.
  """
  config = ConfigDict(config.to_dict())  # a resolved copy; the caller's config is untouched
  check_values(config)
  if model is None:
    config.precision = resolve_precision(config.precision)
    model = build_model(config, num_classes, image_shape[-1])
  else:
    config.precision = jax.numpy.dtype(model.dtype).name
  try:
    parallel.check_batch_size(config.batch_size)
    parallel.check_batch_size(config.eval_batch_size or config.batch_size)
  except ValueError as error:
    raise ConfigError(str(error)) from None
  steps_per_epoch = train_examples / config.batch_size
  total_steps = config.num_train_steps or math.ceil(config.num_epochs * steps_per_epoch)
  if total_steps < 1:
    raise ConfigError(f"the train split has {train_examples} examples: nothing to train on")
  config.num_train_steps = total_steps
  config.learning_rate_resolved = optim.base_learning_rate(config)
  config.num_classes = num_classes
  schedule = optim.create_schedule(config, total_steps, steps_per_epoch)
  tx = optim.create_optimizer(config, schedule)
  step_cfg = step_lib.StepConfig(model=model, tx=tx, schedule=schedule, num_classes=num_classes,
                                 label_smoothing=config.label_smoothing,
                                 ema_decay=config.ema_decay)
  runner = parallel.create(config.parallel, step_cfg, devices=devices, bn_span=config.bn_span)
  return Recipe(config, model, tuple(image_shape), total_steps, steps_per_epoch, schedule, tx,
                runner)
