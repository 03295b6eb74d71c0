"""Native NNX ResNets beside the linen model wrapped by `flax.nnx.bridge.ToNNX`, and beside linen.

    python -m bench.nnx_forms             # ResNet-20 train at batch 128 and 8, ResNet-50 eval
    python -m bench.nnx_forms --quick     # tiny batches, one repeat: a smoke test

For each workload, the same step in five forms: the linen model under `jax.jit` (the project's
train step, `jresnet.training.step`, or `model.apply`), and the native `jresnet.nnx` model and
the bridge-wrapped linen model, each under `nnx.jit` (`jresnet.nnx.training.train_step`) and
under `jax.jit` on `nnx.split`'s state (`pure_train_step`). Printed: compile time (first call),
images/s (median of the repeats, `bench.timing`, interleaved across the forms), the ratio to
linen, and for the `jax.jit` forms the size of the program; then, per
implementation, what `nnx.split` gives (variable types, leaves, parameter paths) and whether
the module exists before a call and follows `train()` / `eval()`.
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util
from flax.nnx import bridge

import jresnet
import jresnet.nnx
from bench import report, timing
from jresnet.nnx import training
from jresnet.training import step as linen_step
from jresnet.training.state import TrainState

COLUMNS = ["workload", "form", "batch", "compile_s", "images_per_s", "images_per_s_min",
           "images_per_s_max", "vs_linen", "hlo_ops", "convolutions", "gflops"]
TX = optax.sgd(0.1, momentum=0.9)


class Bridged(nnx.Module):
  """The linen ResNet in `bridge.ToNNX`, with the `use_running_average` flag that `train()` /
  `eval()` set: the least a bridge-based `jresnet.nnx` would have to add to be trained like an
  NNX module (the wrapper alone needs `train=..., mutable=[...]` at every call)."""

  def __init__(self, model: jresnet.ResNet, example: jax.Array, rngs: nnx.Rngs):
    self.net = bridge.lazy_init(bridge.ToNNX(model, rngs=rngs), example)
    self.use_running_average = False

  def __call__(self, x: jax.Array) -> jax.Array:
    train = not self.use_running_average
    return self.net(x, train=train, mutable=["batch_stats"] if train else False)


def _batch(batch: int, size: int, num_classes: int) -> dict:
  rng = np.random.default_rng(0)
  return {"image": jnp.asarray(rng.standard_normal((batch, size, size, 3), dtype=np.float32)),
          "label": jnp.asarray(rng.integers(0, num_classes, batch).astype(np.int32)),
          "mask": jnp.ones((batch,), bool)}


def _timed_first(step) -> float:
  start = time.perf_counter()
  step()
  return time.perf_counter() - start


def linen_train(model, variables, batch):
  variables = jax.tree.map(jnp.copy, variables)  # the step donates them
  cfg = linen_step.StepConfig(model=model, tx=TX, schedule=optax.constant_schedule(0.1),
                              num_classes=model.num_classes)
  state = [TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables["batch_stats"],
                      opt_state=TX.init(variables["params"]), ema_params=None,
                      rng=jnp.zeros((2,), jnp.uint32))]
  jitted = jax.jit(functools.partial(linen_step.train_step, cfg=cfg), donate_argnums=0)

  def step():
    state[0], _ = jitted(state[0], batch)
  return step, lambda: jax.block_until_ready(state[0]), lambda: jitted.lower(state[0], batch)


def nnx_train(net, batch, pure: bool):
  optimizer = nnx.Optimizer(net, TX, wrt=nnx.Param)
  net.train()
  if not pure:
    out = [None]

    def step():
      out[0] = training.train_step(net, optimizer, batch)
    return step, lambda: jax.block_until_ready(out[0]), None
  graphdef, state = nnx.split((net, optimizer))
  state = [jax.tree.map(jnp.copy, state)]  # the step donates it; other forms share the arrays

  def step():
    state[0], _ = training.pure_train_step(graphdef, state[0], batch)
  return (step, lambda: jax.block_until_ready(state[0]),
          lambda: training.pure_train_step.lower(graphdef, state[0], batch))


def linen_eval(model, variables, batch):
  jitted, out = jax.jit(lambda v, x: model.apply(v, x)), [None]

  def step():
    out[0] = jitted(variables, batch["image"])
  return (step, lambda: jax.block_until_ready(out[0]),
          lambda: jitted.lower(variables, batch["image"]))


@nnx.jit
def _nnx_forward(net, x):
  return net(x)


@functools.partial(jax.jit, static_argnums=0)
def _pure_forward(graphdef, state, x):
  return nnx.merge(graphdef, state)(x)


def nnx_eval(net, batch, pure: bool):
  net.eval()
  out, lower = [None], None
  if pure:
    graphdef, state = nnx.split(net)
    lower = lambda: _pure_forward.lower(graphdef, state, batch["image"])  # noqa: E731

    def step():
      out[0] = _pure_forward(graphdef, state, batch["image"])
  else:
    def step():
      out[0] = _nnx_forward(net, batch["image"])
  return step, lambda: jax.block_until_ready(out[0]), lower


def _load_into_bridge(net: bridge.ToNNX, variables: dict) -> None:
  """The wrapper's state is linen's variables without the collection level."""
  merged = {path: value for tree in variables.values()
            for path, value in traverse_util.flatten_dict(tree).items()}
  state = nnx.state(net)
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(merged))
  nnx.update(net, state)


def _program(lower) -> dict:
  """Size of the jitted program (StableHLO operations, convolutions, XLA's FLOP count)."""
  if lower is None:
    return {}
  lowered = lower()
  text, cost = lowered.as_text(), lowered.cost_analysis() or {}
  return {"hlo_ops": text.count(" = "), "convolutions": text.count("convolution("),
          "gflops": round(cost.get("flops", 0.0) / 1e9, 3)}


def describe(name: str, net: nnx.Module) -> dict:
  """What `nnx.split` gives for a model, and how it behaves as an NNX module."""
  _, state = nnx.split(net)
  flat = list(nnx.to_flat_state(state))
  return {"implementation": name,
          "variable_types": sorted({type(v).__name__ for _, v in flat}),
          "leaves": len(flat),
          "a_parameter_path": next("/".join(map(str, p)) for p, v in flat
                                   if isinstance(v, nnx.Param) and "layer1" in p)}


def workloads(quick: bool):
  """(name, linen model, image size, batch, mode)."""
  if quick:
    return [("ResNet-20 CIFAR train", jresnet.CifarResNet20(), 16, 4, "train"),
            ("ResNet-18 eval", jresnet.ResNet18(), 64, 1, "eval")]
  return [("ResNet-20 CIFAR train", jresnet.CifarResNet20(), 32, 128, "train"),
          ("ResNet-20 CIFAR train", jresnet.CifarResNet20(), 32, 8, "train"),
          ("ResNet-50 eval", jresnet.ResNet50(), 64, 1, "eval")]


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--min-repeat-s", type=float, default=2.0)
  parser.add_argument("--quick", action="store_true", help="tiny batches, 1 repeat: smoke test")
  parser.add_argument("--out", default="bench/results.jsonl", help="JSON lines appended here")
  args = parser.parse_args(argv)
  timing_args = ({"repeats": 1, "min_repeat_s": 0.0} if args.quick else
                 {"repeats": args.repeats, "min_repeat_s": args.min_repeat_s})
  machine, rows, described = report.machine(), [], {}
  for name, model, size, batch_size, mode in workloads(args.quick):
    batch = _batch(batch_size, size, model.num_classes)
    example = batch["image"][:1]
    variables = jax.jit(lambda k, model=model, x=example: model.init(k, x))(jax.random.key(0))
    native = jresnet.nnx.from_linen(variables, model)
    bridged = Bridged(model, example, nnx.Rngs(0))
    _load_into_bridge(bridged.net, variables)
    forms = {"linen, jax.jit": functools.partial(
        linen_train if mode == "train" else linen_eval, model, variables, batch)}
    for impl, net in [("native", native), ("bridge", bridged)]:
      for pure in (False, True):
        build = nnx_train if mode == "train" else nnx_eval
        forms[f"{impl}, {'jax.jit' if pure else 'nnx.jit'}"] = functools.partial(
            build, nnx.clone(net), batch, pure)
      described[impl] = describe(impl, net)
    built, measured = {}, []
    for form, build in forms.items():
      step, sync, lower = build()
      row = {"workload": f"{name}, {size}x{size}", "form": form, "batch": batch_size,
             **report.conditions(), "machine": machine, "bench": "nnx_forms"}
      row["compile_s"] = round(_timed_first(lambda step=step, sync=sync: (step(), sync())), 2)
      row.update(_program(lower))
      built[form], row["rates"] = (step, sync), []
      measured.append(row)
    # Repeats interleaved across the forms, so that the load of a shared machine drifts over all.
    for _ in range(timing_args["repeats"]):
      for row in measured:
        step, sync = built[row["form"]]
        result = timing.throughput(step, sync, batch_size, repeats=1,
                                   min_repeat_s=timing_args["min_repeat_s"])
        row["rates"].append(result["images_per_s"])
    for row in measured:
      rates = row.pop("rates")
      row.update(images_per_s=round(statistics.median(rates), 2),
                 images_per_s_min=min(rates), images_per_s_max=max(rates))
    for row in measured:
      row["vs_linen"] = round(row["images_per_s"] / measured[0]["images_per_s"], 3)
    report.append_jsonl(args.out, measured)
    print(report.table(measured, COLUMNS), flush=True)
    rows += measured
  print("\n# nnx.split of each implementation (the last workload's model)")
  for d in described.values():
    print(d)
  print("native: built without an example input; train()/eval() switch BatchNorm; "
        "bridge: needs lazy_init on an example, and train=/mutable= at each call "
        "(here added by the `Bridged` adapter)")
  return rows


if __name__ == "__main__":
  main()
