"""`init_from`: start training from another run's checkpoint, a weights file (torchvision/timm
layout, `.pth` or `.safetensors`) or a `jresnet.weights` registry name (downloaded once).

The classifier head (`fc`) is kept from the fresh initialisation when its shape differs (a new
class count); any other difference is an error that names the tensors. The optimiser starts fresh.
Another run is only read (it may be training): its newest checkpoint is checked against the
digests recorded at saving, and refused by name if it does not read back.
"""

import logging
import os

import jax
import numpy as np
from flax import traverse_util

from jresnet import interop, weights
from jresnet.models import ResNet, to_scanned, to_unrolled
from jresnet.training.checkpoint import Checkpoints, CorruptCheckpointError
from jresnet.training.state import TrainState

HEAD = "fc"


WEIGHT_FILES = (".pth", ".pt", ".bin", ".safetensors")


class InitFromError(ValueError):
  """init_from's weights do not fit the model; the message names the tensors."""


class InitFromNotFoundError(FileNotFoundError):
  """init_from names no run, weights file or registered name; the message says what it takes."""


def check_source(path: str) -> None:
  """Raises, saying what is missing and what to do, unless `path` (init_from) is there to load:
  a registered name's file is downloaded into the cache now (WeightsUnavailableError if it cannot
  be), a weights file or a run's workdir must exist."""
  if path in weights.REGISTRY:
    weights.REGISTRY[path].download(progress=False)
  elif path.endswith(WEIGHT_FILES) and not os.path.isfile(path):
    raise InitFromNotFoundError(f"init_from={path}: no such weights file")
  elif not path.endswith(WEIGHT_FILES) and not os.path.isdir(path):
    raise InitFromNotFoundError(_not_a_directory(path))


def _not_a_directory(path: str) -> str:
  return (f"init_from={path}: no such directory; give a run's workdir, a weights file "
          f"({', '.join(WEIGHT_FILES)}) or a jresnet.weights name")


def _load_weights(path: str, model: ResNet) -> dict:
  """A weights file or registry entry as `model`'s variables, unrolled and without the head."""
  state_dict = (weights.read_registered(weights.REGISTRY[path]) if path in weights.REGISTRY
                else weights.read_state_dict(path))
  headless = {k: v for k, v in state_dict.items() if not k.startswith(HEAD + ".")}
  return interop.from_torch(headless, model.clone(num_classes=None, scan_blocks=False))


def _load_checkpoint(path: str) -> dict:
  """The newest checkpoint of a run's workdir (or of a checkpoints directory), read-only."""
  if not os.path.isdir(path):
    raise InitFromNotFoundError(_not_a_directory(path))
  directory = os.path.join(path, "checkpoints") if os.path.isdir(
      os.path.join(path, "checkpoints")) else path
  checkpoints = Checkpoints(directory, read_only=True)
  try:
    step = checkpoints.latest_step()
    if step is None:
      raise InitFromNotFoundError(f"init_from={path}: no checkpoint there (nor in {directory})")
    raw = checkpoints.saved_state(step)
  except CorruptCheckpointError as e:
    raise CorruptCheckpointError(
        f"init_from: {e}. Resume that run once (it sets a damaged checkpoint aside and "
        "falls back to the one before), or give init_from another run") from e
  finally:
    checkpoints.close()
  return to_unrolled({"params": raw["params"], "batch_stats": raw["batch_stats"]})


def _merge(loaded: dict, fresh: dict, source: str) -> tuple[dict, list[str]]:
  """Loaded values where they fit; the fresh head where the class count differs (its paths
  returned too)."""
  flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
  merged, problems, kept_fresh = {}, [], []
  for path, value in traverse_util.flatten_dict(fresh, sep="/").items():
    old = flat_loaded.get(path)
    if old is not None and np.shape(old) == value.shape:
      merged[path] = np.asarray(old, value.dtype)
    elif path.startswith(HEAD + "/") or path.startswith("params/" + HEAD + "/"):
      merged[path] = value
      kept_fresh.append(path)
    else:
      problems.append(f"{path}: model {value.shape}, {source} "
                      f"{'missing' if old is None else np.shape(old)}")
  if problems:
    raise InitFromError(f"init_from={source} does not fit the model:\n  " + "\n  ".join(problems))
  return traverse_util.unflatten_dict(merged, sep="/"), kept_fresh


def _describe(path: str, from_weights: bool) -> str:
  if path in weights.REGISTRY:
    return f"{path} (jresnet.weights, {weights.REGISTRY[path].download(progress=False)})"
  return f"{'weights file' if from_weights else 'run'} {path}"


def initialise_from(path: str, model: ResNet, state: TrainState, tx) -> tuple[TrainState, str]:
  """`state` with parameters and BatchNorm statistics from `path`, fresh optimiser state; and a
  line saying what was loaded and what is fresh."""
  from_weights = path in weights.REGISTRY or path.endswith(WEIGHT_FILES)
  loaded = _load_weights(path, model) if from_weights else _load_checkpoint(path)
  fresh = to_unrolled({"params": state.params, "batch_stats": state.batch_stats})
  merged, kept_fresh = _merge(loaded, jax.device_get(fresh), path)
  if model.scan_blocks:
    merged = to_scanned(merged)
  logging.info("initialised from %s", path)
  params = merged["params"]
  fresh_note = (f"freshly initialised: {', '.join(kept_fresh)} (a new head for "
                f"{model.num_classes} classes)" if kept_fresh else "nothing freshly initialised")
  note = f"weights loaded from {_describe(path, from_weights)}; {fresh_note}"
  return state.replace(params=params, batch_stats=merged["batch_stats"], opt_state=tx.init(params),
                       ema_params=params if state.ema_params is not None else None), note
