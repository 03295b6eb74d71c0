"""The pure train and eval steps, shared by the jit-over-a-mesh and the pmap paths.

`axis_name=None` is the jit path: the batch is one global array, so BatchNorm statistics and the
loss are over the global batch and XLA inserts the collectives. With `axis_name` set (pmap), the
same function averages gradients and metrics over that axis, and the model's BatchNorm uses it.
"""

import dataclasses
from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jresnet.training import optim
from jresnet.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What a step computes: the model, the optimiser and its schedule, the loss."""
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  num_classes: int
  label_smoothing: float = 0.0
  ema_decay: float | None = None
  axis_name: str | None = None
  # A replica's optimiser from its hyperparameters (TrainState.hyperparams, traced): the
  # configured one with its learning-rate scale and weight decay.
  replica_tx: Callable[[dict], optax.GradientTransformation] | None = None

  @classmethod
  def from_config(cls, config, model: nn.Module, steps_per_epoch: float) -> "StepConfig":
    """The step of a resolved run config (`run_config.resolve`) for `model`."""
    schedule = optim.create_schedule(config, config.num_train_steps, steps_per_epoch)

    def replica_tx(hyperparams: dict) -> optax.GradientTransformation:
      scale = hyperparams.get("learning_rate_scale", 1.0)
      return optim.create_optimizer(config, lambda count: schedule(count) * scale,
                                    hyperparams.get("weight_decay"))

    return cls(model, optim.create_optimizer(config, schedule), schedule, config.num_classes,
               config.label_smoothing, config.ema_decay, replica_tx=replica_tx)


# What the non-finite guard reads: numbers the step computes anyway. A non-finite state stays
# non-finite (NaN spreads through every later update).
GUARDED = ("loss", "grad_norm", "update_norm", "param_norm")


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32, with optional label smoothing."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _mean(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def train_step(state: TrainState, batch: dict, cfg: StepConfig) -> tuple[TrainState, dict]:
  """One optimiser update on `batch` ({'image', 'label', 'mask'}); returns the state and metrics.

  The model's dropout (`drop_rate`, `drop_path_rate`) draws from the state's key folded with the
  step (and under pmap the device), so a resumed run drops exactly what it would have.

  A replica among several (state.hyperparams set; one slice of a vmapped state) takes its own
  hyperparameters, and is frozen from the step its update goes non-finite: its state stops
  changing, the others go on, and `frozen_at` says when.
  """
  hyperparams = state.hyperparams or {}
  tx = cfg.tx if state.hyperparams is None else cfg.replica_tx(hyperparams)
  label_smoothing = hyperparams.get("label_smoothing", cfg.label_smoothing)
  dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  if cfg.axis_name is not None:
    dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(cfg.axis_name))

  def loss_fn(params):
    logits, updates = cfg.model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
        mutable=["batch_stats"], rngs={"dropout": dropout_key})
    loss = cross_entropy(logits, batch["label"], cfg.num_classes, label_smoothing).mean()
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = _mean(grads, cfg.axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = (None if cfg.ema_decay is None
                else optax.incremental_update(params, state.ema_params, 1.0 - cfg.ema_decay))
  metrics = {
      "loss": _mean(loss, cfg.axis_name),
      "accuracy": _mean(jnp.mean(jnp.argmax(logits, -1) == batch["label"]), cfg.axis_name),
      "learning_rate": cfg.schedule(state.step) * hyperparams.get("learning_rate_scale", 1.0),
      "grad_norm": optax.tree.norm(grads),
      "update_norm": optax.tree.norm(updates),
      "param_norm": optax.tree.norm(params),
  }
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params)
  if state.frozen_at is not None:  # a replica: frozen from its first non-finite update on
    finite = jnp.all(jnp.isfinite(jnp.stack([metrics[k] for k in GUARDED])))
    frozen_at = jnp.where((state.frozen_at < 0) & ~finite, state.step + 1, state.frozen_at)
    kept = jax.tree.map(lambda old, new: jnp.where(frozen_at >= 0, old, new),
                        (state.params, state.batch_stats, state.opt_state, state.ema_params),
                        (params, batch_stats, opt_state, ema_params))
    new_state = new_state.replace(params=kept[0], batch_stats=kept[1], opt_state=kept[2],
                                  ema_params=kept[3], frozen_at=frozen_at)
    metrics["frozen_at"] = frozen_at
  return new_state, metrics


def train_steps(state: TrainState, batches: dict,
                train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]):
  """len(batches) updates, one per batch along the leading axis of `batches`, in one program
  (`lax.scan`): the updates of as many `train_step` calls, with fewer dispatches; the metrics of
  every step, stacked."""
  return jax.lax.scan(train_step, state, batches)


def eval_step(variables: dict, batch: dict, model: nn.Module, num_classes: int,
              axis_name: str | None = None) -> dict:
  """Sums over the real (mask True) examples of a batch: loss, top-1 hits, top-5 hits (only with
  more than 5 classes, where they say something) and count."""
  logits = model.apply(variables, batch["image"], train=False)
  mask = batch["mask"].astype(jnp.float32)
  loss = cross_entropy(logits, batch["label"], num_classes)
  top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
  sums = {
      "loss": jnp.sum(loss * mask),
      "top1": jnp.sum((top5[:, 0] == batch["label"]) * mask),
      "count": jnp.sum(mask),
  }
  if num_classes > 5:
    sums["top5"] = jnp.sum(jnp.any(top5 == batch["label"][:, None], axis=-1) * mask)
  return sums if axis_name is None else jax.lax.psum(sums, axis_name)


def summarise_eval(sums: dict) -> dict:
  """Totals over a split -> loss, accuracy (top-1), top-5 accuracy (where there are more than 5
  classes), and the example count; of each replica (a list) where the totals have that axis."""
  n = np.asarray(sums["count"], np.float64)
  top5 = {"top5_accuracy": np.asarray(sums["top5"]) / n} if "top5" in sums else {}
  values = {"loss": np.asarray(sums["loss"]) / n, "accuracy": np.asarray(sums["top1"]) / n,
            **top5, "count": n.astype(np.int64)}
  return {k: v.tolist() for k, v in values.items()}


def evaluate(runner, variables: dict, batches: Iterable[dict]) -> dict:
  """Loss, top-1 and top-5 accuracy of `variables` over `batches` (placed for `runner`, a
  `parallel.Runner`): `eval_step`'s sums over every batch, then divided by the real (mask True)
  examples among them, so each example counts once."""
  sums = None
  for batch in batches:
    out = runner.eval_step(variables, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  return summarise_eval(runner.to_host(sums))
