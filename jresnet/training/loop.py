"""train_and_evaluate and evaluate_checkpoint: what `train.py` runs.

Order of work: check everything that can be checked cheaply (config keys, dataset presence, model
architecture, batch divisibility, a checkpoint that fits) before anything is compiled; then train,
evaluating and checkpointing on schedule. Records are written by process 0 only.
"""

import dataclasses
import json
import logging
import os
import signal

import jax
import numpy as np
from ml_collections import ConfigDict

from jresnet import export
from jresnet.models import ResNet
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import eval_schedule, parallel, pretrained, run_config
from jresnet.training import recipe as recipe_lib
from jresnet.training import step as step_lib
from jresnet.training.records import Records

EXPORT_FILE = "model.msgpack"  # inference export written at the end of training


def model_meta(model: ResNet) -> dict:
  """What a checkpoint must agree on with the configured model, as JSON values."""
  meta = {**dataclasses.asdict(model.architecture), "num_classes": model.num_classes,
          "groups": model.groups, "width_per_group": model.width_per_group,
          "input_channels": model.input_channels, "scan_blocks": model.scan_blocks}
  return json.loads(json.dumps(meta))


@dataclasses.dataclass
class Plan(recipe_lib.Recipe):
  """The recipe and the dataset it was derived from."""

  info: object


def plan(config: ConfigDict) -> Plan:
  from jresnet import data  # noqa: PLC0415 (TensorFlow only where data is read)

  info = data.load_info(config.data)  # a missing dataset fails here, in seconds
  if info.eval_split != config.data.eval_split:  # the default 'test' absent: validation
    config = ConfigDict(config.to_dict())
    config.data.eval_split = info.eval_split
  recipe = recipe_lib.build(config, info.num_classes, info.image_shape,
                            info.split_sizes[config.data.train_split])
  return Plan(**vars(recipe), info=info)


def evaluate(p: Plan, variables, split: str) -> dict:
  """Loss, top-1 and top-5 accuracy over every example of `split`, each counted once."""
  from jresnet import data  # noqa: PLC0415

  batches = data.eval_batches(p.config.data, split,
                              global_batch_size=p.config.eval_batch_size or p.config.batch_size)
  return p.evaluate(variables, p.runner.feed(batches, p.config.data.prefetch))


class _Preemption:
  """SIGTERM sets a flag; the loop then checkpoints and exits cleanly."""

  def __init__(self):
    self.requested = False
    self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: checkpointing and stopping")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self.previous)


def _every(n: int | None, default: int) -> int:
  return max(int(n) if n else default, 1)


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints); returns the final eval metrics."""
  from jresnet import data  # noqa: PLC0415

  p = plan(config)
  cfg = p.config
  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                           keep=cfg.keep_checkpoints,
                                           async_save=cfg.async_checkpoints)
  meta = {"model": model_meta(p.model)}
  start = checkpoints.latest_step() or 0
  if start:
    checkpoints.check_model(start, meta)  # before anything is compiled
  if start >= p.total_steps:
    return _already_finished(checkpoints, start, workdir)
  state, loaded_note = p.create_state(), None
  if start:
    state = p.runner.put_state(checkpoints.restore(start, p.runner.get_state(state), meta))
  elif cfg.init_from:
    initialised, loaded_note = pretrained.initialise_from(
        cfg.init_from, p.model, p.runner.get_state(state), p.tx)
    state = p.runner.put_state(initialised)

  epoch_steps = round(p.steps_per_epoch)
  log_every = _every(cfg.log_every_steps, 100)
  eval_every = _every(cfg.eval_every_steps, epoch_steps)
  save_every = _every(cfg.checkpoint_every_steps, eval_every)

  records = Records(workdir, p.total_steps, start, cfg.batch_size)
  records.write_config(run_config.resolved(cfg, p.info))
  for note in p.info.notes + ((loaded_note,) if loaded_note else ()):
    records.note(note)
  if start:
    records.note(f"resumed from {workdir}/checkpoints/{start} at step {start} of {p.total_steps}")
  records.note(f"{p.model.architecture}\n{p.info}\ntraining for {p.total_steps} steps "
               f"({p.steps_per_epoch:.1f} per epoch) from step {start} on {jax.device_count()} "
               f"device(s), {cfg.parallel}, {cfg.precision}; records in {workdir}")
  batches = p.runner.feed(
      data.train_batches(cfg.data, global_batch_size=cfg.batch_size, seed=cfg.seed,
                         start_step=start), cfg.data.prefetch)
  preemption = _Preemption()
  eval_metrics, step = None, start
  try:
    for step in range(start + 1, p.total_steps + 1):
      state, metrics = p.runner.train_step(state, next(batches))
      if step == start + 1:
        records.restart_clock(step)  # images/s: not the compilation
      records.advance(1)
      last = step == p.total_steps
      stop = preemption.requested or (cfg.stop_after_steps and step - start >= cfg.stop_after_steps)
      save = last or step % save_every == 0 or stop
      if step % log_every == 0 or save:
        host = p.runner.to_host(metrics)
        if not np.isfinite(host["loss"]):
          raise FloatingPointError(
              f"non-finite loss ({host['loss']}) at step {step}: training stopped before saving. "
              f"The last good checkpoint (step {checkpoints.latest_step()}) is kept in {workdir}; "
              "lower the learning rate or enable grad_clip_norm.")
        records.scalars(step, "train", host)
      evaluated = eval_schedule.is_eval_step(step, eval_every, p.total_steps)
      if evaluated:
        eval_metrics = evaluate(p, state.eval_variables(p.use_ema), cfg.data.eval_split)
        records.scalars(step, "eval", eval_metrics)
      if save:
        checkpoints.save(p.runner.get_state(state), meta, eval_metrics if evaluated else None)
      if evaluated or save:
        records.restart_clock(step)  # images/s: training only
      if stop:
        break
  finally:
    preemption.restore()
    checkpoints.wait()
    checkpoints.close()
    records.close()
  if step == p.total_steps and jax.process_index() == 0:
    export.save(os.path.join(workdir, EXPORT_FILE), p.model,
                p.runner.to_host(state.eval_variables(p.use_ema)),
                class_names=p.info.class_names, transform=p.info.eval_transform)
    _say(f"finished: step {step} of {p.total_steps}; {_metrics_text(eval_metrics)}; exported "
         f"to {os.path.join(workdir, EXPORT_FILE)}")
  elif step < p.total_steps:
    _say(f"stopped after {step - start} steps, at step {step} of {p.total_steps} "
         f"({'SIGTERM' if preemption.requested else 'stop_after_steps'}); checkpoint saved in "
         f"{workdir}: run the same command to resume")
  return eval_metrics or {}


def _say(line: str) -> None:
  """One line for the person watching (process 0), whatever the logging level."""
  if jax.process_index() == 0:
    print(line, flush=True)


def _metrics_text(metrics: dict | None) -> str:
  if not metrics:
    return "no evaluation recorded"
  return "eval " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                             if isinstance(v, float))


def _already_finished(checkpoints, step: int, workdir: str) -> dict:
  """A finished workdir: the final metrics of its last checkpoint, and nothing run again."""
  metrics = checkpoints.meta(step).get("metrics") or {}
  checkpoints.close()
  _say(f"already finished: {workdir} holds the final checkpoint (step {step}); "
       f"{_metrics_text(metrics)}. Use another --workdir to train again.")
  return metrics


def _restore_for_eval(p: Plan, workdir: str) -> tuple[dict, str]:
  """Variables of checkpoint `eval_checkpoint` ('latest', 'best' or a step) of `workdir`."""
  cfg = p.config
  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"), async_save=False)
  which = str(cfg.eval_checkpoint)
  step = {"latest": checkpoints.latest_step,
          "best": checkpoints.best_step}.get(which, lambda: int(which))()
  if step is None:
    raise FileNotFoundError(f"no checkpoint ({which}) in {workdir}/checkpoints")
  checkpoints.check_model(step, {"model": model_meta(p.model)})
  target = p.runner.get_state(p.create_state())
  state = p.runner.put_state(checkpoints.restore(step, target, {"model": model_meta(p.model)}))
  checkpoints.close()
  return state.eval_variables(p.use_ema), str(step)


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
  """Eval mode: `config.eval_checkpoint` ('latest', 'best', a step of `workdir`'s checkpoints,
  or an exported `.msgpack` file, whose own architecture is used) on `config.data.eval_split`;
  writes eval_<split>_<checkpoint>.json into the workdir."""
  p = plan(config)
  cfg = p.config
  if str(cfg.eval_checkpoint).endswith(".msgpack"):
    model, variables = export.load(cfg.eval_checkpoint)
    if model.num_classes != p.info.num_classes:
      raise ValueError(f"{cfg.eval_checkpoint} has {model.num_classes} classes, the data "
                       f"{p.info.num_classes}")
    runner = parallel.create(cfg.parallel, step_lib.StepConfig(
        model=model, tx=p.tx, schedule=p.schedule, num_classes=p.info.num_classes))
    p = dataclasses.replace(p, model=model, runner=runner)
    variables, which = runner.put_state(variables), os.path.basename(cfg.eval_checkpoint)
  else:
    try:
      variables, which = _restore_for_eval(p, workdir)
    except checkpoint_lib.CheckpointMismatchError as e:
      raise checkpoint_lib.CheckpointMismatchError(_eval_advice(str(e), cfg, workdir)) from None
  metrics = evaluate(p, variables, cfg.data.eval_split)
  metrics["checkpoint"] = which
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    name = f"eval_{cfg.data.eval_split}_{which}.json".replace("/", "_")
    with open(os.path.join(workdir, name), "w") as f:
      json.dump({"split": cfg.data.eval_split, **metrics}, f, indent=2)
  return metrics
