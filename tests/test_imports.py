"""The import boundaries: which parts of jresnet may load TensorFlow and ml_collections, and what
the models, the weights and the input pipelines may import of jresnet.

TensorFlow is a guest: only the tf.data modules of jresnet.data import it, so the models, the
configs and the training step run where it is not installed (GPU hosts without it, research
code). The step side needs only jax, flax, optax and orbax.
"""

import ast
import pathlib
import subprocess
import sys

from conftest import deadline

REPO = pathlib.Path(__file__).resolve().parent.parent
# The modules that run tf.data / TFDS; everything else must not import TensorFlow.
TENSORFLOW_MODULES = {
    "jresnet/data/host_stream.py", "jresnet/data/tf_runtime.py", "jresnet/data/transforms.py",
    "jresnet/data/resized_copy.py", "jresnet/data/sources/folder.py",
    "jresnet/data/sources/tfds_source.py",
}
ML_COLLECTIONS_MODULES = {"jresnet/training/loop.py", "jresnet/training/evaluate.py",
                          "jresnet/training/model.py", "jresnet/training/run_config.py",
                          "train.py"}
TENSORFLOW = ("tensorflow", "tensorflow_datasets", "clu")


def _imported(path: pathlib.Path) -> set[str]:
  """Top-level names of every module `path` imports, at any depth of its code."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module.split(".")[0])
  return names


def _sources():
  files = [*REPO.glob("jresnet/**/*.py"), REPO / "train.py"]
  return {str(path.relative_to(REPO)): _imported(path) for path in files}


def test_tensorflow_only_in_the_tf_data_modules():
  importers = {f for f, names in _sources().items() if names & set(TENSORFLOW)}
  assert importers == TENSORFLOW_MODULES


def test_ml_collections_only_in_the_config_side_of_training_and_train():
  importers = {f for f, names in _sources().items() if "ml_collections" in names}
  assert importers == ML_COLLECTIONS_MODULES


# What each model-side part of jresnet may import of jresnet: the models nothing above them; the
# input pipelines and the weights neither each other nor the training side.
LAYERS = {
    "jresnet/models/": ("jresnet.models",),
    "jresnet/interop.py": ("jresnet.models",),
    "jresnet/summary.py": ("jresnet.models",),
    "jresnet/weights/": ("jresnet.models", "jresnet.interop", "jresnet.weights",
                         "jresnet.imagenet_statistics"),
    "jresnet/data/": ("jresnet.data", "jresnet.imagenet_statistics"),
    "jresnet/imagenet_statistics.py": (),
}


def _jresnet_imports(path: pathlib.Path) -> set[str]:
  """The jresnet modules `path` imports, at any depth of its code ('from jresnet import data' is
  jresnet.data)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names if a.name.split(".")[0] == "jresnet"}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and (
        node.module.split(".")[0] == "jresnet"):
      names |= {f"{node.module}.{a.name}" for a in node.names}
  return names


def test_models_weights_and_data_import_only_their_layers():
  breaches = []
  for prefix, allowed in LAYERS.items():
    for path in sorted(REPO.glob(prefix + "**/*.py" if prefix.endswith("/") else prefix)):
      breaches += [f"{path.relative_to(REPO)} imports {name}" for name in _jresnet_imports(path)
                   if not any(name == a or name.startswith(a + ".") for a in allowed)]
  assert not breaches


def _run_blocked(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
  """`code` in a fresh interpreter in which importing any of `blocked` fails."""
  block = f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
  return subprocess.run([sys.executable, "-c", block + code], cwd=REPO, capture_output=True,
                        text=True, timeout=deadline(60))


def test_step_side_imports_with_only_jax_flax_optax_orbax():
  blocked = (*TENSORFLOW, "ml_collections", "torch", "sklearn", "matplotlib", "PIL")
  modules = ["state", "step", "optim", "parallel", "checkpoint"]
  out = _run_blocked(blocked, "".join(f"import jresnet.training.{m}; " for m in modules)
                     + "import jresnet, jresnet.data")
  assert out.returncode == 0, out.stderr


def test_the_device_input_path_imports_without_tensorflow():
  out = _run_blocked(TENSORFLOW, "import jresnet.data.dataset, jresnet.data.sources.arrays")
  assert out.returncode == 0, out.stderr


def test_every_config_loads_without_tensorflow():
  names = sorted(path.stem for path in (REPO / "configs").glob("*.py")
                 if path.stem != "__init__")
  code = ("import importlib; "
          f"[importlib.import_module('configs.' + n).get_config() for n in {names!r}]")
  out = _run_blocked(TENSORFLOW, code)
  assert out.returncode == 0, out.stderr


def test_the_block_catches_a_tensorflow_import():
  """The control: under the same block, a module that does import TensorFlow fails."""
  out = _run_blocked(TENSORFLOW, "import jresnet.data.host_stream")
  assert out.returncode != 0 and "import of tensorflow halted" in out.stderr
