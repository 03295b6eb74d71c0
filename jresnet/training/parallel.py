"""Where the steps run: `jax.jit` over a 1-D 'data' mesh of all devices (default), or `pmap`.

jit: the state is replicated, the batch sharded along 'data', the state donated; BatchNorm sees the
global batch because the batch is one global array; the steps compile with `compiler_options`.
pmap: one replica per local device, the same step with `axis_name='batch'` (the model's BatchNorm
and the gradient `pmean` use it).

A runner holds what its steps compute (a `StepConfig`: model, optimiser, schedule, loss) and
places the state (initial or restored) and brings metrics back to the host; the batches come
placed on its `batch_sharding` from `jresnet.data`. What both runners do is written once, in
`Runner`; each subclass only says how it compiles and where arrays live.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jresnet.training import step as step_lib
from jresnet.training.state import TrainState, create_train_state

PMAP_AXIS = "batch"

# By default XLA:CPU hands dots, reductions and convolutions to the YNNPACK library. For ResNet's
# convolutions XLA:CPU's own kernels are faster, so on CPU the jitted steps keep YNNPACK for dots
# and reductions only (BENCHMARKS.md). Other platforms get XLA's defaults.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def compiler_options(platform: str) -> dict | None:
  """XLA options for the steps on devices of `platform`; None for XLA's defaults, also where this
  XLA does not know the option (older jaxlib)."""
  if platform != "cpu":
    return None
  try:
    on_cpu = jax.device_put(0.0, jax.local_devices(backend="cpu")[0])
    jax.jit(lambda x: x + 1).lower(on_cpu).compile(compiler_options=CPU_OPTIONS)
  except jax.errors.JaxRuntimeError as e:
    logging.warning("XLA:CPU compiler options not applied: %s", e)
    return None
  return CPU_OPTIONS


def check_batch_size(global_batch_size: int) -> None:
  """The global batch must split evenly over processes and devices; say so before compiling."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch_size % devices:
    raise ValueError(f"batch_size={global_batch_size} does not divide across {devices} devices "
                     f"({processes} process(es)); use a multiple of {devices}")


class Runner:
  """The compiled `train_step(state, batch)` and `eval_step(variables, batch)` of `step_config`,
  and the placement of what they take."""

  name: str
  train_step: Callable
  train_steps: Callable | None = None  # (jit, steps_per_call > 1) several steps a call
  eval_step: Callable
  batch_sharding: NamedSharding  # where a batch lives: jit's global batch, pmap's process rows

  replicas = 1  # independent runs side by side (jit): state, batches, metrics carry that axis

  def __init__(self, step_config: step_lib.StepConfig):
    self.step_config = step_config

  @property
  def model(self):
    return self.step_config.model

  @property
  def use_ema(self) -> bool:
    return self.step_config.ema_decay is not None

  def init_state(self, image_shape: tuple[int, ...], seed: int | Sequence[int],
                 hyperparams: dict[str, Sequence[float]] | None = None) -> TrainState:
    """The initial train state for images of `image_shape` (H, W, C), placed as the runner keeps
    it; deterministic in `seed`, so every process makes the same one. With replicas, `seed` has
    one seed per replica and `hyperparams` one value per replica of each swept hyperparameter:
    their states stacked along a leading axis, none frozen."""
    cfg = self.step_config
    create = functools.partial(create_train_state, cfg.model, cfg.tx, image_shape,
                               use_ema=self.use_ema)
    # The seeds and values are arguments of the compiled program, not constants in it: one
    # program for every seed, which the persistent cache keeps (and XLA does not fold the draws).
    seeds = np.asarray(seed, np.int32)
    if self.replicas == 1:
      return self._place_new(lambda s: create(seed=s), seeds)
    values = {k: np.asarray(v, np.float32) for k, v in (hyperparams or {}).items()}
    if seeds.shape != (self.replicas,) or any(v.shape != seeds.shape for v in values.values()):
      raise ValueError(f"{self.replicas} replicas need a seed and hyperparameters each; got "
                       f"seeds {seeds.tolist()} and {values}")
    return self._place_new(lambda s, v: jax.vmap(lambda x: create(seed=x))(s).replace(
        hyperparams=v, frozen_at=jnp.full(self.replicas, -1, jnp.int32)), seeds, values)

  # What differs between the runners.
  def _place_new(self, create: Callable[..., TrainState], *args) -> TrainState:
    """`create(*args)`, compiled, its state placed as the runner keeps it."""
    raise NotImplementedError

  def put_state(self, state: TrainState) -> TrainState:
    """A state of host values (the same on every process) placed as the runner keeps it."""
    raise NotImplementedError

  def get_state(self, state: TrainState) -> TrainState:
    """The state as one copy (what a checkpoint holds)."""
    raise NotImplementedError

  def to_host(self, tree):
    """Metrics (or variables) of the steps as host values, one copy."""
    raise NotImplementedError


class JitMesh(Runner):
  """`jax.jit` with NamedShardings over a 1-D mesh of every device in the job."""

  name = "jit"

  def __init__(self, step_config: step_lib.StepConfig, devices=None, steps_per_call: int = 1,
               replicas: int = 1):
    super().__init__(step_config)
    self.replicas = replicas
    self.mesh = Mesh(np.asarray(devices or jax.devices()), ("data",))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P("data"))
    options = compiler_options(self.mesh.devices.flat[0].platform)
    train_step = functools.partial(step_lib.train_step, cfg=step_config)
    eval_step = functools.partial(step_lib.eval_step, model=step_config.model,
                                  num_classes=step_config.num_classes)
    leading = ()  # the axes in front of a train batch's rows
    if replicas > 1:  # every replica its own state and batch; the eval batch shared
      train_step, eval_step = jax.vmap(train_step), jax.vmap(eval_step, in_axes=(0, None))
      leading = (None,)
    self.train_step = jax.jit(
        train_step, in_shardings=(self.replicated, NamedSharding(self.mesh, P(*leading, "data"))),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0,
        compiler_options=options)
    if steps_per_call > 1:  # batches stacked along a leading axis of steps
      self.train_steps = jax.jit(
          functools.partial(step_lib.train_steps, train_step=train_step),
          in_shardings=(self.replicated, NamedSharding(self.mesh, P(None, *leading, "data"))),
          out_shardings=(self.replicated, self.replicated), donate_argnums=0,
          compiler_options=options)
    self.eval_step = jax.jit(
        eval_step, in_shardings=(self.replicated, self.batch_sharding),
        out_shardings=self.replicated, compiler_options=options)

  def _place_new(self, create, *args):
    return jax.jit(create, out_shardings=self.replicated)(*args)

  def put_state(self, state):
    def put(x):  # arrays already replicated stay where they are
      if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(self.replicated, x.ndim):
        return x
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
    return jax.tree.map(put, state)

  def get_state(self, state):
    return state

  def to_host(self, tree):
    return jax.device_get(tree)


class Pmap(Runner):
  """`jax.pmap` over the local devices; collectives span all processes' devices. (pmap takes no
  compiler options: XLA's defaults.)"""

  name = "pmap"

  def __init__(self, step_config: step_lib.StepConfig, bn_groups: list[list[int]] | None = None):
    super().__init__(step_config)
    self.local_mesh = Mesh(np.asarray(jax.local_devices()), (PMAP_AXIS,))  # pmap's order
    self.batch_sharding = NamedSharding(self.local_mesh, P(PMAP_AXIS))
    model = step_config.model.clone(axis_name=PMAP_AXIS, axis_index_groups=bn_groups)
    cfg = dataclasses.replace(step_config, axis_name=PMAP_AXIS, model=model)
    train_step = jax.pmap(functools.partial(step_lib.train_step, cfg=cfg), axis_name=PMAP_AXIS,
                          donate_argnums=0)
    eval_step = jax.pmap(
        functools.partial(step_lib.eval_step, model=step_config.model,
                          num_classes=step_config.num_classes, axis_name=PMAP_AXIS),
        axis_name=PMAP_AXIS)
    # A batch (this process's rows, split along them over the local devices) -> one slice per
    # device along a new leading axis, as pmap takes it; each device keeps its rows.
    n = self.local_mesh.size
    per_device = jax.jit(
        lambda batch: jax.tree.map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch),
        out_shardings=self.batch_sharding)
    self.train_step = lambda state, batch: train_step(state, per_device(batch))
    self.eval_step = lambda variables, batch: eval_step(variables, per_device(batch))

  def _place_new(self, create, *args):
    return flax.jax_utils.replicate(jax.jit(create)(*args))

  def put_state(self, state):
    return flax.jax_utils.replicate(state)

  def get_state(self, state):
    return flax.jax_utils.unreplicate(state)

  def to_host(self, tree):
    return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def bn_groups(span: int) -> list[list[int]]:
  """Consecutive groups of `span` devices (by pmap axis index) for BatchNorm statistics."""
  n = jax.device_count()
  if span < 1 or n % span:
    raise ValueError(f"bn_span={span} must divide the {n} devices")
  return [list(range(g, g + span)) for g in range(0, n, span)]


def create(kind: str, step_config: step_lib.StepConfig, devices=None,
           bn_span: int | None = None, steps_per_call: int = 1, replicas: int = 1) -> Runner:
  """The runner for `kind` ('jit' or 'pmap'); `devices` (jit only) defaults to every device of the
  job; `steps_per_call` > 1 (jit only) compiles `train_steps` for that many steps a call;
  `replicas` > 1 (jit only) trains that many independent runs side by side (`jax.vmap`).

  `bn_span`: BatchNorm statistics over groups of that many devices instead of the global batch
  (MLPerf ResNet-50's "BN span"); implemented with pmap's `axis_index_groups`.
  """
  if bn_span and kind != "pmap":
    raise ValueError("bn_span needs parallel='pmap' (BatchNorm over device groups uses pmap's "
                     "axis_index_groups); the jit path normalises over the global batch")
  if (steps_per_call > 1 or replicas > 1) and kind != "jit":
    raise ValueError(f"steps_per_call={steps_per_call} and replicas={replicas} need "
                     "parallel='jit'")
  if kind == "jit":
    return JitMesh(step_config, devices, steps_per_call, replicas)
  if kind == "pmap":
    return Pmap(step_config, bn_groups(bn_span) if bn_span else None)
  raise ValueError(f"parallel must be 'jit' or 'pmap'; got {kind!r}")
