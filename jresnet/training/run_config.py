"""The workdir's config.json: what a run used, what its resume must keep, and the base of an
evaluation of that run.

`resolved` is what a training run writes: the recipe's resolved values (precision, steps, learning
rate, number of classes), the dataset's class names, the data preset as applied (image size, mean,
std, preset, eval split), and of the data fields that only one source reads, only those of the
run's source. A run writes it when it starts from step 0, and a resume keeps it:
`check_same_run` refuses a resume that would change a field of the computation (all but
FREE_FIELDS). `for_eval` starts `--mode=eval` from that file, so that the training run's overrides
need not be given again; the fields given on the command line still win, and the machine's own
(MACHINE_FIELDS) are not taken. `from_workdir` is that file alone, for an evaluation given no
config file.
"""

import json
import os

from flax import traverse_util
from ml_collections import ConfigDict

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
# invocation stops, how the eval batches are cut, the machine's threads and prefetch, where the
# same data and the caches are found, and the compilation cache. Every other field must keep its
# value over the whole run.
FREE_FIELDS = (
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "async_checkpoints", "stop_after_steps", "eval_checkpoint", "eval_batch_size",
    "compilation_cache_dir", "model.remat", *MACHINE_FIELDS, "data.prefetch", "data.path",
    "data.data_dir", "data.manual_dir", "data.download", "data.cache_dir",
    "distributed.initialization_timeout_s", "distributed.heartbeat_timeout_s")
# Paths a run may leave unset; on the command line 'None' and '' both mean unset (None), or, for
# those whose '' means "off", both mean off.
OPTIONAL_PATHS = ("init_from", "data.path", "data.data_dir", "data.manual_dir")
OFF_PATHS = ("compilation_cache_dir", "data.cache_dir")


class RunConfigError(ValueError):
  """The workdir's config.json does not allow this run: another run's values, or unreadable."""


def resolved(config: ConfigDict, info) -> ConfigDict:
  """`config` (a recipe's resolved copy) as the run used it on the dataset `info` describes."""
  values = config.to_dict()
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
  `resolved` gives it) differs from the workdir's config.json in a field of the computation.
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
