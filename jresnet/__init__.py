"""jresnet: deep residual networks in JAX/Flax, exact to torchvision.

`import jresnet` loads the models, `summary`, `interop`, `weights`, `export` and `create_model` /
`list_models` only; the Flax NNX models (`jresnet.nnx`), the input pipelines (`jresnet.data`) and
the training side are imported on demand.
"""

import importlib

from jresnet import export, interop, weights
from jresnet.factory import create_model, list_models
from jresnet.models import *  # noqa: F401,F403
from jresnet.models import ResNet, init_variables, reset_classifier, to_scanned, to_unrolled
from jresnet.summary import Summary, summary
from jresnet.weights import pretrained

__version__ = "0.1.0"


def __getattr__(name: str):
  if name == "nnx":  # `jresnet.nnx` without `import jresnet.nnx`, and without flax.nnx until used
    return importlib.import_module("jresnet.nnx")
  raise AttributeError(f"module 'jresnet' has no attribute {name!r}")
