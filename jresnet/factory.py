"""Models and weights by name, as timm and torchvision name them.

    model = jresnet.create_model("resnet50", num_classes=10)        # a ResNet module
    model = jresnet.create_model("resnet50.tv2_in1k", pretrained=True)  # bound to its weights
    model = jresnet.create_model("resnet50", pretrained=True, num_classes=10)  # a new head
    backbone = jresnet.create_model("resnet50", features_only=True, out_indices=(2, 3, 4))
    jresnet.list_models("resnet5*")                     # ['resnet50', 'resnet50d']
    jresnet.list_models("resnet50", pretrained=True)    # ['resnet50.a1_in1k', 'resnet50.tv2_in1k',
                                                        #  'resnet50.tv_in1k']

A bare architecture name with `pretrained=True` takes that architecture's registered weights with
the highest published top-1 (for resnet50: `resnet50.a1_in1k`, timm's default too).
"""

import difflib
import fnmatch
from collections.abc import Iterable

import jax

from jresnet.models import ResNet, zoo
from jresnet.weights import REGISTRY
from jresnet.weights import pretrained as load_pretrained


def _architecture(name: str) -> str:
  arch = name.split(".", 1)[0]
  if arch not in zoo.MODELS:
    close = difflib.get_close_matches(arch, zoo.MODELS, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise KeyError(f"no model named {name!r}{hint}; jresnet.list_models() lists them all")
  return arch


def default_weights(arch: str) -> str:
  """The registry name of `arch`'s weights with the highest published top-1."""
  entries = [w for w in REGISTRY.values() if w.name.split(".", 1)[0] == arch]
  if not entries:
    raise KeyError(f"no pretrained weights for {arch!r}; jresnet.list_models(pretrained=True) "
                   "lists those there are")
  return max(entries, key=lambda w: w.top1).name


def create_model(name: str, *, pretrained: bool = False, in_chans: int | None = None,
                 cache: str | None = None, progress: bool = True, key: jax.Array | int = 0,
                 **overrides) -> ResNet:
  """The model called `name` (`resnet50`, or a registry name such as `resnet50.tv2_in1k`), as
  timm's `create_model`: always a `jresnet.ResNet`, with `pretrained=True` bound to its weights.

  `overrides` are ResNet fields, timm's keywords among them: `num_classes` (0 or None: no head),
  `features_only` and `out_indices` (the backbone: a list of feature maps), `drop_rate`,
  `drop_path_rate`, `output_stride`; and `in_chans` is `input_channels`. Without `pretrained`,
  the module, as linen modules are: no variables (`jresnet.init_variables(model, key)`). With
  `pretrained=True`, the module bound to the named weights, or for a bare name the best
  registered ones, downloaded once into the cache: `model(x)` evaluates, and `model, variables =
  model.unbind()` gives them apart for `apply`, `jax.jit` and training. A `num_classes` other than
  the file's gives a new head, initialised from `key` (logged); another `in_chans` adapts the
  first convolution as timm does. `jresnet.pretrained(name)` returns the model, the variables
  and the publisher's eval transform.
  """
  arch = _architecture(name)
  if "." in name and name not in REGISTRY:
    tags = sorted(n for n in REGISTRY if n.split(".", 1)[0] == arch)
    raise KeyError(f"no weights named {name!r}; {arch} has {', '.join(tags) or 'none'}")
  if in_chans is not None:
    if "input_channels" in overrides:
      raise ValueError("give in_chans (timm's name) or input_channels, not both")
    overrides["input_channels"] = in_chans
  if not pretrained:
    return zoo.MODELS[arch](**overrides)
  net = load_pretrained(name if "." in name else default_weights(arch), cache=cache,
                        progress=progress, key=key, **overrides)
  return net.model.bind(net.variables)


def list_models(pattern: str | Iterable[str] | None = None, pretrained: bool = False) -> list[str]:
  """Architecture names (`pretrained=False`) or registered weights (`pretrained=True`,
  `arch.tag`), sorted, that match the fnmatch `pattern` (or any of several); a weights name also
  matches through its architecture (`list_models("resnet50", pretrained=True)`)."""
  names = sorted(REGISTRY if pretrained else zoo.MODELS)
  if pattern is None:
    return names
  patterns = [pattern] if isinstance(pattern, str) else list(pattern)
  return [n for n in names
          if any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.split(".", 1)[0], p)
                 for p in patterns)]
