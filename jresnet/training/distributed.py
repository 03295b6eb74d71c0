"""Multi-process start-up: `jax.distributed.initialize` when, and only when, the job has several
processes, and faults that surface in seconds with words.

Explicit settings win: the environment variables JAX_COORDINATOR_ADDRESS (host:port of process
0), JAX_NUM_PROCESSES and JAX_PROCESS_ID. Otherwise JAX's own cluster detection is used where a
cluster is evident: a TPU pod slice (several TPU workers) or a SLURM job of several tasks.
A single process needs nothing.

A job is one unit: when a process is lost, the others stop (`exits_when_a_process_is_lost`) and the
whole job is restarted, every process, never one alone (a restarted process is a stranger to the
survivors' coordination service). A preempted job stops together: SIGTERM is noted (`listen`,
`sigterm_noted`) and the step at which every process stops is agreed (`AgreedStop`).
"""

import collections
import contextlib
import functools
import hashlib
import json
import os
import pathlib
import signal
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# JAX's own give-up, a process abort with a C++ stack trace, comes this long after ours.
_JAX_GRACE_S = 30
# Config fields that each process may choose for its own machine: paths and thread counts.
PER_PROCESS_FIELDS = ("compilation_cache_dir", "data.cache_dir", "data.data_dir",
                      "data.manual_dir", "data.threads")


def _cluster() -> str | None:
  """The kind of cluster JAX can detect by itself, if this process is part of one."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return "SLURM job"
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    return "TPU pod slice"
  return None


def _fail(message: str) -> None:
  """One line on stderr, then exit 1 at once: skips JAX's shutdown barrier, which would wait for
  the lost processes and then abort with a stack trace."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(1)


def initialize(initialization_timeout_s: int = 300, heartbeat_timeout_s: int = 10) -> None:
  """Connects this process to the others of its job (before any other JAX call).

  Says in one line whom it waits for and for how long; if the job is not complete after
  `initialization_timeout_s`, exits 1 with one line. A process that stops sending heartbeats for
  `heartbeat_timeout_s` counts as lost.
  """
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    process_id = int(os.environ["JAX_PROCESS_ID"])
    who = f"process {process_id} of {num_processes}"
    where = f"the coordinator at {address} (process 0) and all {num_processes} processes"
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over TCP
    arguments = dict(coordinator_address=address, num_processes=num_processes,
                     process_id=process_id)
  elif cluster := _cluster():
    who, where, arguments = f"this {cluster} process", f"every process of the {cluster}", {}
  else:
    return
  print(f"{who}: waiting up to {initialization_timeout_s} s for {where} "
        "(config.distributed.initialization_timeout_s)", flush=True)
  watchdog = threading.Timer(initialization_timeout_s, _fail, [
      f"{who}: {where} did not all join within {initialization_timeout_s} s; start every "
      "process of the job (the same command, each with its own process id), or raise "
      "config.distributed.initialization_timeout_s"])
  watchdog.daemon = True
  watchdog.start()
  # Stops are agreed by AgreedStop; JAX's preemption service would take SIGTERM from the loop.
  jax.config.update("jax_enable_preemption_service", False)
  jax.distributed.initialize(**arguments,
                             initialization_timeout=initialization_timeout_s + _JAX_GRACE_S,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  watchdog.cancel()
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def _client():
  """JAX's client of the job's coordination service (its key-value store, the live processes),
  which JAX has no public handle for."""
  from jax._src import distributed as jax_distributed  # noqa: PLC0415

  return jax_distributed.global_state.client


def code_version() -> str:
  """A digest of jresnet's source files and the JAX and Flax versions: what a job's processes must
  share to compute the same steps."""
  import flax  # noqa: PLC0415

  digest = hashlib.sha256(f"jax {jax.__version__}, flax {flax.__version__}".encode())
  package = pathlib.Path(__file__).resolve().parents[1]
  for path in sorted(package.rglob("*.py")):
    digest.update(str(path.relative_to(package)).encode() + path.read_bytes())
  return digest.hexdigest()[:16]


def check_one_job(settings: dict, timeout_s: int = 60) -> None:
  """Before anything is compiled or written: every process of the job must run with the same
  `settings` (the resolved config as a dict, the mode, ...; PER_PROCESS_FIELDS excepted) and the
  same code (`code_version`). Otherwise every process exits 1 with one line naming the fields
  that differ and the processes that differ from process 0."""
  if jax.process_count() == 1:
    return
  client = _client()
  ours = {k: v for k, v in traverse_util.flatten_dict(settings, sep=".").items()
          if k not in PER_PROCESS_FIELDS}
  ours["code version"] = code_version()
  client.key_value_set(f"jresnet/job/{jax.process_index()}", json.dumps(ours, default=repr))
  every = [json.loads(client.blocking_key_value_get(f"jresnet/job/{i}", timeout_s * 1000))
           for i in range(jax.process_count())]
  differences = []
  for i, theirs in enumerate(every[1:], 1):
    fields = sorted(k for k in every[0].keys() | theirs.keys() if every[0].get(k) != theirs.get(k))
    differences += [f"process {i} has {k}={theirs.get(k)!r} (process 0: {every[0].get(k)!r})"
                    for k in fields]
  if differences:  # every process finds them: all exit, through JAX's shutdown barrier
    raise SystemExit(f"error: process {jax.process_index()} of {jax.process_count()}: the "
                     f"processes of this job were started differently: {'; '.join(differences)}. "
                     "Start every process with the same command and the same code (only the "
                     "process id differs)")


def lost_processes() -> list[int] | None:
  """The ids of the job's processes that stopped sending heartbeats ([] when none did), or None
  when the coordinator itself (process 0) cannot be reached. Blocks up to about the heartbeat
  timeout while a lost process is still being detected."""
  ids = list(range(jax.process_count()))
  try:
    live = _client().get_live_nodes(ids)
  except Exception:  # noqa: BLE001 (any failure to ask means the coordinator is gone)
    return None
  return [i for i in ids if i not in live]


def exits_when_a_process_is_lost(function):
  """Wraps `function` (a job's main): in a job of several processes, when it raises and processes
  of the job were lost, one line saying which, then exit 1, since the whole job must be
  restarted; any other error is raised as it is."""

  @functools.wraps(function)
  def wrapper(*args, **kwargs):
    try:
      return function(*args, **kwargs)
    except Exception as error:
      if jax.process_count() > 1 and (lost := lost_processes()) != []:
        who = ("the coordinator (process 0)" if lost is None
               else "process " + ", ".join(map(str, lost)))
        _fail(f"process {jax.process_index()} of {jax.process_count()}: lost {who} of this job "
              f"({type(error).__name__}); restart the whole job, every process, to resume from "
              "the last checkpoint")
      raise

  return wrapper


_sigterm = threading.Event()


def _note_sigterm(signum, frame):
  logging.warning("SIGTERM: checkpointing and stopping")
  _sigterm.set()


def listen() -> None:
  """From now on SIGTERM is noted (`sigterm_requested`), not fatal: train.py's first act, so that
  one sent during start-up stops the run cleanly before training."""
  signal.signal(signal.SIGTERM, _note_sigterm)


def sigterm_requested() -> bool:
  return _sigterm.is_set()


@contextlib.contextmanager
def sigterm_noted():
  """SIGTERM noted inside (a run: it checkpoints and stops), then the process's previous handler
  back and the note cleared, since the request has been acted on."""
  previous = signal.signal(signal.SIGTERM, _note_sigterm)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
    _sigterm.clear()


class AgreedStop:
  """A request to stop (SIGTERM) that reaches one process of a job stops every process at the
  same step, whatever the skew between the processes' notices.

  Called once per step with this process's own request, it answers whether the job stops now.
  With several processes, each step's requests are combined by a max over every device of the
  job, a tiny program dispatched beside the step, and the answer read `lag` steps later: all
  processes read the same value at the same step, and the host stays `lag` steps ahead of the
  devices. A single process needs no agreement: its own request is the answer.
  """

  def __init__(self, lag: int = 2):
    self.lag = lag
    self.pending = collections.deque()
    if jax.process_count() > 1:
      mesh = Mesh(np.asarray(jax.devices()), ("devices",))
      self.sharding = NamedSharding(mesh, PartitionSpec("devices"))
      self.any_requested = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

  def _dispatch(self, requested: bool) -> jax.Array:
    flags = np.full(jax.local_device_count(), requested, np.int32)
    return self.any_requested(jax.make_array_from_process_local_data(self.sharding, flags))

  def now(self, requested: bool) -> bool:
    """Whether any process has asked to stop, agreed at once (blocks until every process asks:
    for the start of a run)."""
    if jax.process_count() == 1:
      return requested
    return bool(self._dispatch(requested))

  def __call__(self, requested: bool) -> bool:
    """Whether the job stops at this step (this process's own request as input)."""
    if jax.process_count() == 1:
      return requested
    self.pending.append(self._dispatch(requested))
    return len(self.pending) > self.lag and bool(self.pending.popleft())
