"""A torchinfo-style table of a model: layers, output shapes, parameters and multiply-adds.

Shapes are traced abstractly (`jax.eval_shape`), so even ResNet-1001 summarises in seconds without
allocating its weights. Multiply-adds count convolutions and dense layers, as torchvision's
published GFLOPS figures do.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx, traverse_util


@dataclasses.dataclass(frozen=True)
class Row:
  path: tuple[str, ...]
  kind: str
  output_shape: tuple[int, ...]
  params: int
  macs: int


@dataclasses.dataclass(frozen=True)
class Summary:
  input_shape: tuple[int, ...]
  rows: tuple[Row, ...]
  total_params: int
  batch_stats: int
  total_macs: int

  def __str__(self) -> str:
    header = ("Layer (type)", "Output shape", "Params", "Mult-adds")
    body = [("  " * (len(r.path) - 1) + f"{r.path[-1]} ({r.kind})", str(r.output_shape),
             f"{r.params:,}", f"{r.macs:,}") for r in self.rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(4)]
    fmt = lambda line: "  ".join(
        [line[0].ljust(widths[0]), line[1].ljust(widths[1])] +
        [cell.rjust(w) for cell, w in zip(line[2:], widths[2:])])
    rule = "=" * len(fmt(header))
    lines = [rule, fmt(header), rule] + [fmt(line) for line in body] + [rule]
    lines += [f"Input shape: {self.input_shape}",
              f"Total params: {self.total_params:,}",
              f"BatchNorm statistics (not trained): {self.batch_stats:,}",
              f"Total mult-adds (G): {self.total_macs / 1e9:.3f}", rule]
    return "\n".join(lines)


def _macs(module: nn.Module, x, y) -> int:
  if isinstance(module, nn.Conv):
    *_, cin = x.shape
    kernel_elems = math.prod(module.kernel_size) if isinstance(module.kernel_size, tuple) else (
        module.kernel_size ** (x.ndim - 2))
    return math.prod(y.shape) * kernel_elems * cin // module.feature_group_count
  if isinstance(module, nn.Dense):
    return math.prod(y.shape) * x.shape[-1]
  return 0


def summary(model: nn.Module | nnx.Module, input_shape, *, depth: int = 2, dtype=jnp.float32,
            **call_kwargs) -> Summary:
  """Summarises `model` on inputs of `input_shape`, listing modules down to `depth` levels.

  `model` is a linen module, or a `jresnet.nnx` model, summarised through the linen module it
  mirrors (`model.spec`: the same layers and variable paths).
  """
  if isinstance(model, nnx.Module):
    if not isinstance(getattr(model, "spec", None), nn.Module):
      raise TypeError(f"summary() takes linen modules and jresnet.nnx models, not "
                      f"{type(model).__name__} (an NNX module without a linen `spec`)")
    model = model.spec
  if getattr(model, "scan_blocks", False):
    model = model.clone(scan_blocks=False)  # count every block, not one scanned body
  calls = []  # (path, kind, output shape, macs) in call order

  def record(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    index = len(calls)
    calls.append(None)
    y = next_fun(*args, **kwargs)
    module = context.module
    shape = tuple(y.shape) if hasattr(y, "shape") else ()
    calls[index] = (tuple(module.scope.path), type(module).__name__, shape,
                    _macs(module, args[0], y))
    return y

  with nn.intercept_methods(record):
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, dtype), **call_kwargs))

  sizes = {path: leaf.size for path, leaf in
           traverse_util.flatten_dict(variables.get("params", {})).items()}

  def params_under(prefix):
    return sum(n for path, n in sizes.items() if path[:len(prefix)] == prefix)

  def macs_under(prefix):
    return sum(c[3] for c in calls if c[0][:len(prefix)] == prefix)

  rows = tuple(Row(path, kind, shape, params_under(path), macs_under(path))
               for path, kind, shape, _ in calls if 1 <= len(path) <= depth)
  return Summary(input_shape=tuple(input_shape), rows=rows,
                 total_params=sum(sizes.values()),
                 batch_stats=sum(x.size for x in jax.tree.leaves(variables.get("batch_stats", {}))),
                 total_macs=sum(c[3] for c in calls))
