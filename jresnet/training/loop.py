"""train_and_evaluate and evaluate_checkpoint: what `train.py` runs.

Order of work: check everything that can be checked cheaply (config keys, dataset presence, model
architecture, batch divisibility, a checkpoint that fits) before anything is compiled; then train,
evaluating and checkpointing on schedule. Metrics are written by process 0 only.
"""

import dataclasses
import functools
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
from jresnet.training import (
  distributed,
  pretrained,
  records,
  run_config,
  workdir_lock,
)
from jresnet.training import recipe as recipe_lib
from jresnet.training.records import MetricWriter

EXPORT_FILE = "model.msgpack"  # inference export written at the end of training
ARRAYS_FILE = "arrays.npz"  # --mode=write_arrays
RESIZED_DIR = "resized{side}"  # --mode=write_resized


def model_meta(model: ResNet) -> dict:
  """What a checkpoint must agree on with the configured model, as JSON values."""
  meta = {**dataclasses.asdict(model.architecture), "num_classes": model.num_classes,
          "groups": model.groups, "width_per_group": model.width_per_group,
          "input_channels": model.input_channels, "scan_blocks": model.scan_blocks}
  return json.loads(json.dumps(meta))


def plan(config: ConfigDict) -> recipe_lib.Recipe:
  """The recipe for the configured dataset, with its DatasetInfo (`info`)."""
  from jresnet import data  # noqa: PLC0415 (TensorFlow only where data is read)

  recipe_lib.check_values(config)  # before the dataset is opened
  info = data.load_info(config.data)  # a missing dataset fails here, in seconds
  if info.eval_split != config.data.eval_split or config.data.threads is None:
    config = ConfigDict(config.to_dict())
    config.data.eval_split = info.eval_split  # the default 'test' absent: validation
    if config.data.threads is None:  # more for tf.data where XLA does not compute on the host
      from jresnet.data import host_threads  # noqa: PLC0415

      config.data.threads = host_threads.default(accelerator=jax.default_backend() != "cpu")
  recipe = recipe_lib.build(config, info.num_classes, info.image_shape,
                            info.split_sizes[config.data.train_split])
  return dataclasses.replace(recipe, info=info)


def evaluate_split(recipe: recipe_lib.Recipe, variables, split: str, on_device=None) -> dict:
  """Loss, top-1 and top-5 accuracy over every example of `split`, each counted once; from the
  devices where `on_device` holds the split ({split: DeviceSplit}), else from the host."""
  from jresnet import data  # noqa: PLC0415

  batch_size = recipe.config.eval_batch_size or recipe.config.batch_size
  if on_device:
    return recipe.metrics_over(variables,
                               on_device[split].eval_batches(global_batch_size=batch_size))
  batches = data.eval_batches(recipe.config.data, split, global_batch_size=batch_size)
  return recipe.metrics_over(variables, feed_host_batches(recipe, batches))


def feed_host_batches(recipe: recipe_lib.Recipe, batches):
  """The host stream's batches on the devices, normalised there (the host sends uint8)."""
  return recipe.runner.feed(batches, recipe.config.data.prefetch,
                       on_device=_normalizer(tuple(recipe.info.mean), tuple(recipe.info.std)))


@functools.cache
def _normalizer(mean: tuple, std: tuple):
  """One function per statistics, so the runner compiles it once for every evaluation."""
  from jresnet.data import device_transforms  # noqa: PLC0415

  return functools.partial(device_transforms.normalize_batch, mean=mean, std=std)


def open_input(recipe: recipe_lib.Recipe, splits: tuple[str, ...]) -> tuple[dict | None, str]:
  """The device path's splits where config.data.on_device chooses it (else None: the host
  path), and a line saying which and why."""
  from jresnet import data  # noqa: PLC0415

  opened, why = data.open_device_splits(recipe.config.data, recipe.runner.batch_sharding, splits)
  return opened, f"input: {'batched on the devices' if opened else 'tf.data on the host'} ({why})"


class _Preemption:
  """SIGTERM sets a flag; the loop then checkpoints and exits cleanly. A request noted by the
  handler this one replaces (train.py's, during start-up) counts too."""

  def __init__(self):
    self.previous = signal.signal(signal.SIGTERM, self._handle)
    self.requested = bool(getattr(self.previous, "requested", False))

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: checkpointing and stopping")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self.previous)


class WorkdirLostError(RuntimeError):
  """The workdir was deleted or replaced while the run was writing into it."""


class NoCheckpointError(FileNotFoundError):
  """Eval mode: the workdir holds no checkpoint of the kind asked for; the message says which."""


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


# What the non-finite guard reads: numbers the step computes anyway, fetched at the steps whose
# metrics go to the host (every log, evaluation and save step), so it adds no device work and no
# synchronisation. A non-finite state stays non-finite (NaN spreads through every later update),
# so a check at each save step keeps it out of every checkpoint.
GUARDED = ("loss", "grad_norm", "update_norm", "param_norm")


def check_finite(step: int, metrics: dict, last_saved: int | None, workdir: str) -> None:
  """Raises NonFiniteUpdateError if any of `metrics`' GUARDED values (host numbers) is not
  finite: training stops before that state can be saved."""
  bad = {k: float(metrics[k]) for k in GUARDED if k in metrics and not np.isfinite(metrics[k])}
  if not bad:
    return
  remedy = ("lower the learning rate (--config.optimizer.learning_rate) or set "
            "--config.grad_clip_norm")
  advice = (f"The last good checkpoint (step {last_saved}) is kept in {workdir}; resuming would "
            f"repeat the same steps. Train anew in another --workdir: {remedy}, with "
            f"--config.init_from={workdir} to start from this run's weights." if last_saved else
            f"No checkpoint was saved: {remedy}.")
  raise NonFiniteUpdateError(
      f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}: training "
      f"stopped before saving. {advice}")


def _every(n: int | None, default: int) -> int:
  return max(int(n) if n else default, 1)


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if it holds checkpoints); returns the final eval metrics.
  Another live run on `workdir` is an error (workdir_lock)."""
  recipe = plan(config)
  with workdir_lock.held(workdir):
    return _train(recipe, workdir)


def _train(recipe: recipe_lib.Recipe, workdir: str) -> dict:
  checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                           keep=recipe.config.keep_checkpoints,
                                           async_save=recipe.config.async_checkpoints)
  try:
    return _train_with(recipe, workdir, checkpoints)
  except BaseException:
    checkpoints.close()  # an error before the loop leaves no Orbax thread to fail at exit
    raise


def _train_with(recipe: recipe_lib.Recipe, workdir: str, checkpoints: checkpoint_lib.Checkpoints):
  from jresnet import data  # noqa: PLC0415

  cfg = recipe.config
  meta = {"model": model_meta(recipe.model)}
  if jax.process_index() == 0:  # this run holds the workdir: nobody else writes its export
    for leftover in export.remove_temporaries(os.path.join(workdir, EXPORT_FILE)):
      logging.info("removed %s, left by an export that did not finish", leftover)
  latest = checkpoints.latest_readable_step()
  records.check_metrics_file(workdir)  # before anything is compiled
  if latest:
    checkpoints.check_model(latest, meta)
    run_config.check_same_run(run_config.resolved(cfg, recipe.info), workdir)
  elif cfg.init_from:
    pretrained.check_source(cfg.init_from)  # unavailable weights: before data and compiling
  restored = None
  if latest and latest >= recipe.total_steps:
    problem = _export_problem(workdir, checkpoints.meta(latest), recipe.use_ema)
    if not problem:
      return _already_finished(checkpoints, latest, workdir)
    restored = checkpoints.restore_newest(recipe.runner.get_state(recipe.create_state()), meta)
    if restored[0] == latest:  # else: it does not restore, and training resumes before it
      path = _export(recipe, recipe.runner.put_state(restored[1]), workdir)
      _say(f"{path} was {problem}: rewrote it from the final checkpoint (step {latest})")
      return _already_finished(checkpoints, latest, workdir)
  # train.py's SIGTERM handler in start-up (a job of several processes stops together, in the loop)
  if jax.process_count() == 1 and getattr(signal.getsignal(signal.SIGTERM), "requested", False):
    checkpoints.close()
    _say(f"SIGTERM during start-up: stopped before training; {_saved_text(latest, workdir)}")
    return {}
  on_device, input_line = open_input(recipe, (cfg.data.train_split, cfg.data.eval_split))
  if not on_device:  # (the device path has decoded both splits already)
    data.check_split(cfg.data, cfg.data.eval_split)  # a broken eval image: now, not in an epoch
  state, loaded_note = recipe.create_state(), None
  if latest and not restored:
    restored = checkpoints.restore_newest(recipe.runner.get_state(state), meta)
  start = restored[0] if restored else 0
  if restored:
    state = recipe.runner.put_state(restored[1])
  elif cfg.init_from:
    initialised, loaded_note = pretrained.initialise_from(
        cfg.init_from, recipe.model, recipe.runner.get_state(state), recipe.tx)
    state = recipe.runner.put_state(initialised)

  epoch_steps = round(recipe.steps_per_epoch)
  log_every = _every(cfg.log_every_steps, 100)
  eval_every = _every(cfg.eval_every_steps, epoch_steps)
  save_every = _every(cfg.checkpoint_every_steps, eval_every)

  writer = MetricWriter(workdir, recipe.total_steps, start, cfg.batch_size,
                        steps_per_epoch=recipe.steps_per_epoch, schedule=recipe.schedule)
  identity = _identity(workdir)
  if not restored or run_config.saved(workdir) is None:  # a resumed run keeps its record
    writer.write_config(run_config.resolved(cfg, recipe.info))
  for note in recipe.info.notes + ((loaded_note,) if loaded_note else ()):
    writer.note(note)
  if start:
    writer.note(f"resumed from {workdir}/checkpoints/{start} at step {start} of "
                f"{recipe.total_steps}")
  writer.note(f"{recipe_lib.describe_model(recipe.model)}\n{recipe.info}\ntraining for "
              f"{recipe.total_steps} steps ({recipe.steps_per_epoch:.1f} per epoch) from step "
              f"{start} on {jax.device_count()} device(s), {cfg.parallel}, {cfg.precision}; "
              f"records in {workdir}")
  writer.note(input_line)
  if on_device:
    batches = on_device[cfg.data.train_split].train_batches(
        global_batch_size=cfg.batch_size, seed=cfg.seed, start_step=start)
  else:
    batches = feed_host_batches(recipe, data.train_batches(
        cfg.data, global_batch_size=cfg.batch_size, seed=cfg.seed, start_step=start))
  preemption, agreed_stop = _Preemption(), distributed.AgreedStop()
  sigterm = agreed_stop.now(preemption.requested)  # on any process: every process stops
  if sigterm:
    writer.note("SIGTERM during start-up: stopped before training")
  eval_metrics, step = None, start
  best_step = checkpoints.best_step()
  best_accuracy = checkpoints.meta(best_step)["metrics"]["accuracy"] if best_step else -1.0
  try:
    for step in range(start + 1, (start if sigterm else recipe.total_steps) + 1):
      state, metrics = recipe.runner.train_step(state, next(batches))
      if step == start + 1:
        writer.restart_clock(step)  # images/s: not the compilation
      writer.advance(1)
      last = step == recipe.total_steps
      sigterm = agreed_stop(preemption.requested)
      stop = sigterm or (cfg.stop_after_steps and step - start >= cfg.stop_after_steps)
      evaluated = is_eval_step(step, eval_every, recipe.total_steps)
      save = last or step % save_every == 0 or stop
      if step % log_every == 0 or save or evaluated:  # every state that may be saved
        host = recipe.runner.to_host(metrics)
        check_finite(step, host, checkpoints.latest_step(), workdir)
        _check_workdir(workdir, identity, step)
        writer.scalars(step, "train", host)
      if evaluated:
        eval_metrics = evaluate_split(recipe, state.eval_variables(recipe.use_ema),
                                      cfg.data.eval_split, on_device)
        writer.scalars(step, "eval", eval_metrics)
        save = save or eval_metrics["accuracy"] > best_accuracy  # the best is always kept
        best_accuracy = max(best_accuracy, eval_metrics["accuracy"])
      if save:
        checkpoints.save(recipe.runner.get_state(state), meta, eval_metrics if evaluated else None)
      if evaluated or save:
        writer.restart_clock(step)  # images/s: training only
      if stop:
        break
  finally:
    preemption.restore()
    try:
      checkpoints.wait()
      saved = checkpoints.latest_step()
      checkpoints.close()
      writer.close()
    except Exception:
      if _identity(workdir) == identity:
        raise  # (else the workdir is gone, which is the error to report)
  _check_workdir(workdir, identity, step)
  if step == recipe.total_steps:
    path = _export(recipe, state, workdir)
    _say(f"finished: step {step} of {recipe.total_steps}; {_metrics_text(eval_metrics)}; exported "
         f"to {path}")
  elif step < recipe.total_steps:
    _say(f"stopped after {step - start} steps, at step {step} of {recipe.total_steps} "
         f"({'SIGTERM' if sigterm else 'stop_after_steps'}); "
         f"{_saved_text(saved, workdir)}")
  return eval_metrics or {}


def _say(line: str) -> None:
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
  return "eval " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in metrics.items() if isinstance(v, (int, float)))


def _export(recipe: recipe_lib.Recipe, state, workdir: str) -> str:
  """Writes the inference export of `state` into `workdir` (process 0); returns its path."""
  path = os.path.join(workdir, EXPORT_FILE)
  if jax.process_index() == 0:
    export.save(path, recipe.model, recipe.runner.to_host(state.eval_variables(recipe.use_ema)),
                class_names=recipe.info.class_names, transform=recipe.info.eval_transform)
  return path


def _export_problem(workdir: str, final_meta: dict, use_ema: bool) -> str | None:
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
      expected = final_meta.get("digests") or {}
      ema = use_ema and any(k.startswith("ema_params/") for k in expected)
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
  _say(f"already finished: {workdir} holds the final checkpoint (step {step}); "
       f"{_metrics_text(metrics)}. Use another --workdir to train again.")
  return metrics


def _restore_for_eval(recipe: recipe_lib.Recipe, workdir: str) -> tuple[dict, str]:
  """Variables of checkpoint `eval_checkpoint` of `workdir`: 'latest' (the newest that reads
  back intact), 'best' or a step. The checkpoints are only read: a run may be training there."""
  cfg = recipe.config
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise NoCheckpointError(f"no checkpoints in {workdir}: nothing to evaluate (train there "
                            "first, or set --config.eval_checkpoint to an exported .msgpack)")
  checkpoints = checkpoint_lib.Checkpoints(directory, read_only=True)
  which = str(cfg.eval_checkpoint)
  step = {"latest": checkpoints.latest_step,
          "best": checkpoints.best_step}.get(which, lambda: int(which))()
  saved = ", ".join(map(str, checkpoints.all_steps()))
  if step is None or str(step) not in saved.split(", "):
    raise NoCheckpointError(
        f"no evaluated checkpoint in {directory} (saved without an evaluation: steps {saved}); "
        "use --config.eval_checkpoint=latest or a step" if saved and which == "best" else
        f"no checkpoint ({which}) in {directory}" + (f"; it holds steps {saved}" if saved else ""))
  meta = {"model": model_meta(recipe.model)}
  checkpoints.check_model(step, meta)
  target = recipe.runner.get_state(recipe.create_state())
  if which == "latest":
    step, state = checkpoints.restore_newest(target, meta)
  else:
    state = checkpoints.restore(step, target, meta)
  checkpoints.close()
  _say(f"evaluating checkpoint {step} of {directory}")
  return recipe.runner.put_state(state).eval_variables(recipe.use_ema), str(step)


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
  recipe = plan(config)
  cfg = recipe.config
  if str(cfg.eval_checkpoint).endswith(".msgpack"):
    model, variables = export.load(cfg.eval_checkpoint)
    if model.num_classes != recipe.info.num_classes:
      raise ValueError(f"{cfg.eval_checkpoint} has {model.num_classes} classes, the data "
                       f"{recipe.info.num_classes}")
    planned = recipe
    recipe = dataclasses.replace(
        recipe_lib.build(cfg, planned.info.num_classes, planned.image_shape,
                         planned.info.split_sizes[cfg.data.train_split], model=model),
        info=planned.info)
    variables, which = recipe.runner.put_state(variables), os.path.basename(cfg.eval_checkpoint)
  else:
    try:
      variables, which = _restore_for_eval(recipe, workdir)
    except checkpoint_lib.CheckpointMismatchError as e:
      raise checkpoint_lib.CheckpointMismatchError(_eval_advice(str(e), cfg, workdir)) from None
  on_device, _ = open_input(recipe, (cfg.data.eval_split,))
  metrics = evaluate_split(recipe, variables, cfg.data.eval_split, on_device)
  metrics["checkpoint"] = which
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    name = f"eval_{cfg.data.eval_split}_{which}.json".replace("/", "_")
    with open(os.path.join(workdir, name), "w") as f:
      json.dump({"split": cfg.data.eval_split, **metrics}, f, indent=2)
  return metrics


def write_arrays(config: ConfigDict, workdir: str, encoding: str = "raw") -> dict:
  """`--mode=write_arrays`: the config's train and eval splits to <workdir>/arrays.npz, which
  `--config.data.source=arrays --config.data.path=<that file>` reads with the same split names.
  Returns the examples written per split."""
  from jresnet import data  # noqa: PLC0415
  from jresnet.data import arrays, sources  # noqa: PLC0415

  data.load_info(config.data)  # a missing dataset or split fails here, in seconds
  path = os.path.join(workdir, ARRAYS_FILE)
  names = list(dict.fromkeys((config.data.train_split, config.data.eval_split)))
  if jax.process_index() != 0:  # one file per job
    return {}
  counts = arrays.write(path, sources.get(config.data), names, encoding)
  print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {encoding}); train from it "
        f"with --config.data.source=arrays --config.data.path={path}")
  return counts


def write_resized(config: ConfigDict, workdir: str, side: int,
                  quality: int | None = None) -> dict:
  """`--mode=write_resized`: every split of the config's dataset to <workdir>/resized<side>/, an
  image folder with the shorter sides capped at `side` pixels, JPEG at `quality` (None: the
  copy's default). Returns the images per split."""
  from jresnet.data import resized_copy  # noqa: PLC0415

  out = os.path.join(workdir, RESIZED_DIR.format(side=side))
  if jax.process_index() != 0:  # one copy per job
    return {}
  quality = resized_copy.QUALITY if quality is None else quality
  counts = resized_copy.write(config.data, out, side, quality)
  print(f"wrote {sum(counts.values())} images to {out} (shorter side <= {side}, JPEG quality "
        f"{quality}); train from it "
        f"with --config.data.source=folder --config.data.path={out}")
  return counts
