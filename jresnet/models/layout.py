"""Convert variables between the unrolled and the scanned (`scan_blocks=True`) layouts.

Unrolled, a stage holds `block0, block1, ..., block{n-1}`; scanned, it holds `block0` (which may
change shape) and `blocks`, the identical blocks 1..n-1 stacked along a new leading axis.
Both functions walk any variables tree (params, batch_stats, optimiser moments), returning a new
one.
"""

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp

_BLOCK = re.compile(r"block(\d+)$")


def _is_unrolled_stage(tree: Mapping) -> bool:
  return "block1" in tree and all(_BLOCK.match(k) for k in tree)


def to_scanned(tree):
  """Stacks `block1..block{n-1}` of every stage into `blocks`."""
  if not isinstance(tree, Mapping):
    return tree
  if _is_unrolled_stage(tree):
    rest = [tree[f"block{i}"] for i in range(1, len(tree))]
    return {"block0": tree["block0"], "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *rest)}
  return {k: to_scanned(v) for k, v in tree.items()}


def to_unrolled(tree):
  """Splits every stage's stacked `blocks` back into `block1..block{n-1}`."""
  if not isinstance(tree, Mapping):
    return tree
  if "blocks" in tree and "block0" in tree:
    stacked = tree["blocks"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    out = {"block0": tree["block0"]}
    out.update({f"block{i + 1}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(n)})
    return out
  return {k: to_unrolled(v) for k, v in tree.items()}
