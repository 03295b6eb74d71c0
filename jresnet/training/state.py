"""The train state: one explicit pytree, everything a run needs to continue bit for bit.

The model and the optimiser are not in it (they are code, fixed by the config); the input
position is `step` itself, because batch k of the stream is a pure function of (seed, k).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: optimiser updates applied so far
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  ema_params: Any            # exponential moving average of params, or None
  rng: jax.Array             # uint32 key data, folded with the step for any per-step randomness
  # Of a replica among several (config.replicas, config.sweep), else None: its hyperparameters
  # ({'learning_rate_scale', 'weight_decay', 'label_smoothing'}, those swept) and the step at
  # which its update went non-finite (-1: never), from which on it is frozen.
  hyperparams: Any = None
  frozen_at: Any = None

  def eval_variables(self, use_ema: bool = False) -> dict:
    params = self.ema_params if use_ema and self.ema_params is not None else self.params
    return {"params": params, "batch_stats": self.batch_stats}


def create_train_state(model, tx: optax.GradientTransformation, image_shape, seed: int,
                       use_ema: bool) -> TrainState:
  """Initialises the model on one example and the optimiser on its parameters (jit it)."""
  init_key, state_key = jax.random.split(jax.random.key(seed))
  variables = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    ema_params=params if use_ema else None,
                    rng=jax.random.key_data(state_key))
