"""How many threads the host's input pipeline gets by default (config.data.threads = None)."""

import os

# Cores an accelerator host keeps from tf.data: one for the Python loop that dispatches the steps
# and places the batches, one for the runtime's own threads (transfers, callbacks).
ACCELERATOR_HOST_RESERVE = 2


def default(accelerator: bool) -> int:
  """On a CPU host half the cores, since the step's XLA computation needs the others; on a
  GPU/TPU host every core this process may run on but ACCELERATOR_HOST_RESERVE. With several
  processes on one host, bind each to its own cores (e.g. srun --cpu-bind=cores) or set
  config.data.threads."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  cores = cores or 2
  return max(1, cores - ACCELERATOR_HOST_RESERVE if accelerator else cores // 2)
