"""jresnet as a drop-in for flax's examples/imagenet: BatchNorm's mode follows the mutability of
`batch_stats`, the example's padding, names and parameter layout, and its way of calling models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jresnet

# --- BatchNorm trains exactly when its statistics are mutable ----------------------------------

SMALL = jresnet.ResNet(stage_sizes=(1, 1), num_classes=10)


@pytest.fixture(scope="module")
def small_variables():
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  return SMALL.init(jax.random.key(0), images), images


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_mutable_batch_stats_train_exactly_as_train_true(small_variables):
  variables, images = small_variables
  logits, updates = SMALL.apply(variables, images, mutable=["batch_stats"])
  want_logits, want_updates = SMALL.apply(variables, images, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(logits, want_logits)
  _assert_trees_equal(updates, want_updates)
  moved = jax.tree.map(lambda new, old: bool(jnp.any(new != old)),
                       updates["batch_stats"], variables["batch_stats"])
  assert all(jax.tree.leaves(moved)), "every BatchNorm's statistics should have moved"


def test_immutable_call_evaluates_and_explicit_train_wins(small_variables):
  variables, images = small_variables
  evaluated = SMALL.apply(variables, images, train=False)
  np.testing.assert_array_equal(SMALL.apply(variables, images), evaluated)
  logits, updates = SMALL.apply(variables, images, train=False, mutable=["batch_stats"])
  np.testing.assert_array_equal(logits, evaluated)
  _assert_trees_equal(updates["batch_stats"], variables["batch_stats"])
  with pytest.raises(Exception, match="batch_stats"):  # train=True needs them mutable, as before
    SMALL.apply(variables, images, train=True)


def test_init_is_unchanged_by_the_mutability_default(small_variables):
  variables, images = small_variables
  _assert_trees_equal(variables, SMALL.init(jax.random.key(0), images, train=False))
  _assert_trees_equal(variables, jresnet.init_variables(SMALL, jax.random.key(0), (1, 32, 32, 3)))
