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

import argparse
import functools
import importlib.util
import pathlib
import sys
import textwrap
import types
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
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
  if act is not nn.relu:
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


# --- the example's config -> a jresnet train.py config ------------------------------------------

TRANSLATE_COMMAND = "python -m jresnet.compat.flax_imagenet translate-config"
_MODEL_CONFIGS = {
    **{f"ResNet{depth}": {"depth": depth} for depth in (18, 34, 50, 101, 152, 200)},
    "_ResNet1": {"depth": None, "stage_sizes": (1,), "block": "basic"},
}
_EXAMPLE_FIELDS = ("model", "dataset", "learning_rate", "warmup_epochs", "momentum", "batch_size",
                   "shuffle_buffer_size", "prefetch", "num_epochs", "log_every_steps", "cache",
                   "half_precision", "num_train_steps", "steps_per_eval", "profile")


def is_example_config(config) -> bool:
  """True for a config of the example's train.py (a model name and `half_precision`)."""
  return isinstance(config.get("model"), str) and "half_precision" in config


def translation_hint(path: str) -> str:
  """One line for a run started with the example's config file `path`."""
  return (f"{path} is a config of flax's examples/imagenet: write jresnet's equivalent with "
          f"`{TRANSLATE_COMMAND} {path} --train-examples <train split size> > configs/<name>.py`")


def load_example_config(path: str):
  """`get_config()` of one of the example's config files. Their `from configs import default`
  finds the example's own `configs` directory, the file's, not jresnet's."""
  path = pathlib.Path(path).resolve()
  ours = {name: sys.modules.pop(name) for name in list(sys.modules)
          if name == "configs" or name.startswith("configs.")}
  package = types.ModuleType("configs")
  package.__path__ = [str(path.parent)]
  sys.modules["configs"] = package
  try:
    spec = importlib.util.spec_from_file_location(f"configs.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
  finally:
    for name in [n for n in sys.modules if n == "configs" or n.startswith("configs.")]:
      del sys.modules[name]
    sys.modules.update(ours)


def translate_config(example, train_examples: int, source: str = "") -> tuple[str, list[str]]:
  """The text of a jresnet config file equivalent to the example's `example` config, and what
  does not carry over.

  The learning rate, its warm-up and cosine decay, the step count and the checkpoint interval
  follow the example's whole steps per epoch (`train_examples // batch_size`), so the schedule is
  the example's step for step; `train_examples` is the size of the train split.
  """
  if example.model not in _MODEL_CONFIGS:
    local = "; nn.ConvLocal is not offered" if example.model.endswith("Local") else ""
    raise ValueError(f"model={example.model!r}: jresnet translates "
                     f"{', '.join(_MODEL_CONFIGS)}{local}")
  batch, epochs, warmup = example.batch_size, example.num_epochs, example.warmup_epochs
  steps_per_epoch = train_examples // batch
  not_mapped = [f"{key}={example[key]!r}: not an option of the example's train.py"
                for key in example if key not in _EXAMPLE_FIELDS]
  if float(warmup * steps_per_epoch) != round(warmup * steps_per_epoch):
    not_mapped.append(f"warmup_epochs={warmup}: {warmup * steps_per_epoch} warm-up steps; "
                      "jresnet warms up for a whole number of steps")
  if epochs - warmup < 1:
    not_mapped.append("num_epochs - warmup_epochs < 1: the example decays over one epoch, "
                      "jresnet over the steps after the warm-up")
  if example.get("steps_per_eval", -1) > 0:
    not_mapped.append(f"steps_per_eval={example.steps_per_eval}: jresnet evaluates the whole "
                      "validation split")
  if example.get("profile", False):
    not_mapped.append("profile=True: jresnet does not profile its steps")
  not_mapped.append("the input pipeline: the same recipe (Inception crop and flip at 224; "
                    "centre crop 0.875) by jresnet.data, not the same pixels")
  not_mapped.append("initialisation: jresnet draws kernels as torchvision does (fan-out He "
                    "normal), the example with LeCun normal")
  lines = [
      f'"""flax\'s examples/imagenet config {source or "(given)"}, translated by',
      f"`{TRANSLATE_COMMAND}`.",
      "",
      "Not carried over:",
      *(line for item in not_mapped
        for line in textwrap.wrap(item, 100, initial_indent="  - ", subsequent_indent="    ")),
      '"""',
      "",
      "from configs import default",
      "",
      "# The example counts whole steps per epoch: train examples // batch size.",
      f"TRAIN_EXAMPLES = {train_examples}",
      f"STEPS_PER_EPOCH = TRAIN_EXAMPLES // {batch}",
      "",
      "",
      "def get_config():",
      "  c = default.get_config()",
      '  c.data.source = "tfds"',
      f'  c.data.name = "{example.dataset}"',
      '  c.data.train_split = "train"',
      '  c.data.eval_split = "validation"',
      '  c.data.preprocess = "imagenet"',
      "  c.data.image_size = 224",
      f"  c.data.shuffle_buffer = {example.get('shuffle_buffer_size', 16 * batch)}",
      f"  c.data.prefetch = {example.get('prefetch', 10)}",
      f"  c.data.cache = {bool(example.get('cache', False))}",
      f"  # {example.model}, padded as the example pads: its checkpoints convert exactly",
      '  c.model.family = "imagenet"',
      *(f"  c.model.{key} = {value!r}" for key, value in _MODEL_CONFIGS[example.model].items()),
      '  c.model.padding = "same"',
      f"  c.batch_size = {batch}",
      f"  c.num_epochs = {epochs!r}",
      f"  c.num_train_steps = int(STEPS_PER_EPOCH * {epochs!r})",
  ]
  if example.get("num_train_steps", -1) > 0:
    lines += ["  # the example's num_train_steps: it stops early, on the schedule of num_epochs",
              f"  c.stop_after_steps = {example.num_train_steps}"]
  lines += [
      '  c.optimizer.name = "sgd"',
      f"  c.optimizer.learning_rate = {example.learning_rate!r}",
      "  c.optimizer.lr_base_batch = 256",
      f"  c.optimizer.momentum = {example.momentum!r}",
      "  c.optimizer.nesterov = True",
      "  c.optimizer.weight_decay = 1e-4  # the example's loss term 1e-4 / 2 * |kernels|^2",
      "  c.weight_decay_mask = True",
      '  c.schedule.name = "cosine"',
      "  c.schedule.warmup_start_lr = 0.0",
      "  c.schedule.final_lr_fraction = 0.0",
      "  # the example's warm-up steps, in jresnet's epochs of TRAIN_EXAMPLES / batch_size steps",
      f"  c.schedule.warmup_epochs = {warmup!r} * STEPS_PER_EPOCH / (TRAIN_EXAMPLES / {batch})",
      '  c.precision = "bfloat16"  # half_precision (fp16 loss scaling is not offered)'
      if example.get("half_precision") else '  c.precision = "float32"',
      f"  c.log_every_steps = {example.get('log_every_steps', 100)}",
      "  c.checkpoint_every_steps = 10 * STEPS_PER_EPOCH",
      "  c.keep_checkpoints = 3",
      "  return c",
  ]
  return "\n".join(lines) + "\n", not_mapped


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m jresnet.compat.flax_imagenet",
      description="Writes the jresnet train.py config equivalent to a config of flax's "
                  "examples/imagenet to stdout; what does not carry over goes to stderr.")
  commands = parser.add_subparsers(dest="command", required=True)
  translate = commands.add_parser("translate-config")
  translate.add_argument("config", help="the example's config file, e.g. configs/default.py")
  translate.add_argument("--train-examples", type=int, required=True,
                         help="the size of the dataset's train split (imagenet2012: 1281167)")
  args = parser.parse_args(argv)
  example = load_example_config(args.config)
  if args.train_examples < example.batch_size:
    parser.error(f"--train-examples={args.train_examples} is less than one batch of "
                 f"{example.batch_size}")
  text, not_mapped = translate_config(example, args.train_examples, args.config)
  sys.stdout.write(text)
  for item in not_mapped:
    print(f"not carried over: {item}", file=sys.stderr)


if __name__ == "__main__":
  main()
