"""What a newcomer meets first, through the real command: mistakes as one line `error: ...` (a
bug keeps its traceback), `--help`, `--mode=print_config`, eval mode from the workdir alone; and
records that say what happened: top-5 only above 5 classes, integer counts, the epoch on the bar,
class names in config.json, the whole learning-rate schedule in curves.png, the model line."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import matplotlib.figure
import numpy as np
import optax
import pytest
from conftest import deadline
from flax import traverse_util
from tiny_config import tiny_config

from jresnet.models import ResNet
from jresnet.training import records, run_config, step
from jresnet.training.model import describe_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "tiny_config.py")
CLASSES = ("apple", "bird", "cat", "dog")  # four: top-5 accuracy would always be 1


def train_py(*args, env=None, idle_seconds=10) -> subprocess.CompletedProcess:
  """`python train.py *args` as a user runs it, stdout and stderr together."""
  env = {**os.environ, "JRESNET_HUGE_PAGES": "0", **(env or {})}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO,
                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=deadline(idle_seconds))


def one_error_line(run: subprocess.CompletedProcess) -> str:
  """The run's single line `error: ...`, after checking it exited 1 and said nothing else."""
  lines = run.stdout.strip().splitlines()
  assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), run.stdout
  return lines[0]


def test_a_misspelled_config_key_is_one_line_with_the_suggestion(tmp_path):
  line = one_error_line(train_py("--config", TINY, "--workdir", str(tmp_path),
                                 "--config.optimzer.name=adamw"))
  assert line == ("error: --config.optimzer.name: the config has no field 'optimzer'. Did you "
                  'mean "optimizer" instead of "optimzer"? (--mode=print_config lists the fields)')


def test_unavailable_weights_are_one_line_with_url_path_and_digest(tmp_path):
  cache = tmp_path / "cache"  # empty; the download meets a closed port at once
  line = one_error_line(train_py(
      "--config", TINY, "--workdir", str(tmp_path / "run"), "--config.init_from=resnet18.tv_in1k",
      env={"JRESNET_CACHE": str(cache), "https_proxy": "http://127.0.0.1:9"}))
  assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in line
  assert f"place it at {cache}/resnet18-f37072fd.pth (sha256 f37072fd47e89c5e" in line


@pytest.mark.parametrize("args, expected", [
    (("--config.batch_size=-1",), "error: batch_size=-1 must be positive, in (0, inf)"),
    (("--config.precision=fp16",), "error: precision must be auto, float32 (fp32) or bfloat16"),
    (("--config.init_from=no_such_run",), "error: init_from=no_such_run: no such directory"),
    ((), "error: give --config, a config file (e.g. configs/digits.py)"),
])
def test_bad_values_are_one_line_naming_the_field(tmp_path, args, expected):
  config = ("--config", TINY) if args else ()
  line = one_error_line(train_py(*config, "--workdir", str(tmp_path / "run"), *args))
  assert line.startswith(expected)
  assert not (tmp_path / "run" / "config.json").exists()


def test_a_diverging_run_ends_in_one_error_line(tmp_path):
  """The non-finite guard's stop is an explained error: its last line says what and what to do,
  with no traceback."""
  run = train_py("--config", TINY, "--workdir", str(tmp_path / "run"),
                 "--config.optimizer.learning_rate=1e30", idle_seconds=20)
  assert run.returncode == 1 and "Traceback" not in run.stdout, run.stdout
  assert run.stdout.strip().splitlines()[-1].startswith("error: non-finite "), run.stdout


def test_an_unparsable_flag_value_is_absl_two_lines(tmp_path):
  run = train_py("--config", TINY, "--workdir", str(tmp_path), "--config.batch_size=abc")
  assert run.returncode == 1 and len(run.stdout.strip().splitlines()) <= 2, run.stdout
  assert "--config.batch_size=abc" in run.stdout and "Traceback" not in run.stdout


def test_a_bug_keeps_its_traceback(tmp_path):
  config = tmp_path / "broken.py"
  config.write_text("def get_config():\n  return {}['model']\n")
  run = train_py("--config", str(config), "--workdir", str(tmp_path))
  assert run.returncode == 1 and "Traceback" in run.stdout and "KeyError: 'model'" in run.stdout


def test_help_exits_0_with_the_offline_example():
  run = train_py("--help")
  assert run.returncode == 0, run.stdout
  assert "python train.py --config configs/digits.py --workdir runs/digits" in run.stdout
  assert "print_config" in run.stdout
  assert train_py("-h").stdout == run.stdout


def test_print_config_prints_every_key_with_unset_paths_as_none():
  run = train_py("--config", TINY, "--mode=print_config", "--config.init_from=None",
                 "--config.data.path=", "--config.compilation_cache_dir=None")
  assert run.returncode == 0, run.stdout
  printed = dict(line.split(" = ", 1) for line in run.stdout.strip().splitlines())
  assert printed.keys() == traverse_util.flatten_dict(tiny_config().to_dict(), sep=".").keys()
  assert printed["init_from"] == "None" and printed["data.path"] == "None"
  assert printed["compilation_cache_dir"] == "''" and printed["model.widths"] == "(8, 16)"


def test_precision_takes_the_short_names():
  assert run_config.resolve_precision("bf16") == "bfloat16"
  assert run_config.resolve_precision("fp32") == "float32"


# --- records of a finished run --------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A 6-step run through train.py on a 4-class image folder of 16 images a split, in batches of
  8 (3 epochs), evaluated at steps 3 and 6: its workdir and output."""
  from PIL import Image  # noqa: PLC0415

  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in CLASSES:
      os.makedirs(root / split / name)
      for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(
            root / split / name / f"{i}.png")
  workdir = tmp_path_factory.mktemp("run")
  run = train_py("--config", TINY, "--workdir", str(workdir), "--config.data.source=folder",
                 f"--config.data.path={root}", "--config.data.cache_dir=",
                 "--config.precision=fp32", "--config.batch_size=8", idle_seconds=30)
  assert run.returncode == 0, run.stdout
  return workdir, run.stdout


def test_top5_only_above_5_classes_and_counts_as_integers(finished):
  workdir, out = finished
  assert "top5" not in out and "count 16.0" not in out
  assert "eval loss" in out and ", count 16;" in out and out.endswith(" count=16\n")
  evals = [r for r in records.read_metrics(str(workdir / "metrics.jsonl")) if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [3, 6]
  assert all("top5_accuracy" not in r and r["count"] == 16 and isinstance(r["count"], int)
             for r in evals)


class _Logits(nn.Module):
  """The image is the logits."""

  @nn.compact
  def __call__(self, x, train):
    return x


def test_top5_is_measured_above_5_classes():
  logits = jnp.array([[6.0, 5, 4, 3, 2, 1], [6, 5, 4, 3, 2, 1], [6, 5, 4, 3, 2, 1]])
  batch = {"image": logits, "label": jnp.array([0, 4, 5]), "mask": jnp.array([True, True, False])}
  sums = step.eval_step({}, batch, _Logits(), num_classes=6)
  assert step.summarise_eval(sums) == pytest.approx(
      {"loss": float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits[:2],
                                                                             batch["label"][:2]))),
       "accuracy": 0.5, "top5_accuracy": 1.0, "count": 2})
  four = {**batch, "image": logits[:, :4], "label": jnp.array([0, 3, 3])}
  assert "top5_accuracy" not in step.summarise_eval(step.eval_step({}, four, _Logits(), 4))


def test_the_bar_shows_the_epoch_and_the_run_states_its_model(finished):
  _, out = finished
  assert "epoch 3.0/3: 100%" in out
  assert "model: basic blocks, stages (1, 1), widths (8, 16), stem cifar, 4 classes" in out


def test_config_json_holds_the_class_names(finished):
  workdir, _ = finished
  used = json.load(open(workdir / "config.json"))
  assert used["class_names"] == list(CLASSES) and used["precision"] == "float32"


def test_eval_mode_reads_the_config_from_the_workdir_alone(finished, tmp_path):
  workdir, _ = finished
  run = train_py("--mode=eval", "--workdir", str(workdir), idle_seconds=20)
  assert run.returncode == 0, run.stdout
  assert run.stdout.strip().splitlines()[-1].endswith("count=16 checkpoint=6")
  line = one_error_line(train_py("--mode=eval", "--workdir", str(tmp_path)))
  assert line.startswith(f"error: {tmp_path}/config.json does not exist: without --config")


def test_the_curves_draw_the_whole_learning_rate_schedule(tmp_path, monkeypatch):
  figures = []
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
  schedule = optax.linear_schedule(0.0, 0.4, transition_steps=4)  # warm-up, then constant
  writer = records.MetricWriter(str(tmp_path), total_steps=10, start_step=0, batch_size=8,
                                steps_per_epoch=5, schedule=schedule)
  writer.scalars(10, "train", {"loss": 1.0, "accuracy": 0.5, "learning_rate": schedule(9)})
  writer.close()
  drawn = figures[0].axes[2].lines[0]
  np.testing.assert_array_equal(drawn.get_xdata(), np.arange(1, 11))
  np.testing.assert_allclose(drawn.get_ydata(), [0, 0.1, 0.2, 0.3] + [0.4] * 6, rtol=1e-6)


def test_the_model_line_says_what_a_cifar_depth_builds():
  line = describe_model(ResNet(depth=50, family="cifar", num_classes=10))
  assert line == ("model: depth 50, family cifar: the CIFAR ResNet of depth 6n+2 (n=8), basic "
                  "blocks, stages (8, 8, 8), widths (16, 32, 64), stem cifar, 10 classes (not the "
                  "ImageNet ResNet-50: --config.model.family=imagenet builds that)")
  assert describe_model(ResNet(depth=50, num_classes=10)) == (
      "model: depth 50, family imagenet: bottleneck blocks, stages (3, 4, 6, 3), widths (64, 128, "
      "256, 512), stem imagenet, 10 classes")
