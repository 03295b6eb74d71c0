"""Multi-process start-up: `jax.distributed.initialize` when, and only when, the job has several
processes.

Explicit settings win: the environment variables JAX_COORDINATOR_ADDRESS (host:port of process
0), JAX_NUM_PROCESSES and JAX_PROCESS_ID. Otherwise JAX's own cluster detection is used where a
cluster is evident: a TPU pod slice (several TPU workers) or a SLURM job of several tasks.
A single process needs nothing.
"""

import os

import jax
from absl import logging


def _cluster_detected() -> bool:
  slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
  tpu_workers = os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") + 1
  return slurm_tasks > 1 or tpu_workers > 1


def initialize() -> None:
  """Connects this process to the others of its job (before any other JAX call)."""
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    process_id = int(os.environ["JAX_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over TCP
    jax.distributed.initialize(address, num_processes, process_id)
  elif _cluster_detected():
    jax.distributed.initialize()
  else:
    return
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
