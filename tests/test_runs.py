"""What a run says and leaves: one line per event (resumed, finished, already finished, stopped,
weights loaded), the evaluation schedule, images/s without compilation, config.json as the run
used it, eval mode from config.json, the eval split of a folder without 'test', short dataset
errors, and the README's commands as written."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import deadline
from tiny_config import build, tiny_config

from jresnet import data
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import evaluate, loop, run_config
from jresnet.training.records import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _eval_steps(every: int, total: int) -> list[int]:
  return [s for s in range(1, total + 1) if loop.is_eval_step(s, every, total)]


def test_eval_schedule_is_regular_and_never_one_step_apart():
  assert _eval_steps(22, 45) == [22, 45]  # not 22, 44, 45
  assert _eval_steps(3, 6) == [3, 6]
  assert _eval_steps(10, 35) == [10, 20, 30, 35]
  for total in range(1, 60):
    for every in range(1, 25):
      steps = _eval_steps(every, total)
      assert steps[-1] == total and all(b - a >= every / 2 for a, b in zip(steps, steps[1:]))


def test_each_event_is_one_line_and_config_json_is_what_the_run_used(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  config = tiny_config(stop_after_steps=2)
  loop.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "stopped after 2 steps, at step 2 of 6 (stop_after_steps)" in out

  metrics = loop.train_and_evaluate(tiny_config(), workdir)
  out = capsys.readouterr().out
  assert f"resumed from {workdir}/checkpoints/2 at step 2 of 6" in out
  assert re.search(r"finished: step 6 of 6; eval .*accuracy \d\.\d{4}.*; exported to", out)
  rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
  rates = {r["step"]: r["images_per_sec"] for r in rows}
  assert rates[1] is None and rates[3] is None  # the compiling first step of each invocation
  assert all(rates[s] > 0 for s in (2, 4, 5, 6))
  assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if r["split"] == "eval"] == [3, 6]

  again = loop.train_and_evaluate(tiny_config(), workdir)  # a finished workdir
  captured = capsys.readouterr()
  assert again == metrics
  assert f"already finished: {workdir} holds the final checkpoint (step 6); eval " in captured.out
  assert "6/6" not in captured.err  # no progress bar

  used = json.load(open(os.path.join(workdir, "config.json")))
  assert used["precision"] == "float32" and used["num_classes"] == 10
  assert used["data"]["num_examples"] == 64 and "name" not in used["data"]  # synthetic's fields
  assert used["data"]["preprocess"] == "none" and used["data"]["image_size"] == 8

  # Eval mode starts from config.json: a model override differing from it is named.
  base = tiny_config(**{"model.stage_sizes": (1, 2)})
  assert run_config.for_eval(base, workdir, {})["model"]["stage_sizes"] == (1, 1)
  base.data.threads = None  # the evaluating machine's own default, not the training machine's
  assert used["data"]["threads"] == 1
  assert run_config.for_eval(base, workdir, {}).data.threads is None
  overridden = run_config.for_eval(base, workdir, {"model.stage_sizes": (1, 2)})
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match=r"trained with --config\.model\.stage_sizes=\[1, 1\] \(this command: "
                           r"\(1, 2\)\): drop or change") as error:
    evaluate.evaluate_checkpoint(overridden, workdir)
  assert "fresh --workdir" not in str(error.value)


def _image_folder(root, splits):
  from PIL import Image  # noqa: PLC0415

  rng = np.random.default_rng(0)
  for split in splits:
    for label in ("cat", "dog"):
      os.makedirs(os.path.join(root, split, label))
      for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).save(
            os.path.join(root, split, label, f"{i}.png"))


def test_a_missing_eval_split_is_named_with_the_flag_in_seconds(tmp_path):
  _image_folder(str(tmp_path), ("train", "holdout"))
  config = tiny_config(**{"data.source": "folder", "data.path": str(tmp_path),
                          "data.cache_dir": None})
  start = time.time()
  with pytest.raises(ValueError, match=r"data.eval_split='test' is not a split of this dataset, "
                                       r"whose splits are .*'holdout'.*--config.data.eval_split="):
    data.open(config.data)
  assert time.time() - start < 10


def test_unknown_tfds_name_fails_in_one_short_message(tmp_path):
  with pytest.raises(ValueError) as error:
    build(tiny_config(**{"data.source": "tfds", "data.name": "eco_missing",
                             "data.data_dir": str(tmp_path)}))
  message = str(error.value)
  assert "'eco_missing' is not a TFDS dataset" in message and len(message.splitlines()) == 1
  assert error.value.__cause__ is None and error.value.__suppress_context__  # no 1,000-line cause


def test_a_tfds_dataset_built_elsewhere_needs_no_builder_code(mock_metadata, tmp_path):
  """docs/data.md's custom-dataset recipe: a dataset prepared by `tfds build` (here: cifar10's
  metadata under another name, whose builder code is nowhere) is read from data_dir."""
  import shutil  # noqa: PLC0415

  data_dir = str(tmp_path / "tfds")
  shutil.copytree(os.path.join(mock_metadata, "cifar10"), os.path.join(data_dir, "my_images"))
  for root, _, files in os.walk(data_dir):
    if "dataset_info.json" in files:
      path = os.path.join(root, "dataset_info.json")
      info = json.load(open(path))
      json.dump({**info, "name": "my_images"}, open(path, "w"))
  config = tiny_config(**{"data.source": "tfds", "data.name": "my_images",
                          "data.data_dir": data_dir, "data.preprocess": "auto"})
  info = data.open(config.data).info
  assert info.num_classes == 10 and info.split_sizes == {"train": 24, "test": 24}


def _readme_commands() -> dict[str, list[str]]:
  """The train.py commands of the README's quick start and of docs/weights.md's fine-tuning and
  evaluation, as argv."""
  text = "".join(open(os.path.join(REPO, path)).read() for path in ("README.md", "docs/weights.md"))
  commands = {}
  for name in ("quick start", "fine-tune", "evaluate"):
    block = re.search(rf"<!-- {name} -->\s*```bash\n(.*?)```", text, re.S).group(1)
    commands[name] = block.replace("\\\n", " ").split()[2:]  # after `python train.py`
  return commands


def test_readme_commands_run_as_written(tmp_path):
  """The documented commands, each with its placeholders filled in and tiny-size overrides
  appended, through train.py's own flag parsing and main, in one subprocess."""
  import jresnet  # noqa: PLC0415

  commands = _readme_commands()
  _image_folder(str(tmp_path / "pets"), ("train", "val"))
  tiny_model = jresnet.ResNet(depth=18, widths=(8, 8, 8, 8))
  jresnet.weights.save_safetensors(str(tmp_path / "w.safetensors"),
                                   jresnet.init_variables(tiny_model, 0), tiny_model)
  tiny = ["--config.model.depth=18", "--config.model.widths=(8,8,8,8)",
          "--config.data.image_size=16",
          "--config.batch_size=8", "--config.num_train_steps=2", "--config.data.cache_dir=",
          "--config.data.threads=1", "--config.async_checkpoints=False"]
  runs = [commands["quick start"] + ["--config.model.depth=8", "--config.data.image_size=8",
                                     "--config.batch_size=8", "--config.num_train_steps=2",
                                     "--config.async_checkpoints=False"],
          [a.replace("resnet50.tv2_in1k", str(tmp_path / "w.safetensors"))
           .replace("~/data/pets", str(tmp_path / "pets")) for a in commands["fine-tune"]] + tiny,
          commands["evaluate"]]
  driver = ("import sys, json\nfrom absl import flags\nimport train\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "  sys.argv = ['train.py', *argv]  # config_flags reads its overrides there\n"
            "  for name in [n for n in flags.FLAGS if n.startswith('config.')]:\n"
            "    delattr(flags.FLAGS, name)  # the previous command's override flags\n"
            "  flags.FLAGS.unparse_flags()\n  train.main(flags.FLAGS(sys.argv))\n")
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")  # the commands' relative paths
  env = dict(os.environ, JRESNET_HUGE_PAGES="0")
  out = subprocess.run([sys.executable, "-c", driver, json.dumps(runs)], cwd=str(tmp_path),
                       env={**env, "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")},
                       capture_output=True, text=True,
                       timeout=deadline(120))
  assert out.returncode == 0, out.stdout + out.stderr
  assert "no 'test' split: evaluating on 'val'" in out.stdout
  assert "weights loaded from weights file" in out.stdout and "params/fc/kernel" in out.stdout
  assert out.stdout.count("finished: step 2 of 2") == 2
  used = json.load(open(tmp_path / "runs" / "pets" / "config.json"))  # a folder run's own values
  assert used["num_classes"] == 2 and used["data"]["eval_split"] == "val"
  assert used["data"]["preprocess"] == "imagenet" and used["data"]["image_size"] == 16
  assert not {"name", "num_classes", "image_shape", "num_examples"} & set(used["data"])
  evaluated = json.load(open(tmp_path / "runs" / "pets" / "eval_val_2.json"))
  assert evaluated["count"] == 8 and evaluated["split"] == "val"
