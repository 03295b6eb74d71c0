"""Inference export: a trained model's architecture, parameters, BatchNorm statistics, class
names and eval transform in one msgpack file, loadable with jresnet alone (no training code, no
TensorFlow, no optimiser state).

    exported = jresnet.export.load("runs/cifar10/model.msgpack")
    probabilities = exported.predict(images)       # uint8 (H, W, C) images, any sizes
    model, variables = exported                    # or: the module and its variables
    logits = model.apply(variables, exported.transform(image)[None], train=False)

Files are written to a temporary name and renamed, so a crash never leaves half an export. Each
file records the sha256 of every array and of its JSON fields; `load` checks them and refuses a
file whose bytes changed, by name. Files written before digests were recorded load with a warning.
"""

import dataclasses
import functools
import glob
import hashlib
import json
import logging
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jresnet.integrity import differing, digests, host_arrays
from jresnet.models import ResNet
from jresnet.weights.registry import EvalTransform

_NOT_SAVED = {"parent", "name", "conv_general_dilated"}  # tree position and code, not architecture
_JSON_FIELDS = ("model", "class_names", "transform")


class ExportError(ValueError):
  """The file is not a readable jresnet export."""


def model_kwargs(model: ResNet) -> dict:
  """The ResNet's constructor arguments as JSON values (dtypes by name)."""
  kwargs = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in _NOT_SAVED}
  for key in ("dtype", "param_dtype"):
    kwargs[key] = jnp.dtype(kwargs[key]).name
  return json.loads(json.dumps(kwargs))


@dataclasses.dataclass(frozen=True)
class Exported:
  """What `load` returns. Unpacks as `model, variables`. `digests`: the sha256 of each array of
  `variables` by path ('params/stem/conv1/kernel'), as recorded and checked; None for a file
  written before they were recorded."""

  model: ResNet
  variables: dict
  class_names: tuple[str, ...] | None = None
  transform: EvalTransform | None = None
  digests: dict[str, str] | None = None

  def __iter__(self):
    return iter((self.model, self.variables))

  def preprocess(self, images) -> np.ndarray:
    """uint8 (H, W, C) images (a batch array or a list of any sizes) -> the model's input batch,
    through the recorded eval transform (as they are, if the export has none)."""
    if self.transform is None:
      return np.stack([np.asarray(image, np.float32) for image in images])
    return np.stack([np.asarray(self.transform(image)) for image in images])

  def predict(self, images) -> np.ndarray:
    """Class probabilities, (N, num_classes), of uint8 (H, W, C) images."""
    logits = _logits(self.model, self.variables, self.preprocess(images))
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def top_k(self, images, k: int = 5) -> list[list[tuple[str, float]]]:
    """The `k` most probable (class name, probability) of each image, best first."""
    probabilities = self.predict(images)
    names = self.class_names or tuple(str(i) for i in range(probabilities.shape[-1]))
    best = np.argsort(-probabilities, axis=-1)[:, :k]
    return [[(names[i], float(p[i])) for i in row] for p, row in zip(probabilities, best)]


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: ResNet, variables, x) -> jax.Array:
  return model.apply(variables, x, train=False)


def _payload_digests(payload: dict) -> dict:
  """The sha256 of each JSON field of an export's payload, and of each of its arrays."""
  return {**{key: hashlib.sha256(payload[key].encode()).hexdigest() for key in _JSON_FIELDS},
          "variables": digests(host_arrays(payload["variables"]))}


def save(path: str, model: ResNet, variables: dict, *,
         class_names: Sequence[str] | None = None,
         transform: EvalTransform | dict | None = None) -> None:
  """Writes `model`'s architecture, `variables` ({'params', 'batch_stats'}), and optionally the
  class names and eval transform, to `path` (atomically: a temporary file, then a rename)."""
  if isinstance(transform, dict):
    transform = EvalTransform(**transform)
  payload = {"model": json.dumps(model_kwargs(model)),
             "variables": jax.tree.map(np.asarray, jax.device_get(dict(variables))),
             "class_names": json.dumps(list(class_names) if class_names is not None else None),
             "transform": json.dumps(dataclasses.asdict(transform) if transform else None)}
  payload["sha256"] = json.dumps(_payload_digests(payload))
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(serialization.msgpack_serialize(payload))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def remove_temporaries(path: str) -> list[str]:
  """Removes the temporary files that saves to `path` killed before their rename left behind;
  returns their paths. Only for the one process that writes `path` (train.py: the holder of the
  workdir's lock), since another's save in progress would lose its file."""
  leftovers = glob.glob(f"{glob.escape(path)}.tmp-*")
  for leftover in leftovers:
    os.remove(leftover)
  return leftovers


_REEXPORT = ("export the model again (train.py rewrites model.msgpack from the final checkpoint "
             "when run again on its workdir; or jresnet.export.save)")


def load(path: str) -> Exported:
  """The model, variables, class names and eval transform that `save` wrote, checked against
  the digests recorded in the file (ExportError, naming what differs, if they do not match).
  Files written before class names and transforms were recorded load with None for them; those
  written before digests were, with a warning."""
  try:
    with open(path, "rb") as f:
      payload = serialization.msgpack_restore(f.read())
    kwargs = json.loads(payload["model"])
    variables = payload["variables"]
    class_names = json.loads(payload.get("class_names", "null"))
    transform = json.loads(payload.get("transform", "null"))
    recorded = json.loads(payload["sha256"]) if "sha256" in payload else None
    actual = _payload_digests(payload) if recorded is not None else None
  except FileNotFoundError:
    raise
  except Exception as e:  # msgpack, JSON or layout: a truncated or foreign file
    raise ExportError(f"{path} is not a readable jresnet export ({type(e).__name__}: {e}); "
                      f"it may be truncated or damaged: {_REEXPORT}") from e
  if recorded is None:
    logging.getLogger("jresnet").warning(
        "%s records no sha256 (written by an older jresnet): loaded unchecked; %s to have it "
        "checked", path, _REEXPORT)
  else:
    changed = [key for key in _JSON_FIELDS if recorded.get(key) != actual[key]]
    changed += differing(recorded.get("variables") or {}, actual["variables"])
    changed += sorted(set(actual["variables"]) - set(recorded.get("variables") or {}))
    if changed:
      raise ExportError(f"{path} is damaged: {len(changed)} part(s) differ from the sha256 "
                        f"recorded at export ({', '.join(changed[:3])}"
                        f"{' ...' if len(changed) > 3 else ''}); {_REEXPORT}")
  kwargs = {key: tuple(value) if isinstance(value, list) else value  # (JSON has no tuples)
            for key, value in kwargs.items()}
  if transform is not None:
    transform = EvalTransform(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in transform.items()})
  return Exported(ResNet(**kwargs), variables,
                  tuple(class_names) if class_names is not None else None, transform,
                  actual["variables"] if actual else None)
