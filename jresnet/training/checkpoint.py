"""Orbax checkpoints of the train state: asynchronous, atomic, the last K plus the best kept.

Each checkpoint holds the state (a plain nested dict of arrays) and a JSON `meta` item (the model
architecture, the evaluation metrics of that step, and the sha256 of every array). Orbax writes
into a temporary directory and renames it when complete, so a crash or SIGKILL mid-save leaves the
previous checkpoint intact; `restore` refuses a checkpoint that does not fit the configured model
and says where it differs, and one whose files do not read back as written (missing or damaged
files, flipped bytes: the digests). `restore_newest` then moves it aside, never deleting it, and
resumes from the newest one that is intact. A state with NaN or infinity is neither saved nor
resumed from.

Only the run that holds the workdir lock writes: it saves, cleans up the temporary directories of
saves that a killed run left, and moves corrupt checkpoints aside. Everyone else (eval mode,
`init_from`, a look at a run in progress) opens the directory `read_only`, and a save in progress
there is left to the run that is writing it.
"""

import logging
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from orbax.checkpoint.checkpoint_managers import preservation_policy as policy

from jresnet.integrity import differing, digests, host_arrays
from jresnet.training.state import TrainState


class CheckpointMismatchError(ValueError):
  """The checkpoint was written for a different model or optimiser than the config describes."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's files do not read back as they were written."""


class NonFiniteStateError(FloatingPointError):
  """A train state holds NaN or infinity: it is not saved, and not resumed from."""


def non_finite(arrays: dict[str, np.ndarray]) -> list[str]:
  """Paths of the floating-point arrays that hold NaN or infinity."""
  return [path for path, x in arrays.items()
          if jnp.issubdtype(x.dtype, jnp.floating) and not np.isfinite(x).all()]


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = f"{type(error).__name__}: {str(error).strip()}".splitlines()[0]
  return text if len(text) <= limit else text[:limit] + "..."


def _shape_dtype(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  # numpy scalars pass through ocp.utils.to_shape_dtype_struct and break restore.
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def model_differences(saved_meta: dict, target_meta: dict) -> list[str]:
  """Architecture fields (depth, stages, widths, classes, ...) and replica counts on which the two
  disagree (a meta without `replicas` holds one run)."""
  saved, target = saved_meta["model"], {"replicas": 1, **target_meta["model"]}
  return [f"model {k}: checkpoint has {saved.get(k, 1 if k == 'replicas' else None)!r}, config "
          f"has {v!r}" for k, v in target.items()
          if saved.get(k, 1 if k == "replicas" else None) != v]


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

  def __init__(self, directory: str, keep: int = 2, async_save: bool = True,
               verify: bool = True, read_only: bool = False):
    """`verify`: digest every array on save and check the digests on restore. `read_only`: for
    readers; nothing in `directory` is created, cleaned up, saved, deleted or moved aside."""
    self.directory = epath.Path(os.path.abspath(os.path.expanduser(directory)))  # orbax: absolute
    self.verify = verify
    self.read_only = read_only
    if read_only:  # (the options orbax would reset for a reader, set here: no warnings)
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                             enable_async_checkpointing=False)
    else:
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

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def saved_state(self, step: int) -> dict:
    """Checkpoint `step`'s train state as saved (nested dicts of arrays), with no target to
    restore into: what `init_from` reads from another run. Checked as `restore` checks."""
    path = self.directory / str(step)
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))["state"]
      self._check_arrays(step, host_arrays(state), self.meta(step))
    except (NonFiniteStateError, CorruptCheckpointError):
      raise
    except Exception as e:  # noqa: BLE001 (whatever the files did, the checkpoint is unusable)
      raise CorruptCheckpointError(f"checkpoint {path} does not read back: "
                                   f"{_first_line(e)}") from e
    return state

  def best_step(self) -> int | None:
    """The kept step with the highest evaluation accuracy (None if none was evaluated)."""
    scored = []
    for step in self.manager.all_steps():
      try:
        metrics = self.meta(step).get("metrics")
      except CorruptCheckpointError:  # an unreadable checkpoint is no candidate
        continue
      if metrics:
        scored.append((metrics["accuracy"], step))
    return max(scored)[1] if scored else None

  def meta(self, step: int) -> dict:
    """Checkpoint `step`'s JSON item; CorruptCheckpointError, naming it, if that does not read."""
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
      if not isinstance(meta, dict):
        raise TypeError(f"meta is a {type(meta).__name__}, not a JSON object")
      return meta
    except Exception as e:  # noqa: BLE001 (garbled, missing or foreign: unusable either way)
      raise CorruptCheckpointError(f"checkpoint {self.directory / str(step)} does not read "
                                   f"back: {_first_line(e)}") from e

  def latest_readable_step(self) -> int | None:
    """The newest step whose meta reads back (what a finished run reports from). Each newer one
    is named in one line, and moved aside unless `read_only`."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        self.meta(step)
        return step
      except CorruptCheckpointError as e:
        self._discard(step, e)
    return None

  def save(self, state: TrainState, meta: dict, metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` at its step; returns once the arrays are copied.
    Raises NonFiniteStateError, saving nothing, if `state` holds NaN or infinity."""
    if self.read_only:
      raise PermissionError(f"{self.directory} was opened read-only: nothing is saved")
    step = int(np.asarray(jax.device_get(state.step)).flat[0])  # (every replica at one step)
    tree = flax.serialization.to_state_dict(state)
    meta = {**meta, "metrics": metrics}
    if self.verify:
      arrays = host_arrays(tree)
      if bad := non_finite(arrays):
        raise NonFiniteStateError(f"step {step} not saved: non-finite values in "
                                  f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
      meta["digests"] = digests(arrays)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def _refuse(self, step: int, problems: list[str]) -> None:
    if problems:
      more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
      raise CheckpointMismatchError(
          f"checkpoint {self.directory / str(step)} does not fit the configured model:\n  "
          + "\n  ".join(problems[:12]) + more
          + "\nUse a fresh --workdir, or the config the checkpoint was written with.")

  def check_model(self, step: int, target_meta: dict) -> None:
    """Cheap early check (no arrays read) that `step` was written for this architecture. A meta
    that does not read back is left to `restore`, which reports it as corrupt."""
    try:
      saved = self.meta(step)
    except CorruptCheckpointError:
      return
    self._refuse(step, model_differences(saved, target_meta))

  def _check_arrays(self, step: int, arrays: dict[str, np.ndarray], saved_meta: dict) -> None:
    """Raises if `arrays` differ from the digests recorded at saving (ValueError, reported as a
    corrupt checkpoint), or hold NaN or infinity (NonFiniteStateError)."""
    if not self.verify:
      return
    expected = saved_meta.get("digests") or {}  # none: written before digests were kept
    if changed := differing(expected, digests(arrays)):
      raise ValueError(f"{len(changed)} array(s) differ from their sha256 at saving "
                       f"({', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''})")
    if bad := non_finite(arrays):
      raise NonFiniteStateError(
          f"checkpoint {self.directory / str(step)} holds non-finite values "
          f"({', '.join(bad[:5])}): it was saved from a diverged run. Move it out of the "
          "checkpoints directory to resume from the one before it, or use a fresh --workdir; "
          "and lower the learning rate or set --config.grad_clip_norm.")

  def restore(self, step: int, target: TrainState, target_meta: dict) -> TrainState:
    """Restores `step` into the structure, shapes and shardings of `target` (arrays or specs).

    Raises CheckpointMismatchError if it was written for another model, CorruptCheckpointError
    if its files do not read back as written, NonFiniteStateError if it holds NaN or infinity.
    """
    path = self.directory / str(step)
    target_tree = jax.tree.map(_shape_dtype, flax.serialization.to_state_dict(target))
    try:
      saved_meta = self.meta(step)
      saved_tree = self.manager.item_metadata(step)["state"].tree
      self._refuse(step, model_differences(saved_meta, target_meta)
                   + tree_differences(saved_tree, target_tree))
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target_tree)))["state"]
      self._check_arrays(step, host_arrays(restored), saved_meta)
    except (CheckpointMismatchError, NonFiniteStateError, CorruptCheckpointError):
      raise
    except Exception as e:  # noqa: BLE001 (whatever the files did, the checkpoint is unusable)
      raise CorruptCheckpointError(f"checkpoint {path} does not read back: "
                                   f"{_first_line(e)}") from e
    logging.info("restored checkpoint %s", path)
    return flax.serialization.from_state_dict(target, restored)

  def restore_newest(self, target: TrainState, target_meta: dict) -> tuple[int, TrainState] | None:
    """(step, state) of the newest checkpoint that restores intact into `target`; None if there
    are none. Each newer one that does not read back is named in one line and moved aside into
    `<directory>.corrupt/` (never deleted; left in place if `read_only`); if none reads back, the
    error names them all. A reader beside a live run goes on to the newest checkpoint when the
    one it reads is deleted (the run keeps its last few) or a newer one is saved meanwhile."""
    broken, tried = [], set()
    while steps := sorted(set(self.manager.all_steps()) - tried, reverse=True):
      step = steps[0]
      tried.add(step)
      try:
        return step, self.restore(step, target, target_meta)
      except CorruptCheckpointError as e:
        if self.read_only:  # a run writing here may have deleted it (its oldest) while read
          self.manager.reload()
          if (not (self.directory / str(step)).exists()
              or max(self.manager.all_steps(), default=step) > step):
            continue  # superseded: the newest now is what to read
        broken.append(f"step {step} ({e})" + self._discard(step, e))
    if broken:
      where = ("They were left in place (read-only): resume the run there to set them aside"
               if self.read_only else "They were moved aside, not deleted. Run again to train "
               "from step 0 in this workdir")
      raise CorruptCheckpointError(
          f"no checkpoint in {self.directory} reads back intact:\n  " + "\n  ".join(broken)
          + f"\n{where}, or restore a copy of the checkpoints from a backup.")
    return None

  def _discard(self, step: int, error: CorruptCheckpointError) -> str:
    """Logs `error` in one line and moves checkpoint `step` aside (unless `read_only`); returns
    ' -> <where it went>', or '' where it stayed."""
    if self.read_only:
      logging.warning("%s; left in place (read-only), trying the checkpoint before it", error)
      return ""
    moved = self._set_aside(step)
    logging.warning("%s; moved to %s, trying the checkpoint before it", error, moved)
    return f" -> {moved}"

  def _set_aside(self, step: int) -> epath.Path:
    """Moves checkpoint `step` into `<directory>.corrupt/` (process 0; the others wait)."""
    aside = self.directory.parent / f"{self.directory.name}.corrupt"
    target, n = aside / str(step), 1
    while target.exists():
      target, n = aside / f"{step}-{n}", n + 1
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
    self.manager.reload()
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    # Orbax awaits its start-up clean-up of unfinished saves only at the next save: a run that
    # stops before saving (SIGTERM in start-up, a finished workdir) must not leave it running
    # into the interpreter's exit, where its thread pool is gone.
    getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
    self.manager.close()
