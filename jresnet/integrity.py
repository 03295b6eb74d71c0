"""The sha256 of each array of a tree, by path ('params/stem/conv1/kernel'): what checkpoints and
exports record when they are written and check when they are read, so that flipped bytes are
refused by name instead of loaded."""

import hashlib

import jax
import numpy as np


def host_arrays(tree) -> dict[str, np.ndarray]:
  """Every array of a tree on the host, by path ('params/stem/conv1/kernel')."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  values = jax.device_get([x for _, x in leaves])
  return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(x)
          for (path, _), x in zip(leaves, values)}


def digests(arrays: dict[str, np.ndarray]) -> dict[str, str]:
  """The sha256 of each array's bytes."""
  return {path: hashlib.sha256(np.ascontiguousarray(x).reshape(-1).view(np.uint8)).hexdigest()
          for path, x in arrays.items()}


def differing(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
  """Paths whose digest differs from the one recorded, or that are recorded and absent."""
  return [path for path, digest in expected.items() if actual.get(path) != digest]
