"""Orbax checkpoints of the train state: asynchronous, atomic, the last K plus the best kept.

Each checkpoint holds the state (a plain nested dict of arrays) and a JSON `meta` item (the model
architecture, the evaluation metrics of that step). Orbax writes into a temporary directory and
renames it when complete, so a crash or SIGKILL mid-save leaves the previous checkpoint intact;
`restore` refuses a checkpoint that does not fit the configured model and says where it differs.
"""

import logging
import os

import flax.serialization
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

from jresnet.training.state import TrainState


class CheckpointMismatchError(ValueError):
  """The checkpoint was written for a different model or optimiser than the config describes."""


def _shape_dtype(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  # numpy scalars pass through ocp.utils.to_shape_dtype_struct and break restore (STACK.md).
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def model_differences(saved_meta: dict, target_meta: dict) -> list[str]:
  """Architecture fields (depth, stages, widths, classes, ...) on which the two disagree."""
  return [f"model {k}: checkpoint has {saved_meta['model'].get(k)!r}, config has {v!r}"
          for k, v in target_meta["model"].items() if saved_meta["model"].get(k) != v]


def tree_differences(saved_tree, target_tree) -> list[str]:
  """Tensors missing on either side or of another shape, by path."""
  arrays = lambda tree: {k: v for k, v in traverse_util.flatten_dict(tree, sep="/").items()
                         if v is not None}
  saved, target = arrays(saved_tree), arrays(target_tree)
  lines = []
  for path in sorted(set(saved) | set(target)):
    if path not in target:
      lines.append(f"{path}: in the checkpoint, not in the model")
    elif path not in saved:
      lines.append(f"{path}: in the model, not in the checkpoint")
    elif tuple(saved[path].shape) != tuple(target[path].shape):
      lines.append(f"{path}: checkpoint shape {tuple(saved[path].shape)}, "
                   f"model shape {tuple(target[path].shape)}")
  return lines


class Checkpoints:
  """A CheckpointManager for TrainStates in `directory`."""

  def __init__(self, directory: str, keep: int = 2, async_save: bool = True):
    self.directory = epath.Path(os.path.abspath(os.path.expanduser(directory)))  # orbax: absolute
    keep_policy = policy.AnyPreservationPolicy([
        policy.LatestN(n=keep),
        policy.BestN(get_metric_fn=lambda m: m["accuracy"], reverse=False, n=1,
                     keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=keep_policy,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The kept step with the highest evaluation accuracy (None if none was evaluated)."""
    scored = [(meta["metrics"]["accuracy"], step) for step in self.manager.all_steps()
              if (meta := self.meta(step)).get("metrics")]
    return max(scored)[1] if scored else None

  def meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def save(self, state: TrainState, meta: dict, metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` at its step; returns once the arrays are copied."""
    step = int(jax.device_get(state.step))
    meta = {**meta, "metrics": metrics}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)

  def _refuse(self, step: int, problems: list[str]) -> None:
    if problems:
      more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} does not fit the configured model:\n  "
          + "\n  ".join(problems[:12]) + more
          + "\nUse a fresh --workdir, or the config the checkpoint was written with.")

  def check_model(self, step: int, target_meta: dict) -> None:
    """Cheap early check (no arrays read) that `step` was written for this architecture."""
    self._refuse(step, model_differences(self.meta(step), target_meta))

  def restore(self, step: int, target: TrainState, target_meta: dict) -> TrainState:
    """Restores `step` into the structure, shapes and shardings of `target` (arrays or specs)."""
    target_tree = jax.tree.map(_shape_dtype, flax.serialization.to_state_dict(target))
    saved_tree = self.manager.item_metadata(step)["state"].tree
    self._refuse(step, model_differences(self.meta(step), target_meta)
                 + tree_differences(saved_tree, target_tree))
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target_tree)))["state"]
    logging.info("restored checkpoint %s", self.directory / str(step))
    return flax.serialization.from_state_dict(target, restored)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
