"""Steady-state throughput: warm up, then the median of timed repeats of several steps.

`step()` enqueues one step (asynchronously for JAX and CUDA); `sync()` waits for everything
enqueued, so it is called once per repeat, not per step, and dispatch overlaps execution as in a
real training loop.
"""

import math
import statistics
import time
from collections.abc import Callable


def throughput(step: Callable[[], None], sync: Callable[[], None], images_per_step: int,
               repeats: int, min_repeat_s: float = 2.0, min_steps: int = 2,
               max_steps: int = 100) -> dict:
  """images/s over `repeats` repeats of n >= `min_steps` steps, n chosen so that a repeat lasts
  `min_repeat_s`.

  The warm-up step (the first call: allocation, autotuning, caches) is timed only to choose n.
  """
  start = time.perf_counter()
  step()
  sync()
  first = time.perf_counter() - start
  steps = min(max(math.ceil(min_repeat_s / max(first, 1e-6)), min_steps), max_steps)
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    sync()
    rates.append(steps * images_per_step / (time.perf_counter() - start))
  return {"images_per_s": round(statistics.median(rates), 2),
          "images_per_s_min": round(min(rates), 2), "images_per_s_max": round(max(rates), 2),
          "first_step_s": round(first, 3), "steps_per_repeat": steps, "repeats": repeats}


def seconds(fn: Callable[[], object]) -> float:
  """Wall-clock seconds of one call of `fn` (which waits for its own work)."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start
