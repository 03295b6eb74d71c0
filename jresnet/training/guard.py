"""The non-finite guard: a step whose loss or gradient, update or parameter norm is NaN or
infinite stops training before its state can be saved.

The step computes these four numbers anyway; the guard only reads them on the host, at the steps
whose metrics are fetched (every log, evaluation and save step), so it adds no device work and no
synchronisation. A non-finite state stays non-finite (NaN spreads through every later update), so
a check at each save step is enough to keep it out of every checkpoint.
"""

import numpy as np

CHECKED = ("loss", "grad_norm", "update_norm", "param_norm")


def check_update(step: int, metrics: dict, last_saved: int | None, workdir: str) -> None:
  """Raises FloatingPointError if any of `metrics`' CHECKED values (host numbers) is not finite."""
  bad = {k: float(metrics[k]) for k in CHECKED if k in metrics and not np.isfinite(metrics[k])}
  if not bad:
    return
  remedy = ("lower the learning rate (--config.optimizer.learning_rate) or set "
            "--config.grad_clip_norm")
  advice = (f"The last good checkpoint (step {last_saved}) is kept in {workdir}; resuming would "
            f"repeat the same steps. Train anew in another --workdir: {remedy}, with "
            f"--config.init_from={workdir} to start from this run's weights." if last_saved else
            f"No checkpoint was saved: {remedy}.")
  raise FloatingPointError(
      f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}: training "
      f"stopped before saving. {advice}")
