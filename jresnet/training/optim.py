"""Optimisers and learning-rate schedules from the config, all from optax.

Weight decay is part of the optimiser, never hidden in the loss, and masked off BatchNorm
parameters and biases (Goyal et al. 2017) unless `weight_decay_mask=False`. `config` is the run's
config (configs/default.py's fields); any object with those attributes will do.
"""

import functools
from collections.abc import Callable

import jax
import optax
from flax import traverse_util

OPTIMIZERS = ("sgd", "adamw", "lars")
SCHEDULES = ("constant", "piecewise", "cosine", "onecycle")


def base_learning_rate(config) -> float:
  """`optimizer.learning_rate`, times batch_size / lr_base_batch when that is set (Goyal et al.)."""
  lr = config.optimizer.learning_rate
  if config.optimizer.lr_base_batch:
    lr *= config.batch_size / config.optimizer.lr_base_batch
  return lr


def create_schedule(config, total_steps: int,
                    steps_per_epoch: float) -> optax.Schedule:
  """Linear warmup (`warmup_epochs`) into a constant, step-decay, cosine or one-cycle schedule."""
  s, lr = config.schedule, base_learning_rate(config)
  if s.name not in SCHEDULES:
    raise ValueError(f"schedule.name must be one of {', '.join(SCHEDULES)}; got {s.name!r}")
  if s.name == "onecycle":
    return optax.cosine_onecycle_schedule(total_steps, lr, pct_start=s.pct_start,
                                          div_factor=s.div_factor,
                                          final_div_factor=s.final_div_factor)
  warmup = round(s.warmup_epochs * steps_per_epoch)
  rest = max(total_steps - warmup, 1)
  if s.name == "constant":
    main = optax.constant_schedule(lr)
  elif s.name == "piecewise":  # boundaries are fractions of the whole run, e.g. (0.5, 0.75)
    main = optax.piecewise_constant_schedule(
        lr, {round(b * total_steps) - warmup: s.decay_factor for b in s.boundaries})
  else:
    main = optax.cosine_decay_schedule(lr, rest, alpha=s.final_lr_fraction)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(s.warmup_start_lr, lr, warmup), main],
                              [warmup])


def decay_mask(params) -> dict:
  """True for convolution and dense kernels; False for BatchNorm scales/offsets and biases."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: path[-1] == "kernel" for path in flat})


def create_optimizer(config, schedule: optax.Schedule,
                     weight_decay=None) -> optax.GradientTransformation:
  """The configured optimiser on `schedule`; `weight_decay` (a number or a traced scalar: a
  replica's of a sweep) replaces optimizer.weight_decay."""
  o = config.optimizer
  weight_decay = o.weight_decay if weight_decay is None else weight_decay
  if o.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}; got {o.name!r}")
  mask: Callable | None = decay_mask if config.weight_decay_mask else None
  if o.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
  elif o.name == "adamw":
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=weight_decay,
                     mask=mask)
  else:  # LARS (You et al. 2017): per-layer trust ratio, masked like the weight decay
    tx = optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=mask or True,
                    trust_coefficient=o.trust_coefficient, trust_ratio_mask=mask or True,
                    momentum=o.momentum, nesterov=o.nesterov)
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  if config.backbone_lr_scale != 1.0:  # fine-tuning: everything but the head learns slower
    tx = optax.chain(tx, optax.masked(optax.scale(config.backbone_lr_scale), _backbone_mask))
  if config.frozen_stages:
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                               functools.partial(_freeze_labels, frozen=set(config.frozen_stages)))
  return tx


def _backbone_mask(params) -> dict:
  return {name: jax.tree.map(lambda _, b=name != "fc": b, tree) for name, tree in params.items()}


def _freeze_labels(params, frozen: set[str]) -> dict:
  """'frozen' for every parameter of the named top-level modules (e.g. stem, layer1)."""
  return {name: jax.tree.map(lambda _, f=name in frozen: "frozen" if f else "trained", tree)
          for name, tree in params.items()}
