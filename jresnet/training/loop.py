"""train_and_evaluate: what `python train.py` runs, top to bottom.

    data -> model -> optimiser and compiled steps -> state (restored, or from init_from) ->
    loop (train, evaluate, guard, checkpoint) -> export

Everything that can be checked cheaply (config values, the dataset and its splits, the model,
batch divisibility, a checkpoint that fits, the run's stored config) is checked before anything is
compiled. Process 0 writes the records and the export.
"""

import logging
import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
from ml_collections import ConfigDict

from jresnet import data, export
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import distributed, parallel, pretrained, records, run_config, workdir_lock
from jresnet.training.model import build_model, describe_model, model_meta
from jresnet.training.records import MetricWriter
from jresnet.training.step import GUARDED, StepConfig, evaluate

EXPORT_FILE = "model.msgpack"  # inference export written at the end of training


def build(config: ConfigDict, info: data.DatasetInfo, *, model=None,
          devices=None) -> tuple[ConfigDict, parallel.Runner]:
  """The run's resolved config and its compiled steps, for the dataset `info` describes: the
  model (`model` replaces the configured one and its precision, for benchmarks and tests), the
  optimiser and its schedule, the runner (`devices`, jit only, limits its mesh). What train.py,
  eval mode and the benchmarks run."""
  if model is not None:
    config = ConfigDict(config.to_dict())
    config.precision = jax.numpy.dtype(model.dtype).name
  config = run_config.resolve(config, info)
  if model is None:
    model = build_model(config, info.num_classes, info.image_shape[-1])
  step_config = StepConfig.from_config(config, model, run_config.steps_per_epoch(config, info))
  runner = parallel.create(config.parallel, step_config, devices=devices, bn_span=config.bn_span,
                           steps_per_call=config.steps_per_call,
                           replicas=len(run_config.replicas(config)))
  return config, runner


def init_state(config: ConfigDict, runner: parallel.Runner, image_shape: tuple[int, ...]):
  """The run's initial state: one from config.seed, or every replica's from its seed and
  hyperparameters (config.replicas, config.sweep)."""
  if runner.replicas == 1:
    return runner.init_state(image_shape, config.seed)
  return runner.init_state(image_shape, [seed for seed, _ in run_config.replicas(config)],
                           run_config.replica_hyperparams(config))


def train_batches(config: ConfigDict, runner: parallel.Runner, dataset: data.Dataset,
                  start_step: int = 0) -> tuple[Iterator[dict], Callable]:
  """The run's train batches from `start_step` (each replica's, config.steps_per_call steps a
  call) and the compiled call that takes them: `state, metrics = call(state, next(batches))`."""
  seeds = [seed for seed, _ in run_config.replicas(config)]
  batches = dataset.train_batches(runner.batch_sharding, batch_size=config.batch_size,
                                  seed=seeds if runner.replicas > 1 else config.seed,
                                  start_step=start_step, steps_per_call=config.steps_per_call)
  return batches, runner.train_steps if config.steps_per_call > 1 else runner.train_step


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints); returns the final eval metrics.
  Another live run on `workdir` is an error (workdir_lock)."""
  # ---- Data: opened once; a missing dataset or split, or a bad value, fails here in seconds.
  run_config.check_values(config)
  dataset = data.open(config.data)
  # ---- Model, optimiser and the compiled steps.
  config, runner = build(config, dataset.info)
  with workdir_lock.held(workdir), distributed.sigterm_noted():
    checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                             keep=config.keep_checkpoints,
                                             async_save=config.async_checkpoints)
    try:
      return _train(config, dataset, runner, workdir, checkpoints)
    except BaseException:
      checkpoints.close()  # an error before the loop leaves no Orbax thread to fail at exit
      raise


def _train(config: ConfigDict, dataset: data.Dataset, runner: parallel.Runner, workdir: str,
           checkpoints: checkpoint_lib.Checkpoints) -> dict:
  total_steps = config.num_train_steps
  # ---- What the workdir holds: checked before anything is compiled.
  meta = {"model": model_meta(runner.model, runner.replicas)}
  if jax.process_index() == 0:  # this run holds the workdir: nobody else writes its export
    for leftover in export.remove_temporaries(os.path.join(workdir, EXPORT_FILE)):
      logging.info("removed %s, left by an export that did not finish", leftover)
  latest = checkpoints.latest_readable_step()
  records.check_metrics_file(workdir)
  if latest:
    checkpoints.check_model(latest, meta)
    run_config.check_same_run(config, workdir)
  elif config.init_from:
    pretrained.check_source(config.init_from)  # unavailable weights: before data and compiling
  restored = None
  if latest and latest >= total_steps:  # finished: its export checked, rewritten if need be
    problem = _export_problem(workdir, checkpoints.meta(latest), runner)
    if problem:
      target = runner.get_state(init_state(config, runner, dataset.info.image_shape))
      restored = checkpoints.restore_newest(target, meta)
      if restored[0] == latest:  # else: it does not restore, and training resumes before it
        best = (checkpoints.meta(latest).get("metrics") or {}).get("best_replica")
        path = _export(dataset.info, runner, runner.put_state(restored[1]), workdir, best)
        say(f"{path} was {problem}: rewrote it from the final checkpoint (step {latest})")
    if not problem or restored[0] == latest:
      return _already_finished(checkpoints, latest, workdir)
  # (a job of several processes stops together, in the loop)
  if jax.process_count() == 1 and distributed.sigterm_requested():
    checkpoints.close()
    say(f"SIGTERM during start-up: stopped before training; {_saved_text(latest, workdir)}")
    return {}
  input_line = dataset.describe_input()  # loads both splits: a broken image fails now
  if runner.replicas > 1 and not dataset.in_memory(config.data.train_split):
    raise run_config.ConfigError(
        f"replicas={runner.replicas} needs the train split held in memory (batched on the "
        f"devices); {config.data.train_split!r} is streamed: set --config.data.cache=True if it "
        "fits, or train one run a program")

  # ---- State: restored from the newest intact checkpoint, or initialised (from init_from).
  state, loaded_note = init_state(config, runner, dataset.info.image_shape), None
  if latest and not restored:
    restored = checkpoints.restore_newest(runner.get_state(state), meta)
  start = restored[0] if restored else 0
  if start % config.steps_per_call:
    raise run_config.ConfigError(
        f"the run resumes from step {start}, not a multiple of steps_per_call="
        f"{config.steps_per_call}: resume with --config.steps_per_call=1 (or a divisor of it)")
  if restored:
    state = runner.put_state(restored[1])
  elif config.init_from:
    initialised, loaded_note = pretrained.initialise_from(
        config.init_from, runner.model, runner.get_state(state), runner.step_config.tx)
    state = runner.put_state(initialised)

  # ---- Records.
  steps_per_epoch = run_config.steps_per_epoch(config, dataset.info)
  per_call = config.steps_per_call
  log_every = _every(config.log_every_steps, 100, per_call)
  eval_every = _every(config.eval_every_steps, round(steps_per_epoch), per_call)
  save_every = _every(config.checkpoint_every_steps, eval_every, per_call)
  writer = MetricWriter(workdir, total_steps, start, config.batch_size * runner.replicas,
                        steps_per_epoch=steps_per_epoch, schedule=runner.step_config.schedule)
  identity = _identity(workdir)
  if not restored or run_config.saved(workdir) is None:  # a resumed run keeps its record
    writer.write_config(config)
  for note in dataset.info.notes + ((loaded_note,) if loaded_note else ()):
    writer.note(note)
  if start:
    writer.note(f"resumed from {workdir}/checkpoints/{start} at step {start} of {total_steps}")
  writer.note(f"{describe_model(runner.model)}\n{dataset.info}\ntraining for {total_steps} "
              f"steps ({steps_per_epoch:.1f} per epoch) from step {start} on "
              f"{jax.device_count()} device(s), {config.parallel}, {config.precision}; records in "
              f"{workdir}")
  writer.note(input_line)

  # ---- The loop: train (steps_per_call steps a call), evaluate on schedule, guard, checkpoint.
  replicas = run_config.replicas(config)  # (seed, swept values) of each, worked out once
  batches, train_call = train_batches(config, runner, dataset, start)
  eval_batch_size = config.eval_batch_size or config.batch_size
  agreed_stop = distributed.AgreedStop()
  sigterm = agreed_stop.now(distributed.sigterm_requested())  # any process: every one stops
  if sigterm:
    writer.note("SIGTERM during start-up: stopped before training")
  eval_metrics, step, frozen = None, start, {}  # frozen: {replica: the step its update failed}
  best_step = checkpoints.best_step()
  best_accuracy = checkpoints.meta(best_step)["metrics"]["accuracy"] if best_step else -1.0
  try:
    for step in range(start + per_call, (start if sigterm else total_steps) + 1, per_call):
      state, metrics = train_call(state, next(batches))
      if step == start + per_call:
        writer.restart_clock(step)  # images/s: not the compilation
      writer.advance(per_call)
      last = step == total_steps
      sigterm = agreed_stop(distributed.sigterm_requested())
      stop = sigterm or (config.stop_after_steps and step - start >= config.stop_after_steps)
      evaluated = is_eval_step(step, eval_every, total_steps)
      save = last or step % save_every == 0 or stop
      if step % log_every == 0 or save or evaluated:  # every state that may be saved
        host = runner.to_host(metrics)
        if per_call > 1:  # the call's last step (a non-finite update stays non-finite)
          host = jax.tree.map(lambda x: x[-1], host)
        if runner.replicas == 1:
          check_finite(step, host, checkpoints.latest_step(), workdir)
        else:
          frozen = _check_replicas(replicas, host, frozen, writer, step,
                                   checkpoints.latest_step(), workdir)
        _check_workdir(workdir, identity, step)
        writer.scalars(step, "train", records.across_replicas(host, frozen))
      if evaluated:
        eval_metrics = records.across_replicas(evaluate(
            runner, state.eval_variables(runner.use_ema),
            dataset.eval_batches(runner.batch_sharding, batch_size=eval_batch_size)), frozen)
        writer.scalars(step, "eval", eval_metrics)
        save = save or eval_metrics["accuracy"] > best_accuracy  # the best is always kept
        best_accuracy = max(best_accuracy, eval_metrics["accuracy"])
      if save:
        checkpoints.save(runner.get_state(state), meta, eval_metrics if evaluated else None)
      if evaluated or save:
        writer.restart_clock(step)  # images/s: training only
      if stop:
        break
  finally:
    try:
      checkpoints.wait()
      saved = checkpoints.latest_step()
      checkpoints.close()
      writer.close()
    except Exception:
      if _identity(workdir) == identity:
        raise  # (else the workdir is gone, which is the error to report)

  # ---- Export.
  _check_workdir(workdir, identity, step)
  if step == total_steps:
    path = _export(dataset.info, runner, state, workdir, (eval_metrics or {}).get("best_replica"))
    say(f"finished: step {step} of {total_steps}; {_metrics_text(eval_metrics)}; exported to "
         f"{path}")
  elif step < total_steps:
    say(f"stopped after {step - start} steps, at step {step} of {total_steps} "
         f"({'SIGTERM' if sigterm else 'stop_after_steps'}); {_saved_text(saved, workdir)}")
  return eval_metrics or {}


class WorkdirLostError(RuntimeError):
  """The workdir was deleted or replaced while the run was writing into it."""



def _identity(workdir: str) -> tuple[int, int] | None:
  """What tells this workdir from another at the same path (None: there is none)."""
  try:
    status = os.stat(workdir)
  except FileNotFoundError:
    return None
  return status.st_dev, status.st_ino


def _check_workdir(workdir: str, identity: tuple[int, int], step: int) -> None:
  """Raises WorkdirLostError if `workdir` is no longer the directory the run started in (Orbax
  would recreate checkpoints/ there, and the metrics would go to a deleted file)."""
  if _identity(workdir) != identity:
    raise WorkdirLostError(
        f"{workdir} was deleted or replaced during training (noticed at step {step}): stopped, "
        "since nothing written there now would be kept with the run. Restore it from a backup, "
        "or run again to train from the start.")


def is_eval_step(step: int, every: int, total: int) -> bool:
  """When a run evaluates: at every multiple of `every` steps and at the last step, leaving out a
  multiple closer than half an interval to the end (the final evaluation stands for it), so that
  no two evaluations fall one step apart."""
  if step == total:
    return True
  return step % every == 0 and total - step >= every / 2


class NonFiniteUpdateError(FloatingPointError):
  """A step's loss, gradient, update or parameter norm is NaN or infinite."""


# The non-finite guard reads step.GUARDED, fetched at the steps whose metrics go to the host
# (every log, evaluation and save step), so it adds no device work and no synchronisation; a
# check at each save step keeps a non-finite state out of every checkpoint. Replicas freeze
# themselves in the step; the run stops when every one has.


def check_finite(step: int, metrics: dict, last_saved: int | None, workdir: str) -> None:
  """Raises NonFiniteUpdateError if any of `metrics`' GUARDED values (host numbers) is not
  finite: training stops before that state can be saved."""
  bad = {k: float(metrics[k]) for k in GUARDED if k in metrics and not np.isfinite(metrics[k])}
  if bad:
    raise NonFiniteUpdateError(
        f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}: training "
        f"stopped before saving. {_non_finite_advice(last_saved, workdir)}")


def _non_finite_advice(last_saved: int | None, workdir: str) -> str:
  remedy = ("lower the learning rate (--config.optimizer.learning_rate) or set "
            "--config.grad_clip_norm")
  if not last_saved:
    return f"No checkpoint was saved: {remedy}."
  return (f"The last good checkpoint (step {last_saved}) is kept in {workdir}; resuming would "
          f"repeat the same steps. Train anew in another --workdir: {remedy}, with "
          f"--config.init_from={workdir} to start from this run's weights.")


def _check_replicas(replicas: list[tuple[int, dict]], metrics: dict, frozen: dict[int, int],
                    writer, step: int, last_saved: int | None, workdir: str) -> dict[int, int]:
  """The frozen replicas ({replica: step}) after this host fetch, each newly frozen one noted once
  with its step, seed and hyperparameters; NonFiniteUpdateError once every replica is frozen."""
  now = {i: int(at) for i, at in enumerate(metrics["frozen_at"]) if at >= 0}
  for i in sorted(now.keys() - frozen.keys()):
    seed, values = replicas[i]
    what = ", ".join([f"seed {seed}", *(f"{k}={v:g}" for k, v in values.items())])
    writer.note(f"replica {i} ({what}): non-finite update at step {now[i]}; frozen there, left "
                "out of the mean and of the best")
  if len(now) == len(replicas):
    raise NonFiniteUpdateError(
        f"every replica's update went non-finite (by step {step}; at steps "
        f"{', '.join(str(now[i]) for i in sorted(now))}): training stopped. "
        f"{_non_finite_advice(last_saved, workdir)}")
  return now


def _every(n: int | None, default: int, steps_per_call: int) -> int:
  """An interval of steps: `n` as given (a multiple of steps_per_call, run_config checks), else
  `default` rounded up to a multiple of steps_per_call."""
  return int(n) if n else max(-(-int(default) // steps_per_call), 1) * steps_per_call


def say(line: str) -> None:
  """One line for the person watching (process 0), whatever the logging level."""
  if jax.process_index() == 0:
    print(line, flush=True)


def _saved_text(step: int | None, workdir: str) -> str:
  """What a stopped run leaves to resume from."""
  if step:
    return f"checkpoint at step {step} in {workdir}: run the same command to resume"
  return f"no checkpoint saved in {workdir}"


def _metrics_text(metrics: dict | None) -> str:
  if not metrics:
    return "no evaluation recorded"
  if "best_replica" in metrics:  # several replicas: mean ± std, and the best
    best = metrics["best_replica"]
    live = sum(k.startswith("accuracy_r") and v is not None for k, v in metrics.items())
    frozen = [k.removeprefix("frozen_r") for k in metrics if k.startswith("frozen_r")]
    return (f"eval accuracy {metrics['accuracy']:.4f} ± {metrics['accuracy_std']:.4f} (mean ± "
            f"std of {live} replicas; the best, replica {best}: "
            f"{metrics[f'accuracy_r{best}']:.4f}), loss {metrics['loss']:.4f} ± "
            f"{metrics['loss_std']:.4f}"
            + (f"; frozen (non-finite): replica {', '.join(frozen)}" if frozen else ""))
  return "eval " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in metrics.items() if isinstance(v, (int, float)))


def _export(info: data.DatasetInfo, runner: parallel.Runner, state, workdir: str,
            best_replica: int | None = None) -> str:
  """Writes the inference export of `state` into `workdir` (process 0); returns its path. With
  replicas, each replica's as model.r<i>.msgpack, and the best one's (by final eval accuracy) as
  model.msgpack."""
  path = os.path.join(workdir, EXPORT_FILE)
  if jax.process_index() == 0:
    variables = runner.to_host(state.eval_variables(runner.use_ema))
    save = lambda file, tree: export.save(file, runner.model, tree, class_names=info.class_names,
                                          transform=info.eval_transform)
    if runner.replicas == 1:
      save(path, variables)
      return path
    replica = lambda i: jax.tree.map(lambda x: x[i], variables)
    for i in range(runner.replicas):
      save(os.path.join(workdir, EXPORT_FILE.replace(".msgpack", f".r{i}.msgpack")), replica(i))
    save(path, replica(best_replica or 0))
  return path


def _export_problem(workdir: str, final_meta: dict, runner: parallel.Runner) -> str | None:
  """What is wrong with the export of a finished workdir, as process 0 sees it: missing,
  damaged, without a digest, or not the weights of the final checkpoint (whose `final_meta` has
  the sha256 of each array). None if it is that checkpoint's export."""
  problem = None
  if jax.process_index() == 0:
    try:
      exported = export.load(os.path.join(workdir, EXPORT_FILE))
    except FileNotFoundError:
      problem = "missing"
    except export.ExportError:
      problem = "damaged"
    else:
      # (a checkpoint of several replicas holds each array stacked: no digest to compare)
      expected = final_meta.get("digests") if runner.replicas == 1 else None
      expected = expected or {}
      ema = runner.use_ema and any(k.startswith("ema_params/") for k in expected)
      source = "ema_params/" if ema else "params/"  # what the export holds as its params
      expected = {"params/" + k.removeprefix(source) if k.startswith(source) else k: v
                  for k, v in expected.items() if k.startswith((source, "batch_stats/"))}
      if exported.digests is None:
        problem = "written without a digest"
      elif expected and expected != exported.digests:
        problem = "not the final checkpoint's model"
  if jax.process_count() > 1:  # process 0 writes the export: what it sees decides for all
    from jax.experimental import multihost_utils  # noqa: PLC0415

    rewrite = bool(multihost_utils.broadcast_one_to_all(np.int32(problem is not None)))
    problem = (problem or "to be rewritten (as process 0 found)") if rewrite else None
  return problem


def _already_finished(checkpoints, step: int, workdir: str) -> dict:
  """A finished workdir: the final metrics of its last checkpoint, and nothing run again."""
  metrics = checkpoints.meta(step).get("metrics") or {}
  checkpoints.close()
  say(f"already finished: {workdir} holds the final checkpoint (step {step}); "
       f"{_metrics_text(metrics)}. Use another --workdir to train again.")
  return metrics
