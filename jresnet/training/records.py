"""What a run leaves for a person to read: TensorBoard scalars, metrics.jsonl, the resolved
config, a progress bar while it runs and a PNG of the curves at the end. Process 0 writes;
the others record nothing.

TensorBoard events come from the `tensorboard` package's own writer, which needs no TensorFlow;
where tensorboard is not installed they are skipped, with a notice, and the rest is written.
"""

import json
import os
import time

import jax
import numpy as np
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class MetricWriter:
  """A run's scalars (TensorBoard, metrics.jsonl, the progress bar), its config.json and its
  notes; inactive on every process but 0."""

  def __init__(self, workdir: str, total_steps: int, start_step: int, batch_size: int,
               steps_per_epoch: float | None = None, schedule=None):
    """`steps_per_epoch` shows the epoch on the bar; `schedule` (step -> learning rate) is drawn
    whole in curves.png."""
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.batch_size = batch_size
    self.total_steps, self.steps_per_epoch, self.schedule = total_steps, steps_per_epoch, schedule
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    torn_note = truncate_metrics(workdir, start_step)
    self.jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
    self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                    mininterval=1.0)
    self._show_epoch(start_step)
    if torn_note:
      self.note(torn_note)
    self.last_time, self.last_step = time.perf_counter(), start_step
    self.writer = _tensorboard_writer(os.path.join(workdir, "tensorboard"))
    if self.writer is None:
      self.note("tensorboard is not installed: no TensorBoard events (metrics.jsonl is written)")

  def write_config(self, config) -> None:
    if self.active:
      _write_atomically(os.path.join(self.workdir, "config.json"),
                        config.to_json_best_effort(indent=2, sort_keys=True))

  def scalars(self, step: int, split: str, metrics: dict) -> None:
    """Records {name: value} of `split` ('train' or 'eval') at `step`."""
    if not self.active:
      return
    values = {k: v if v is None or isinstance(v, int) else float(v) for k, v in metrics.items()}
    if split == "train":
      now = time.perf_counter()
      rate = ((step - self.last_step) * self.batch_size / (now - self.last_time)
              if step > self.last_step else None)  # None: no training timed since the clock
      self.last_time, self.last_step = now, step
      values["images_per_sec"] = rate
      self.bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['accuracy']:.3f}",
                           lr=f"{values['learning_rate']:.3g}",
                           img_s="-" if rate is None else f"{rate:.0f}", refresh=False)
    else:
      self.bar.write(f"step {step}: eval " + ", ".join(
          f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    if self.writer is not None:
      for name, value in values.items():
        if value is not None:
          self.writer.add_scalar(f"{split}/{name}", value, step=step)
    self.jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    self.jsonl.flush()

  def restart_clock(self, step: int) -> None:
    """Times images/s from here: what came before (compilation, evaluation, a checkpoint) is
    left out."""
    if self.active:
      self.last_time, self.last_step = time.perf_counter(), step

  def note(self, message: str) -> None:
    """A line for the person watching, above the progress bar."""
    if self.active:
      self.bar.write(message)

  def advance(self, steps: int) -> None:
    if self.active:
      self._show_epoch(self.bar.n + steps)
      self.bar.update(steps)

  def _show_epoch(self, step: int) -> None:
    """'epoch 2.5/20' before the bar: the epochs done after `step`, of the run's."""
    if self.steps_per_epoch:
      epochs = round(self.total_steps / self.steps_per_epoch, 1)
      self.bar.set_description(f"epoch {step / self.steps_per_epoch:.1f}/{epochs:g}",
                               refresh=False)

  def close(self) -> None:
    if not self.active:
      return
    self.bar.close()
    if self.writer is not None:
      self.writer.close()
    self.jsonl.close()
    learning_rates = None
    if self.schedule is not None:  # the rate of each step s, as its record logs it: schedule(s-1)
      learning_rates = np.asarray(jax.vmap(self.schedule)(np.arange(self.total_steps)))
    plot_curves(os.path.join(self.workdir, METRICS_FILE), os.path.join(self.workdir, CURVES_FILE),
                learning_rates)


def _tensorboard_writer(directory: str):
  try:
    from tensorboard.summary import Writer  # noqa: PLC0415 (optional)
  except ImportError:
    return None
  return Writer(directory)


def _write_atomically(path: str, text: str) -> None:
  """`path` holds `text`, or what it held before: never a part of either."""
  partial = f"{path}.tmp-{os.getpid()}"
  with open(partial, "w") as f:
    f.write(text)
  os.replace(partial, path)


class MetricsFileError(ValueError):
  """A line of metrics.jsonl, before its last, is not a record."""


def _record(line: str) -> dict | None:
  """The record a metrics.jsonl line holds; None if it holds none."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  whole = (isinstance(record, dict) and isinstance(record.get("step"), int)
           and isinstance(record.get("split"), str))
  return record if whole else None


def _read_records(path: str) -> tuple[list[dict], str | None]:
  """The records of a metrics.jsonl, and its last line where that holds no record (torn: what a
  full disk or a kill mid-write leaves), which is left out. Any other line that holds no record
  raises MetricsFileError naming the file and line."""
  with open(path, encoding="utf-8", errors="replace") as f:
    lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
  rows = []
  for number, line in lines:
    record = _record(line)
    if record is None and number == lines[-1][0]:
      return rows, line.strip()
    if record is None:
      raise MetricsFileError(
          f"{path}, line {number}, holds no metrics record ({line.strip()[:60]!r}): repair or "
          "delete that line, or move the file aside (the run then records from the resumed "
          "step on)")
    rows.append(record)
  return rows, None


def check_metrics_file(workdir: str) -> None:
  """Raises MetricsFileError if the workdir's metrics.jsonl is damaged before its last line: a
  resume stops on it before anything is compiled."""
  path = os.path.join(workdir, METRICS_FILE)
  if os.path.exists(path):
    _read_records(path)


def truncate_metrics(workdir: str, step: int) -> str | None:
  """Drops records past `step`: after a resume they are recomputed, not duplicated; and a torn
  last line, returning a note that names it (None if there was none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return None
  rows, torn = _read_records(path)
  _write_atomically(path, "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))
  return f"{path}: dropped its torn last line ({torn[:60]!r})" if torn else None


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl (without a torn last line)."""
  return _read_records(path)[0]


def across_replicas(metrics: dict, frozen: dict[int, int] | None = None) -> dict:
  """Metrics of several replicas (a list or array per name) -> each name's mean over the replicas
  that are not `frozen` ({replica: the step it froze at}), its std (`<name>_std`), each
  replica's value (`<name>_r<i>`; None for a frozen one, with `frozen_r<i>` its step), and the
  best replica by accuracy (`best_replica`); the example count once. Metrics of one run are
  returned as they are."""
  if all(np.ndim(v) == 0 for v in metrics.values()):
    return metrics
  frozen = frozen or {}
  replicas = len(np.asarray(next(iter(metrics.values()))))
  live = np.asarray([i not in frozen for i in range(replicas)])
  out = {}
  for name, values in metrics.items():
    values = np.asarray(values, np.float64)
    if name == "frozen_at":
      continue
    if name == "count":
      out[name] = int(values[0])
      continue
    out[name], out[f"{name}_std"] = float(values[live].mean()), float(values[live].std())
    out.update({f"{name}_r{i}": None if i in frozen else float(v) for i, v in enumerate(values)})
  out.update({f"frozen_r{i}": step for i, step in sorted(frozen.items())})
  if "accuracy" in metrics:
    accuracies = np.where(live, np.asarray(metrics["accuracy"], np.float64), -np.inf)
    out["best_replica"] = int(np.argmax(accuracies))
  return out


def plot_curves(metrics_path: str, out_path: str, learning_rates=None) -> None:
  """Loss, accuracy and learning rate against step, train and eval, from metrics.jsonl; with
  `learning_rates` (the rate of steps 1, 2, ...), the learning-rate panel draws that schedule
  whole, so a warm-up shorter than the logging interval shows."""
  import matplotlib  # noqa: PLC0415 (only at the end of a run)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  rows = read_metrics(metrics_path)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, key in zip(axes, ["loss", "accuracy", "learning_rate"]):
    drawn = key == "learning_rate" and learning_rates is not None  # the records: dots on it
    if drawn:
      ax.plot(np.arange(1, len(learning_rates) + 1), learning_rates, "-", label="schedule")
    for split, style in [("train", "o" if drawn else "-"), ("eval", "o-")]:
      points = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
      if points:
        ax.plot(*zip(*points), style, label=split, markersize=3)
      for replica in sorted({k for r in rows if r["split"] == split for k in r
                             if k.startswith(f"{key}_r") and k[len(key) + 2:].isdigit()}):
        points = [(r["step"], r[replica]) for r in rows
                  if r["split"] == split and r.get(replica) is not None]  # (frozen: none)
        if points:
          ax.plot(*zip(*points), "-", linewidth=0.6, alpha=0.6)  # one thin line per replica
    ax.set_title(key.replace("_", " "))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=90)
  plt.close(fig)
