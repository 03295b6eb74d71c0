"""Where the steps run: `jax.jit` over a 1-D 'data' mesh of all devices (default), or `pmap`.

jit: the state is replicated, the batch sharded along 'data', the state donated; BatchNorm sees the
global batch because the batch is one global array; the steps compile with `compiler.options`.
pmap: one replica per local device, the same step with `axis_name='batch'` (the model's BatchNorm
and the gradient `pmean` use it).
Both take host-local numpy batches (this process's rows of each global batch, as `jresnet.data`
yields them), place them with `prefetch`, finish them there (the normalisation of the host
stream's uint8 images) and return host-side metrics.
"""

import collections
import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jresnet.training import compiler
from jresnet.training import step as step_lib
from jresnet.training.state import TrainState

PMAP_AXIS = "batch"


def prefetch(batches: Iterable, size: int, put: Callable) -> Iterator:
  """Yields `put(batch)` for each batch, keeping `size` batches in flight: `put` starts
  asynchronous transfers, so copying the next batches overlaps the current step."""
  batches = iter(batches)
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(put(batch))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)


def check_batch_size(global_batch_size: int) -> None:
  """The global batch must split evenly over processes and devices; say so before compiling."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch_size % devices:
    raise ValueError(f"batch_size={global_batch_size} does not divide across {devices} devices "
                     f"({processes} process(es)); use a multiple of {devices}")


class _Feeder:
  """What both runners share: batches placed on the devices, and finished there."""

  def __init__(self):
    self._on_device = {}  # feed's functions, compiled once each

  def feed(self, batches: Iterable[dict], size: int,
           on_device: Callable | None = None) -> Iterator[dict]:
    """The batches placed (`prefetch` of `put_batch`), then `on_device(batch)` run there."""
    if on_device is None:
      return prefetch(batches, size, self.put_batch)
    if on_device not in self._on_device:
      self._on_device[on_device] = self.compile_on_device(on_device)
    run = self._on_device[on_device]
    return prefetch(batches, size, lambda batch: run(self.put_batch(batch)))


class JitMesh(_Feeder):
  """`jax.jit` with NamedShardings over a 1-D mesh of every device in the job."""

  name = "jit"

  def __init__(self, step_cfg: step_lib.StepConfig, devices=None):
    super().__init__()
    self.mesh = Mesh(np.asarray(devices or jax.devices()), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.data = NamedSharding(self.mesh, P("data"))
    options = compiler.options(self.mesh.devices.flat[0].platform)
    self.train_step = jax.jit(functools.partial(step_lib.train_step, cfg=step_cfg),
                              in_shardings=(self.replicated, self.data),
                              out_shardings=(self.replicated, self.replicated), donate_argnums=0,
                              compiler_options=options)
    self.eval_step = jax.jit(
        functools.partial(step_lib.eval_step, model=step_cfg.model,
                          num_classes=step_cfg.num_classes),
        in_shardings=(self.replicated, self.data), out_shardings=self.replicated,
        compiler_options=options)

  def create_state(self, create_fn) -> TrainState:
    """Runs the (deterministic) initialisation on every process, replicated."""
    return jax.jit(create_fn, out_shardings=self.replicated)()

  def put_state(self, state: TrainState) -> TrainState:
    """Replicates host values (identical on every process); keeps arrays already replicated."""
    def put(x):
      if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(self.replicated, x.ndim):
        return x
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
    return jax.tree.map(put, state)

  def get_state(self, state: TrainState) -> TrainState:
    return state

  @property
  def batch_sharding(self) -> NamedSharding:
    """Where a batch lives: split along 'data' (what the device input path produces)."""
    return self.data

  def put_batch(self, batch: dict) -> dict:
    """This process's rows -> global arrays split along 'data' (all processes' rows together)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.data, x), batch)

  def compile_on_device(self, fn: Callable) -> Callable:
    """`fn` over a placed batch, its output sharded as the batch."""
    return jax.jit(fn, out_shardings=self.data)

  @staticmethod
  def to_host(tree):
    return jax.device_get(tree)


class Pmap(_Feeder):
  """`jax.pmap` over the local devices; collectives span all processes' devices. (pmap takes no
  compiler options: XLA's defaults.)"""

  name = "pmap"

  def __init__(self, step_cfg: step_lib.StepConfig, bn_groups: list[list[int]] | None = None):
    super().__init__()
    self.local_mesh = Mesh(np.asarray(jax.local_devices()), (PMAP_AXIS,))  # pmap's order
    self.per_device = NamedSharding(self.local_mesh, P(PMAP_AXIS))
    model = step_cfg.model.clone(axis_name=PMAP_AXIS, axis_index_groups=bn_groups)
    cfg = dataclasses.replace(step_cfg, axis_name=PMAP_AXIS, model=model)
    self.train_step = jax.pmap(functools.partial(step_lib.train_step, cfg=cfg),
                               axis_name=PMAP_AXIS, donate_argnums=0)
    self.eval_step = jax.pmap(
        functools.partial(step_lib.eval_step, model=step_cfg.model,
                          num_classes=step_cfg.num_classes, axis_name=PMAP_AXIS),
        axis_name=PMAP_AXIS)

  def create_state(self, create_fn) -> TrainState:
    return flax.jax_utils.replicate(jax.jit(create_fn)())

  def put_state(self, host_state: TrainState) -> TrainState:
    return flax.jax_utils.replicate(host_state)

  def get_state(self, state: TrainState) -> TrainState:
    return flax.jax_utils.unreplicate(state)

  batch_sharding = None  # batches come from the host, split per device by put_batch

  def put_batch(self, batch: dict) -> dict:
    """This process's rows -> one slice per local device, along a new leading axis."""
    n = self.local_mesh.size
    split = lambda x: jax.device_put(np.reshape(x, (n, -1, *np.shape(x)[1:])), self.per_device)
    return jax.tree.map(split, batch)

  def compile_on_device(self, fn: Callable) -> Callable:
    """`fn` over a placed batch, per device."""
    return jax.pmap(fn)

  @staticmethod
  def to_host(tree):
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def bn_groups(span: int) -> list[list[int]]:
  """Consecutive groups of `span` devices (by pmap axis index) for BatchNorm statistics."""
  n = jax.device_count()
  if span < 1 or n % span:
    raise ValueError(f"bn_span={span} must divide the {n} devices")
  return [list(range(g, g + span)) for g in range(0, n, span)]


def create(kind: str, step_cfg: step_lib.StepConfig, devices=None, bn_span: int | None = None):
  """The runner for `kind`; `devices` (jit only) defaults to every device of the job.

  `bn_span`: BatchNorm statistics over groups of that many devices instead of the global batch
  (MLPerf ResNet-50's "BN span"); implemented with pmap's `axis_index_groups`.
  """
  if bn_span and kind != "pmap":
    raise ValueError("bn_span needs parallel='pmap' (BatchNorm over device groups uses pmap's "
                     "axis_index_groups); the jit path normalises over the global batch")
  if kind == "jit":
    return JitMesh(step_cfg, devices)
  if kind == "pmap":
    return Pmap(step_cfg, bn_groups(bn_span) if bn_span else None)
  raise ValueError(f"parallel must be 'jit' or 'pmap'; got {kind!r}")
