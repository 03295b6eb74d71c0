"""`--mode=eval`: a checkpoint of a workdir (or an export) evaluated on the eval split.

The checkpoints are only read (a run may be training there): nothing is cleaned or moved, and the
one file written is the result, eval_<split>_<checkpoint>.json.
"""

import json
import os

import jax
from ml_collections import ConfigDict

from jresnet import data, export
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import loop, parallel, records, run_config
from jresnet.training.model import model_meta
from jresnet.training.step import evaluate


class NoCheckpointError(FileNotFoundError):
  """The workdir holds no checkpoint of the kind asked for; the message says which."""


def _restore(config: ConfigDict, runner: parallel.Runner, image_shape: tuple,
             workdir: str) -> tuple[dict, str]:
  """Variables of checkpoint `eval_checkpoint` of `workdir`: 'latest' (the newest that reads
  back intact), 'best' or a step. The checkpoints are only read: a run may be training there."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise NoCheckpointError(f"no checkpoints in {workdir}: nothing to evaluate (train there "
                            "first, or set --config.eval_checkpoint to an exported .msgpack)")
  checkpoints = checkpoint_lib.Checkpoints(directory, read_only=True)
  which = str(config.eval_checkpoint)
  step = {"latest": checkpoints.latest_step,
          "best": checkpoints.best_step}.get(which, lambda: int(which))()
  saved = ", ".join(map(str, checkpoints.all_steps()))
  if step is None or str(step) not in saved.split(", "):
    raise NoCheckpointError(
        f"no evaluated checkpoint in {directory} (saved without an evaluation: steps {saved}); "
        "use --config.eval_checkpoint=latest or a step" if saved and which == "best" else
        f"no checkpoint ({which}) in {directory}" + (f"; it holds steps {saved}" if saved else ""))
  meta = {"model": model_meta(runner.model, runner.replicas)}
  checkpoints.check_model(step, meta)
  target = runner.get_state(loop.init_state(config, runner, image_shape))
  if which == "latest":
    step, state = checkpoints.restore_newest(target, meta)
  else:
    state = checkpoints.restore(step, target, meta)
  checkpoints.close()
  loop.say(f"evaluating checkpoint {step} of {directory}")
  return runner.put_state(state).eval_variables(runner.use_ema), str(step)


def _eval_advice(message: str, cfg: ConfigDict, workdir: str) -> str:
  """A mismatch in eval mode: name the config fields to give, not a fresh workdir."""
  message = message.split("\nUse a fresh --workdir")[0]
  fields = run_config.differing_fields(cfg, workdir)
  if fields:
    return f"{message}\nThe run was trained with {', '.join(fields)}: drop or change these flags."
  return (f"{message}\nEvaluate with the training run's model settings: give its --config.model.* "
          f"flags (e.g. --config.model.depth=...), or keep {workdir}/config.json, which eval mode "
          "reads.")


def evaluate_checkpoint(config: ConfigDict, workdir: str) -> dict:
  """`config.eval_checkpoint` ('latest', 'best', a step of `workdir`'s checkpoints, or an
  exported `.msgpack` file, whose own architecture is used) on `config.data.eval_split`; writes
  eval_<split>_<checkpoint>.json into the workdir."""
  run_config.check_values(config)
  dataset = data.open(config.data)
  info = dataset.info
  if str(config.eval_checkpoint).endswith(".msgpack"):
    model, variables = export.load(config.eval_checkpoint)
    if model.num_classes != info.num_classes:
      raise ValueError(f"{config.eval_checkpoint} has {model.num_classes} classes, the data "
                       f"{info.num_classes}")
    config, runner = loop.build(config, info, model=model)
    variables, which = runner.put_state(variables), os.path.basename(config.eval_checkpoint)
  else:
    config, runner = loop.build(config, info)
    try:
      variables, which = _restore(config, runner, info.image_shape, workdir)
    except checkpoint_lib.CheckpointMismatchError as e:
      raise checkpoint_lib.CheckpointMismatchError(_eval_advice(str(e), config, workdir)) from None
  metrics = records.across_replicas(evaluate(runner, variables, dataset.eval_batches(
      runner.batch_sharding, batch_size=config.eval_batch_size or config.batch_size)))
  metrics["checkpoint"] = which
  split = info.eval_split
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    name = f"eval_{split}_{which}.json".replace("/", "_")
    with open(os.path.join(workdir, name), "w") as f:
      json.dump({"split": split, **metrics}, f, indent=2)
  return metrics
