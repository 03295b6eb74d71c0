"""Train and eval steps for the NNX ResNets, in the two forms that flax documents.

Under `nnx.jit`, the model and its `nnx.Optimizer` are updated in place:

    model = jresnet.nnx.CifarResNet20(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    model.train()                     # BatchNorm on batch statistics, which it updates
    metrics = train_step(model, optimizer, {"image": images, "label": labels})

Under `jax.jit`, the same step runs on the state of `nnx.split` and returns the new state, so no
NNX object is traversed at each call: the form flax recommends where that Python overhead counts
(small models, fast accelerators):

    graphdef, state = nnx.split((model, optimizer))   # after model.train(): the mode is static
    state, metrics = pure_train_step(graphdef, state, batch)
    nnx.update((model, optimizer), state)             # when the objects are needed again

Only jax, flax and optax are imported.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def loss_fn(model: nnx.Module, batch: dict) -> tuple[jax.Array, jax.Array]:
  """Mean softmax cross-entropy of the model's logits against integer labels, and the logits."""
  logits = model(batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  return loss, logits


def _metrics(loss: jax.Array, logits: jax.Array, labels: jax.Array) -> dict:
  return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def step(model: nnx.Module, optimizer: nnx.Optimizer, batch: dict) -> dict:
  """One optimiser update on `batch` ({'image', 'label'}), in place; the step both forms run."""
  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
  optimizer.update(model, grads)
  return _metrics(loss, logits, batch["label"])


train_step = nnx.jit(step)
train_step.__doc__ = "`step` under `nnx.jit`: updates `model` and `optimizer` in place."


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def pure_train_step(graphdef: nnx.GraphDef, state: nnx.State, batch: dict):
  """`step` on `nnx.split((model, optimizer))`'s state (donated); returns the new state."""
  model, optimizer = nnx.merge(graphdef, state)
  metrics = step(model, optimizer, batch)
  return nnx.state((model, optimizer)), metrics


@nnx.jit
def eval_step(model: nnx.Module, batch: dict) -> dict:
  """Loss and accuracy on `batch`, in the model's current mode (call `model.eval()` first)."""
  loss, logits = loss_fn(model, batch)
  return _metrics(loss, logits, batch["label"])
