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
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class MetricWriter:
  """A run's scalars (TensorBoard, metrics.jsonl, the progress bar), its config.json and its
  notes; inactive on every process but 0."""

  def __init__(self, workdir: str, total_steps: int, start_step: int, batch_size: int):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self.batch_size = batch_size
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    truncate_metrics(workdir, start_step)
    self.jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
    self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                    mininterval=1.0)
    self.last_time, self.last_step = time.perf_counter(), start_step
    self.writer = _tensorboard_writer(os.path.join(workdir, "tensorboard"))
    if self.writer is None:
      self.note("tensorboard is not installed: no TensorBoard events (metrics.jsonl is written)")

  def write_config(self, config) -> None:
    if self.active:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  def scalars(self, step: int, split: str, metrics: dict) -> None:
    """Records {name: value} of `split` ('train' or 'eval') at `step`."""
    if not self.active:
      return
    values = {k: float(v) for k, v in metrics.items()}
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
      self.bar.write(f"step {step}: eval " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
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
      self.bar.update(steps)

  def close(self) -> None:
    if not self.active:
      return
    self.bar.close()
    if self.writer is not None:
      self.writer.close()
    self.jsonl.close()
    plot_curves(os.path.join(self.workdir, METRICS_FILE), os.path.join(self.workdir, CURVES_FILE))


def _tensorboard_writer(directory: str):
  try:
    from tensorboard.summary import Writer  # noqa: PLC0415 (optional)
  except ImportError:
    return None
  return Writer(directory)


def truncate_metrics(workdir: str, step: int) -> None:
  """Drops records past `step`: after a resume they are recomputed, not duplicated."""
  path = os.path.join(workdir, METRICS_FILE)
  if os.path.exists(path):
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, out_path: str) -> None:
  """Loss, accuracy and learning rate against step, train and eval, from metrics.jsonl."""
  import matplotlib  # noqa: PLC0415 (only at the end of a run)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  rows = read_metrics(metrics_path)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, key in zip(axes, ["loss", "accuracy", "learning_rate"]):
    for split, style in [("train", "-"), ("eval", "o-")]:
      points = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
      if points:
        ax.plot(*zip(*points), style, label=split, markersize=3)
    ax.set_title(key.replace("_", " "))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=90)
  plt.close(fig)
