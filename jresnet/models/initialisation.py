"""A model's initial variables without its forward pass: `init_variables(model, key)` equals
`model.init(key, x)` bit for bit, in a fraction of its time on a CPU (BENCHMARKS.md).

Flax's `init` runs the forward pass and every initialiser eagerly, and on a CPU each initialiser
of a new shape compiles its own threefry kernel (ResNet-50 has 20 kernel shapes); jitting the
whole `init` compiles them all in one program, which is not faster. Here `jax.eval_shape` traces
the model once and records each variable's initialiser, shape and the key Flax derives for it
(with Flax's own derivation); then all `VarianceScaling` kernels are drawn in ONE jitted
program with one threefry over all their elements, element i of a kernel with that kernel's key
and counter i. That is what `jax.random` computes for each kernel on its own (partitionable
threefry, JAX's default), followed by the same float operations as `jax.random.normal`/`uniform`
and `variance_scaling`. Constant initialisers (BatchNorm's ones and zeros) run as they are.

Where these conditions do not hold (another key implementation, `jax_threefry_partitionable`
off, or scanned stages, whose keys are split inside `nn.scan`) `init_variables` is `model.init`;
a parameter of another dtype or initialiser is initialised by its own initialiser. Either way the
result is `model.init`'s (tested bitwise). The recording patches two Flax functions for the
duration of one `eval_shape` (not thread-safe).
"""

import contextlib
import functools
import math
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import scope as flax_scope
from jax import lax
from jax.extend.random import threefry2x32_p

from jresnet.models.layers import VarianceScaling


@contextlib.contextmanager
def _recording(root_holder: list, params: list, others: list, suffixes: dict):
  """Records, while Flax initialises a model, each variable's initialiser and arguments and the
  static data folded into the root key for each parameter's key."""
  fold_in_static = flax_scope._fold_in_static
  param, variable = flax_scope.Scope.param, flax_scope.Scope.variable

  def recording_fold_in(rng, data):
    out = fold_in_static(rng, data)
    if root_holder and rng is root_holder[0]:
      suffixes[id(out)] = tuple(data)
    return out

  def recording_param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
    def recorded(key, *args, **kwargs):
      value = init_fn(key, *args, **kwargs)
      params.append((("params", *self.path, name), init_fn, suffixes.get(id(key)), args, kwargs,
                     value))
      return value
    return param(self, name, recorded, *init_args, unbox=unbox, **init_kwargs)

  def recording_variable(self, col, name, init_fn=None, *init_args, unbox=True, **init_kwargs):
    if init_fn is None:
      return variable(self, col, name, init_fn, *init_args, unbox=unbox, **init_kwargs)

    def recorded(*args, **kwargs):
      value = init_fn(*args, **kwargs)
      others.append(((col, *self.path, name), init_fn, args, kwargs))
      return value
    return variable(self, col, name, recorded, *init_args, unbox=unbox, **init_kwargs)

  with mock.patch.object(flax_scope, "_fold_in_static", recording_fold_in), \
       mock.patch.object(flax_scope.Scope, "param", recording_param), \
       mock.patch.object(flax_scope.Scope, "variable", recording_variable):
    yield


def _fans_denominator(init: VarianceScaling, shape: tuple[int, ...]) -> float:
  """`variance_scaling`'s denominator for its default axes (in -2, out -1)."""
  receptive = math.prod(shape) / shape[-2] / shape[-1]
  fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[init.mode]


ROW = 1024  # parameters are drawn as rows of this many elements, each row with one key


def _unit_floats(row_keys, row_counters) -> jax.Array:
  """What `jax.random.uniform` computes from its random bits before scaling, as (rows, ROW):
  element c of row r is element `row_counters[r] + c` of the parameter whose key data is
  `row_keys[r]` (one threefry for all; `jax.random.bits` draws each element so)."""
  shape = (row_keys.shape[0], ROW)
  counter = row_counters[:, None] + lax.broadcasted_iota(jnp.uint32, shape, 1)
  k1, k2 = (jnp.broadcast_to(row_keys[:, i, None], shape) for i in (0, 1))
  bits1, bits2 = threefry2x32_p.bind(k1, k2, jnp.zeros_like(counter), counter)
  float_bits = lax.bitwise_or(lax.shift_right_logical(bits1 ^ bits2, jnp.uint32(32 - 23)),
                              jnp.uint32(np.array(1.0, np.float32).view(np.uint32)))
  return lax.bitcast_convert_type(float_bits, jnp.float32) - jnp.float32(1.0)


def _scaled(floats, minval, maxval) -> jax.Array:
  """`jax.random.uniform`'s last step: [0, 1) floats to [minval, maxval)."""
  minval, maxval = jnp.float32(minval), jnp.float32(maxval)
  return lax.max(minval, floats * (maxval - minval) + minval)


@functools.partial(jax.jit, static_argnames="normal_rows")
def _draw_rows(row_keys, row_counters, row_variances, *, normal_rows):
  """`VarianceScaling` samples, normal in the first `normal_rows` rows, uniform after."""
  floats = _unit_floats(row_keys, row_counters)
  std = jnp.sqrt(row_variances)[:, None]
  lo = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
  gaussian = lax.mul(jnp.float32(np.sqrt(2)), lax.erf_inv(_scaled(floats[:normal_rows], lo, 1.0)))
  uniform = _scaled(floats[normal_rows:], -1.0, 1.0)
  # jax.random's result, then the initialiser's product: two roundings that XLA must not merge
  # into one product of constants.
  gaussian, uniform = lax.optimization_barrier((gaussian, uniform))
  return jnp.concatenate([gaussian * std[:normal_rows],
                          uniform * jnp.sqrt(3 * row_variances)[normal_rows:, None]])


def _draw(members: list) -> list[np.ndarray]:
  """The samples of `members` ((init, shape, key data, variance) each) in one program: each
  parameter takes whole rows, and the rows' keys, counters and variances are its inputs (as
  constants, XLA would spend seconds folding them). The result is split outside the program
  (inside, XLA would fuse the whole draw into every slice)."""
  order = sorted(range(len(members)), key=lambda i: members[i][0].distribution != "normal")
  inits, shapes, keys, variances = zip(*[members[i] for i in order])
  sizes = [math.prod(s) for s in shapes]
  rows = [-(-n // ROW) for n in sizes]
  owner = np.repeat(np.arange(len(rows)), rows)
  first = np.cumsum([0] + rows[:-1])
  row_counters = ((np.arange(sum(rows)) - first[owner]) * ROW).astype(np.uint32)
  normal_rows = sum(r for init, r in zip(inits, rows) if init.distribution == "normal")
  drawn = np.asarray(_draw_rows(np.stack(keys)[owner], row_counters,
                                np.array(variances, np.float32)[owner], normal_rows=normal_rows))
  out = [None] * len(members)
  for i, start, r, n, shape in zip(order, first, rows, sizes, shapes):
    out[i] = drawn[start:start + r].reshape(-1)[:n].reshape(shape)
  return out


def _input(model, input_shape):
  if input_shape is None:
    input_shape = model.input_shape(64)
  return jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)


def _fast_path_applies(model) -> bool:
  return (jax.config.jax_threefry_partitionable and not getattr(model, "scan_blocks", False)
          and jax.config.jax_default_prng_impl == "threefry2x32")


def init_variables(model: nn.Module, key: jax.Array | int = 0,
                   input_shape: tuple[int, ...] | None = None) -> dict:
  """`model.init(key, jnp.zeros(input_shape))`, bit for bit, without the forward pass.

  `key` is a `jax.random.key` or an int seed; `input_shape` defaults to one 64x64 image
  (`model.input_shape(64)`; a ResNet's variables do not depend on the image size).
  """
  key = jax.random.key(key) if isinstance(key, int) else key
  x = _input(model, input_shape)
  if not _fast_path_applies(model):
    return model.init(key, jnp.zeros(x.shape, x.dtype))
  root, params, others, suffixes = [], [], [], {}

  def trace(k, x):
    root.append(k)
    return model.init(k, x)

  with _recording(root, params, others, suffixes):
    shapes = jax.eval_shape(trace, key, x)
  expected = set(traverse_util.flatten_dict(shapes))
  recorded = {path for path, *_ in params} | {path for path, *_ in others}
  if recorded != expected or any(suffix is None for _, _, suffix, *_ in params):
    return model.init(key, jnp.zeros(x.shape, x.dtype))  # a structure this does not know

  flat = {}
  for path, init_fn, args, kwargs in others:
    flat[path] = init_fn(*args, **kwargs)
  drawn = []
  for path, init_fn, suffix, args, kwargs, value in params:
    param_key = flax_scope._fold_in_static(key, suffix)
    if (isinstance(init_fn, VarianceScaling) and value.dtype == jnp.float32 and not kwargs
        and len(value.shape) >= 2 and init_fn.distribution in ("normal", "uniform")):
      variance = np.float32(init_fn.scale / _fans_denominator(init_fn, value.shape))
      drawn.append((path, (init_fn, value.shape, jax.random.key_data(param_key), variance)))
    else:
      flat[path] = init_fn(param_key, *args, **kwargs)
  if drawn:
    paths, members = zip(*drawn)
    flat.update(zip(paths, map(jnp.asarray, _draw(members))))
  return traverse_util.unflatten_dict(flat)
