"""Pretrained weights without PyTorch: `jresnet.pretrained(name)` -> model, variables, transform.

    net = jresnet.pretrained("resnet50.tv2_in1k")   # downloads once into ~/.cache/jresnet
    logits = net.model.apply(net.variables, net.transform(image)[None])

`.safetensors` files load with numpy alone; torch's `.pth` files need the `torch` extra.
`save_safetensors` converts once, on a machine that has torch, for every machine that has not.
"""

import dataclasses
import logging
import os
from collections.abc import Mapping

import jax
import numpy as np

from jresnet import interop
from jresnet.models import ResNet, reset_classifier
from jresnet.weights import download
from jresnet.weights.download import (
                                      ChecksumError,
                                      CorruptWeightsError,
                                      UnreadableWeightsError,
                                      WeightsUnavailableError,
                                      cache_dir,
                                      fetch,
                                      sha256_of,
)
from jresnet.weights.registry import IMAGENET_CLASSES, REGISTRY, EvalTransform, Weights, get

__all__ = ["IMAGENET_CLASSES", "REGISTRY", "ChecksumError", "CorruptWeightsError",
           "EvalTransform", "Pretrained", "UnreadableWeightsError", "Weights",
           "WeightsUnavailableError", "adapt_input_conv", "cache_dir", "fetch", "get",
           "pretrained", "read_registered", "read_state_dict", "save_safetensors", "sha256_of"]


HEAD = "fc"


@dataclasses.dataclass(frozen=True)
class Pretrained:
  model: ResNet
  variables: dict
  transform: EvalTransform
  weights: Weights | None   # the registry entry, None for a local file
  fresh: tuple[str, ...] = ()  # variables initialised here, not loaded (a new head)

  @property
  def class_names(self) -> tuple[str, ...] | None:
    """The ImageNet-1k class names of a registry entry's own classifier; None for a new head,
    no head, or a local file (whose classes jresnet cannot know)."""
    if self.weights is None or self.fresh or self.model.num_classes != len(IMAGENET_CLASSES):
      return None
    return IMAGENET_CLASSES


def read_state_dict(path: str) -> dict:
  """A torchvision/timm-layout state dict from `.safetensors` (numpy only) or `.pth`/`.pt`/`.bin`
  (torch's pickle format, needs torch; the weights of a training checkpoint that nests them, with
  DistributedDataParallel's `module.` prefix dropped). UnreadableWeightsError, naming the file,
  if the reader cannot read it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no weights file at {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # noqa: PLC0415 (imported on use)
    return _read(path, load_file)
  try:
    import torch  # noqa: PLC0415 (optional dependency)
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch: pip install 'jresnet[torch]'") from e
  state_dict = _read(path, lambda f: torch.load(f, map_location="cpu", weights_only=True))
  if not isinstance(state_dict, Mapping):
    raise UnreadableWeightsError(f"{path} does not load (it holds a {type(state_dict).__name__}, "
                                 "not a state dict)")
  for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights
    if isinstance(state_dict.get(wrapper), Mapping):
      state_dict = state_dict[wrapper]
  return {k.removeprefix("module."): v for k, v in state_dict.items()}  # DistributedDataParallel


def _read(path: str, reader) -> dict:
  """`reader(path)`, with whatever it raises for a damaged or foreign file as one line that names
  the file."""
  try:
    return reader(path)
  except Exception as e:  # noqa: BLE001 (safetensors and torch raise many kinds)
    detail = f"{type(e).__name__}: {str(e).strip()}".splitlines()[0][:300]
    raise UnreadableWeightsError(f"{path} does not load ({detail}): it is truncated, damaged "
                                 "or not a weights file") from e


def read_registered(entry: Weights, cache: str | None = None, progress: bool = True) -> dict:
  """The state dict of a registry entry, downloaded into the cache once. A cached file that does
  not load is moved aside (the next call downloads it again) and the error names it. For an entry
  without a sha256 on record, the first file that loads and fits the entry's architecture has its
  digest recorded (and checked from then on); one that does not fit is moved aside too."""
  path = entry.download(cache, progress)
  again = "the next call downloads it again"
  try:
    state_dict = read_state_dict(path)
  except UnreadableWeightsError as e:
    raise CorruptWeightsError(f"{e}; moved to {download.set_aside(path)}, {again}") from e
  if entry.sha256 is None and download.recorded_sha256(path) is None:
    model = entry.model()
    try:
      interop.from_torch(state_dict, model)
    except ValueError as e:
      differences = str(e).splitlines()[1:]
      raise CorruptWeightsError(
          f"{path} does not fit {entry.name}'s architecture ({len(differences)} tensor(s) differ, "
          f"first: {differences[0].strip()}); moved to {download.set_aside(path)}, {again}") from e
    download.record_sha256(path)
  return state_dict


def save_safetensors(path: str, variables: dict, model: ResNet) -> None:
  """Writes `variables` in torchvision/timm layout as `.safetensors` (what `read_state_dict`
  and `pretrained(path, model=...)` read, and timm/torchvision load with `load_file`)."""
  from safetensors.numpy import save_file  # noqa: PLC0415 (imported on use)
  state_dict = {k: np.ascontiguousarray(v) for k, v in interop.to_torch(variables, model).items()
                if not k.endswith("num_batches_tracked")}  # save_file writes raw memory
  save_file(state_dict, path)


def _head_size(state_dict: dict) -> int | None:
  weight = state_dict.get(f"{HEAD}.weight")
  return None if weight is None else int(np.shape(weight)[0])


def adapt_input_conv(weight, in_chans: int) -> np.ndarray:
  """A first convolution's (O, 3, kH, kW) kernel for `in_chans` input channels, by timm's rule
  (`timm.models.adapt_input_conv`): one channel sums the three; more repeat them cyclically,
  scaled by 3 / in_chans to keep the response's scale."""
  weight = np.asarray(weight)
  if weight.shape[1] != 3:
    raise ValueError(f"only a 3-channel first convolution adapts to {in_chans} channels; this "
                     f"one has {weight.shape[1]}")
  as_float = weight.astype(np.float32)
  if in_chans == 1:
    adapted = as_float.sum(axis=1, keepdims=True)
  else:
    adapted = np.tile(as_float, (1, -(-in_chans // 3), 1, 1))[:, :in_chans] * (3 / in_chans)
  return adapted.astype(weight.dtype)


def _fit_to(state_dict: dict, model: ResNet, name: str) -> dict:
  """The state dict without what `model` leaves out (no head, `features_only`'s later stages),
  its first convolution adapted to the model's `input_channels` where they differ."""
  left_out = model.left_out_modules()
  state_dict = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in left_out}
  first_conv = "conv1.0.weight" if "conv1.0.weight" in state_dict else "conv1.weight"
  weight = state_dict.get(first_conv)
  if weight is not None and np.shape(weight)[1] != model.input_channels:
    state_dict[first_conv] = adapt_input_conv(weight, model.input_channels)
    logging.getLogger("jresnet").info("%s: %s adapted from %d to %d input channels (timm's rule)",
                                      name, first_conv, np.shape(weight)[1], model.input_channels)
  return state_dict


def pretrained(name_or_path: str, model: ResNet | None = None, *, cache: str | None = None,
               progress: bool = True, transform: EvalTransform | None = None,
               key: jax.Array | int = 0, **model_overrides) -> Pretrained:
  """A registry entry (downloaded into the cache once) or a local weights file.

  For a registry name the architecture comes from the entry (`model_overrides` such as
  `dtype=jnp.bfloat16`, `output_stride=16`, `frozen_bn=True` or `features_only=True` apply to
  it); a local file needs `model`. The state dict must fit the model exactly (see
  `interop.from_torch`), except where the model differs as timm allows: with another
  `num_classes` everything else loads and the head `fc` is initialised from `key` (logged, and
  listed in `fresh`); `num_classes=0` (or None) drops it, as `features_only` does with the
  stages after the last selected map; another `input_channels` adapts the first convolution as
  timm's `adapt_input_conv` does (summed for 1 channel, else repeated and scaled by 3 / n).
  """
  if name_or_path in REGISTRY:
    entry = REGISTRY[name_or_path]
    model = model or entry.model(**model_overrides)
    state_dict = read_registered(entry, cache, progress)
    transform = transform or entry.transform
  elif os.path.exists(name_or_path) or os.sep in name_or_path:
    if model is None:
      raise ValueError(f"loading the local file {name_or_path} needs model=..., e.g. "
                       "jresnet.ResNet50()")
    entry, state_dict = None, read_state_dict(name_or_path)
    model = model.clone(**model_overrides) if model_overrides else model
    transform = transform or EvalTransform()
  else:
    get(name_or_path)  # raises KeyError listing the known names
  file_classes = _head_size(state_dict)
  state_dict = _fit_to(state_dict, model, name_or_path)
  if not model.num_classes or file_classes is None or file_classes == model.num_classes:
    return Pretrained(model, interop.from_torch(state_dict, model), transform, entry)
  headless = {k: v for k, v in state_dict.items() if not k.startswith(HEAD + ".")}
  backbone = model.clone(num_classes=0)
  _, variables = reset_classifier(backbone, interop.from_torch(headless, backbone),
                                  model.num_classes, key)
  fresh = tuple(f"params/{HEAD}/{name}" for name in variables["params"][HEAD])
  logging.getLogger("jresnet").warning(
      "%s: loaded all but the classifier; %s freshly initialised for %d classes (the file's "
      "head has %d)", name_or_path, ", ".join(fresh), model.num_classes, file_classes)
  return Pretrained(model, variables, transform, entry, fresh)
