"""A run's config: its values checked, resolved for the dataset, and kept in the workdir's
config.json, which a resume must agree with and an evaluation starts from.

`resolve` is what a training run computes with and writes: the values the config leaves to the run
(precision, steps, learning rate, number of classes), the dataset's class names, the data preset
as applied (image size, mean, std, preset, eval split), and of the data fields that only one
source reads, only those of the run's source. A run writes it when it starts from step 0, and a
resume keeps it:
`check_same_run` refuses a resume that would change a field of the computation (all but
FREE_FIELDS). `for_eval` starts `--mode=eval` from that file, so that the training run's overrides
need not be given again; the fields given on the command line still win, and the machine's own
(MACHINE_FIELDS) are not taken. `from_workdir` is that file alone, for an evaluation given no
config file.
"""

import json
import math
import os

import jax
from flax import traverse_util
from ml_collections import ConfigDict

from jresnet.training import optim, parallel

CONFIG_FILE = "config.json"
# config.data fields that only one source reads.
SOURCE_FIELDS = {"tfds": ("name", "data_dir", "manual_dir", "download"), "folder": ("path",),
                 "arrays": ("path",),
                 "synthetic": ("num_classes", "image_shape", "num_examples", "synthetic_seed")}
# Fields chosen for the machine that trained (tf.data threads: by its cores and accelerator),
# which an evaluation on another machine should choose for itself.
MACHINE_FIELDS = ("data.threads",)
# Fields that change nothing a run computes, which its resume may give new values: how often it
# logs, evaluates and checkpoints, how many checkpoints it keeps and how it writes them, when this
# invocation stops, how many steps a compiled call runs, how the eval batches are cut, the
# machine's threads and prefetch, where the same data and the caches are found, and the
# compilation cache. Every other field must keep its value over the whole run.
FREE_FIELDS = (
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "async_checkpoints", "stop_after_steps", "eval_checkpoint", "eval_batch_size",
    "compilation_cache_dir", "model.remat", "steps_per_call", *MACHINE_FIELDS, "data.prefetch",
    "data.path", "data.data_dir", "data.manual_dir", "data.download", "data.cache_dir",
    "distributed.initialization_timeout_s", "distributed.heartbeat_timeout_s")
# Paths a run may leave unset; on the command line 'None' and '' both mean unset (None), or, for
# those whose '' means "off", both mean off.
OPTIONAL_PATHS = ("init_from", "data.path", "data.data_dir", "data.manual_dir")
OFF_PATHS = ("compilation_cache_dir", "data.cache_dir")


ACCELERATOR_BACKENDS = ("gpu", "cuda", "rocm", "tpu")
PRECISION_ALIASES = {"bf16": "bfloat16", "fp32": "float32"}


class RunConfigError(ValueError):
  """The workdir's config.json does not allow this run: another run's values, or unreadable."""


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


# What config.sweep may vary, and how a replica's step takes it (TrainState.hyperparams).
SWEEPABLE = {"optimizer.learning_rate": "learning_rate_scale",
             "optimizer.weight_decay": "weight_decay", "label_smoothing": "label_smoothing"}


def sweep(config: ConfigDict) -> dict[str, list[float]]:
  """config.sweep: {field: values}, the same number of values for every field ({} for none);
  ConfigError for JSON that is not that, a field that cannot be swept or a value out of range."""
  if not config.sweep:
    return {}
  try:
    points = json.loads(config.sweep)
  except ValueError as e:
    raise ConfigError(f"sweep={config.sweep!r} is not JSON ({e}); write e.g. "
                      "--config.sweep='{\"optimizer.learning_rate\": [0.05, 0.1, 0.2]}'") from None
  if not isinstance(points, dict) or not points or not all(
      isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)
      for v in points.values()):
    raise ConfigError(f"sweep={config.sweep!r} must map fields to lists of numbers")
  unknown = sorted(set(points) - set(SWEEPABLE))
  if unknown:
    raise ConfigError(f"sweep: {', '.join(unknown)} cannot be swept in one program; these can: "
                      f"{', '.join(SWEEPABLE)}")
  if len({len(v) for v in points.values()}) > 1:
    raise ConfigError(f"sweep: every field needs as many values ({config.sweep})")
  bad = [f"{field}={value!r} must be in {_interval(*VALUE_RANGES[field])}"
         for field, values in points.items() for value in values
         if not _inside(value, *VALUE_RANGES[field])]
  if bad:
    raise ConfigError(f"sweep: {'; '.join(bad)}")
  if "optimizer.learning_rate" in points and not config.optimizer.learning_rate:
    raise ConfigError("sweep over optimizer.learning_rate scales the configured schedule: give "
                      "a non-zero --config.optimizer.learning_rate")
  return {field: [float(v) for v in values] for field, values in points.items()}


def replicas(config: ConfigDict) -> list[tuple[int, dict]]:
  """(seed, {field: value}) of each replica: each sweep point in order, for each of
  config.replicas seeds (seed, seed + 1, ...); one replica without either."""
  points = sweep(config)
  count = len(next(iter(points.values()))) if points else 1
  return [(config.seed + j, {field: values[s] for field, values in points.items()})
          for s in range(count) for j in range(config.replicas)]


def replica_hyperparams(config: ConfigDict) -> dict[str, list[float]]:
  """Each swept hyperparameter of every replica, as its step takes it (TrainState.hyperparams):
  the learning rate as a scale of the configured schedule."""
  settings = [values for _, values in replicas(config)]
  out = {}
  for field in sweep(config):
    values = [point[field] for point in settings]
    if field == "optimizer.learning_rate":
      values = [v / config.optimizer.learning_rate for v in values]
    out[SWEEPABLE[field]] = values
  return out


def check_steps_per_call(config: ConfigDict, total_steps: int) -> None:
  """K = steps_per_call steps run in one call, so every step the loop acts at (logging,
  evaluation, checkpoints, the end, a stop) must be a multiple of K: ConfigError naming the field
  that is not."""
  k = config.steps_per_call
  if k == 1:
    return
  if config.parallel != "jit":
    raise ConfigError(f"steps_per_call={k} needs parallel='jit' (the pmap runner runs one step a "
                      "call)")
  fields = {"num_train_steps": total_steps, "log_every_steps": config.log_every_steps,
            "eval_every_steps": config.eval_every_steps,
            "checkpoint_every_steps": config.checkpoint_every_steps,
            "stop_after_steps": config.stop_after_steps}
  multiples = lambda value: " or ".join(str(m) for m in (value // k * k, value // k * k + k) if m)
  bad = [f"{field}={value} (e.g. {multiples(value)})"
         for field, value in fields.items() if value and value % k]
  if bad:
    raise ConfigError(f"steps_per_call={k} runs {k} steps a call, so the loop acts only at "
                      f"multiples of {k}, and these are not: {', '.join(bad)}; set them to "
                      "multiples, or choose a steps_per_call that divides them")


def steps_per_epoch(config: ConfigDict, info) -> float:
  """Train steps per pass over the train split of the dataset `info` describes."""
  return info.split_sizes[config.data.train_split] / config.batch_size


def resolve(config: ConfigDict, info) -> ConfigDict:
  """The run's config on the dataset `info` (a `jresnet.data.DatasetInfo`) describes: a copy
  with what the config leaves to the run filled in (precision, num_train_steps,
  learning_rate_resolved, num_classes, the eval split used and the preset as applied), and of
  the data fields that only one source reads, only those of the run's source. It is what the
  run computes with and what config.json records. ConfigError, before anything is compiled, for
  a value out of range, a precision, batch size or run length no run can use."""
  check_values(config)
  values = config.to_dict()
  values["precision"] = resolve_precision(config.precision)
  for field in ("batch_size", "eval_batch_size"):
    try:
      parallel.check_batch_size(config[field] or config.batch_size)
    except ValueError as error:
      raise ConfigError(str(error)) from None
  total_steps = config.num_train_steps or math.ceil(config.num_epochs *
                                                   steps_per_epoch(config, info))
  if total_steps < 1:
    raise ConfigError(f"the train split has {info.split_sizes[config.data.train_split]} "
                      "examples: nothing to train on")
  check_steps_per_call(config, total_steps)
  count = len(replicas(config))
  what = f"replicas={config.replicas}" + (f" and sweep={config.sweep}" if config.sweep else "")
  if count > 1 and config.parallel != "jit":
    raise ConfigError(f"{what} need parallel='jit' (runs side by side are vmapped within one "
                      "jitted program)")
  if count > 1 and config.init_from:
    raise ConfigError(f"{what} start every replica afresh; init_from (one set of weights) is for "
                      "a single run: drop one of the two")
  values.update(num_train_steps=total_steps, num_classes=info.num_classes,
                learning_rate_resolved=optim.base_learning_rate(config))
  data = values["data"]
  kept = set(SOURCE_FIELDS.get(data["source"], ()))
  for fields in SOURCE_FIELDS.values():
    for field in set(fields) - kept:
      data.pop(field, None)
  if info.eval_transform:
    data.update(mean=tuple(info.eval_transform["mean"]), std=tuple(info.eval_transform["std"]))
  if info.image_shape[0] == info.image_shape[1]:  # square: what image_size gives
    data["image_size"] = info.image_shape[0]
  if info.preset:
    data["preprocess"] = info.preset
  data["eval_split"] = info.eval_split or data["eval_split"]
  if info.class_names:
    values["class_names"] = list(info.class_names)
  return ConfigDict(values)


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
        "steps_per_call", "replicas",
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
    "seed": (0, 2**31 - 1, True, True),  # an int32: an argument of the compiled initialisation
}


def _interval(low, high, low_included, high_included) -> str:
  def bound(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"

  return f"{'[' if low_included else '('}{bound(low)}, {bound(high)}{']' if high_included else ')'}"


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
    value = field_value(config, field)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if value is not None and not all(_inside(v, *interval) for v in values):
      words = "positive, in" if interval[:3] == (0, math.inf, False) else "in"
      bad.append(f"{field}={value!r} must be {words} {_interval(*interval)}")
  if bad:
    raise ConfigError(f"{'; '.join(bad)} (config fields out of range)")


def unset_paths(config: ConfigDict) -> ConfigDict:
  """`config` (a copy, where it changes) with each of OPTIONAL_PATHS and OFF_PATHS given as
  'None' or '' on the command line as unset, or off."""
  changes = {field: None if field in OPTIONAL_PATHS else ""
             for field in OPTIONAL_PATHS + OFF_PATHS if field_value(config, field) in ("None", "")}
  if not changes:
    return config
  config = ConfigDict(config.to_dict())
  for field, value in changes.items():
    set_field(config, field, value)
  return config


def field_value(config: ConfigDict, field: str):
  """The value of the dotted `field` ('data.image_size')."""
  for key in field.split("."):
    config = config[key]
  return config


def set_field(config: ConfigDict, field: str, value) -> None:
  """Sets the dotted `field`."""
  *parents, leaf = field.split(".")
  target = field_value(config, ".".join(parents)) if parents else config
  target[leaf] = value


def _flat(tree: dict) -> dict:
  return traverse_util.flatten_dict(tree, sep=".")


def saved(workdir: str) -> dict | None:
  """The workdir's config.json; None if it has none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise RunConfigError(f"{path} is not a config ({e}): restore it from a backup, or move it "
                         "aside to go on without the training run's values") from None


def check_same_run(config: ConfigDict, workdir: str) -> None:
  """Raises RunConfigError, naming each field with its stored and given value, if `config` (as
  `resolve` gives it) differs from the workdir's config.json in a field of the computation.
  Fields that only one of the two has (added or removed by a code change) are not compared."""
  stored = saved(workdir)
  if stored is None:
    return
  stored, given = _flat(stored), _flat(json.loads(config.to_json_best_effort()))
  compared = sorted((stored.keys() & given.keys()) - set(FREE_FIELDS))
  changed = [f"{k}: stored {stored[k]!r}, given {given[k]!r}" for k in compared
             if _value(stored[k]) != _value(given[k])]
  if changed:
    raise RunConfigError(
        f"{workdir} holds a run with other values ({'; '.join(changed)}): a resumed run is the "
        f"same run. Give the stored values ({os.path.join(workdir, CONFIG_FILE)}), or train anew "
        f"in another --workdir with --config.init_from={workdir} to start from this run's "
        "weights.")


def _value(value):
  return tuple(_value(v) for v in value) if isinstance(value, list) else value


def for_eval(config: ConfigDict, workdir: str, overrides: dict) -> ConfigDict:
  """`config` with the values of `workdir`'s config.json, except the fields in `overrides` (the
  command line's, by dotted name); unchanged if the workdir has no config.json."""
  values = saved(workdir)
  if values is None:
    return config
  config = ConfigDict(config.to_dict())
  known = _flat(config.to_dict())
  for key, value in _flat(values).items():
    if key in known and key not in overrides and key not in MACHINE_FIELDS:
      set_field(config, key, _value(value))
  return config


def from_workdir(base: ConfigDict, workdir: str) -> ConfigDict:
  """The config of the run in `workdir` (its config.json over `base`, the defaults), for an
  evaluation given no config file; RunConfigError if the workdir has no config.json."""
  if saved(workdir) is None:
    raise RunConfigError(f"{os.path.join(workdir, CONFIG_FILE)} does not exist: without --config, "
                         "eval mode reads the run's config from there. Give --workdir of a run, "
                         "or --config (the run's config file)")
  return for_eval(base, workdir, {})


def differing_fields(config: ConfigDict, workdir: str) -> list[str]:
  """The model fields (and a set data.image_size) in which `config` differs from the run's
  config.json, as the flags that would give the run's values."""
  values = saved(workdir)
  if values is None:
    return []
  ours, theirs = _flat(config.to_dict()), _flat(values)
  keys = [k for k in theirs if k.startswith("model.")]
  if ours.get("data.image_size") is not None:
    keys.append("data.image_size")
  return [f"--config.{k}={theirs[k]!r} (this command: {ours.get(k)!r})" for k in sorted(keys)
          if k in ours and _value(theirs[k]) != _value(ours[k])]
