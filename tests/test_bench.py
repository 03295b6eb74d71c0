"""The benchmarks run end to end in their smoke modes, print their tables and write JSON lines.

The GPU session script runs in processes that cannot import TensorFlow, as on the GPU machines.
"""

import json
import os
import subprocess
import sys
import tarfile

import pytest
from conftest import deadline

import jresnet
from bench import compile_time, replicas, throughput
from configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _check_throughput_rows(records, device_variants):
  """The bench's own arithmetic on what it measured: FLOP rates and the PyTorch ratios."""
  for r in records:
    if "images_per_s" not in r:
      assert r["note"].startswith("skipped: torch.compile")
      continue
    model = {"resnet20": jresnet.CifarResNet20, "resnet50": jresnet.ResNet50}[r["model"]]()
    macs = jresnet.summary(model, (1, r["image_size"], r["image_size"], 3)).total_macs
    assert r["flops_per_image"] == 2 * macs * (3 if r["mode"] == "train" else 1)
    assert r["gflops_per_s"] == round(r["images_per_s"] * r["flops_per_image"] / 1e9, 2)
  for r in records:
    if r["framework"] == "jresnet":
      best = max(t["images_per_s"] for t in records if t["framework"] == "pytorch"
                 and t["precision"] == r["precision"] and "images_per_s" in t)
      assert r["vs_torch"] == round(r["images_per_s"] / best, 3)
  assert [(r["framework"], r["variant"]) for r in records] == device_variants


def test_throughput_quick_on_the_cpu_table(tmp_path, capsys):
  out = tmp_path / "throughput.jsonl"
  throughput.main(["--quick", "--device", "cpu", "--models", "resnet20", "--out", str(out)])
  printed = capsys.readouterr().out
  assert "# cpu table" in printed and "ResNet-20 CIFAR train" in printed
  records = read_jsonl(out)
  _check_throughput_rows(records, [
      ("jresnet", "fp32"), ("jresnet", "bf16"), ("pytorch", "fp32 contiguous"),
      ("pytorch", "fp32 channels_last"), ("pytorch", "bf16 autocast contiguous"),
      ("pytorch", "bf16 autocast channels_last")])
  assert all(r["machine"]["cores"] >= 1 and r["device"] == "cpu" for r in records)


@pytest.mark.parametrize("args, message", [
    (["--models", "resnet20", "--modes", "eval"], "no eval workload for resnet20"),
    (["--modes", "train,infer"], "--modes takes train and/or eval"),
    (["--device", "gpu", "--models", "resnet18"], "unknown models ['resnet18'] on gpu"),
    (["--frameworks", "mxnet"], "--frameworks takes jresnet and/or pytorch")])
def test_throughput_rejects_empty_or_unknown_selections(args, message, capsys):
  with pytest.raises(SystemExit):
    throughput.main(["--quick", "--device", "cpu", *args])
  assert message in capsys.readouterr().err


def test_compile_time_one_model(tmp_path, capsys):
  out = tmp_path / "compile.jsonl"
  compile_time.main(["--models", "resnet20", "--repeats", "1", "--out", str(out)])
  printed = capsys.readouterr().out
  assert "unrolled" in printed and "scan" in printed
  records = read_jsonl(out)
  assert [r["layout"] for r in records] == ["unrolled", "scan"]
  assert all(r["params"] == 269_722 and r["compile_s"] > 0 and r["images_per_s"] > 0
             for r in records)


def test_replicas_and_steps_per_call_count_every_replicas_images():
  one = replicas.measure(1, 1, batch=8, depth=8, repeats=1)
  both = replicas.measure(2, 2, batch=8, depth=8, repeats=1)
  assert (both["replicas"], both["steps_per_call"]) == (2, 2)
  assert both["per_replica"] == pytest.approx(both["images_per_s"] / 2, rel=1e-3)
  assert one["images_per_s"] > 0 and both["images_per_s"] > 0


def test_input_pipeline_streams_imagenet_like_jpegs(tmp_path):
  pytest.importorskip("tensorflow")  # the tf.data pipelines; absent on the GPU machines' image
  from bench import input_pipeline  # noqa: PLC0415
  folder = tmp_path / "jpegs"
  input_pipeline.main(["make-jpegs", "--out", str(folder), "--classes", "2", "--per-class", "4"])
  assert len(list(folder.glob("train/class*/*.jpg"))) == 8
  with pytest.raises(SystemExit, match="8 files make too few batches of 128"):
    input_pipeline.main(["jpeg", "--folder", str(folder)])
  out = tmp_path / "input.jsonl"
  input_pipeline.main(["stream", "--results", str(out), "--folder", str(folder / "train"),
                       "--preset", "imagenet", "--batch", "4", "--steps", "2", "--windows", "2",
                       "--warmup", "1", "--no-consumer"])
  [record] = read_jsonl(out)
  assert record["bench"] == "input_pipeline stream" and record["preset"] == "imagenet"
  assert 0 < record["input_images_per_s_min"] <= record["input_images_per_s"]


def test_gpu_session_script_at_tiny_sizes_without_tensorflow(tmp_path):
  """bench.gpu_run as on the GPU machines, where TensorFlow is not installed (blocked here in
  every process it starts): CIFAR through train.py on an array file, then the GPU table."""
  from jresnet import data  # noqa: PLC0415

  cfg = default.data_config()
  cfg.update(source="synthetic", image_shape=(32, 32, 3), num_examples=20, train_split="train",
             eval_split="test")
  data.open(cfg).write_arrays(str(tmp_path / "tiny.npz"))
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "sitecustomize.py").write_text(
      "import sys\nsys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None\n")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), REPO])}
  out, workdirs = tmp_path / "out", tmp_path / "workdirs"
  run = subprocess.run([sys.executable, "-m", "bench.gpu_run", "--smoke", "--out", str(out),
                        "--arrays", str(tmp_path / "tiny.npz"), "--parts", "cifar20,throughput",
                        "--replicas", "2", "--workdirs", str(workdirs)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=deadline(150))
  assert run.returncode == 0, run.stderr[-2000:]
  log = lambda part: (workdirs / "logs" / f"{part}.log").read_text()[-2000:]
  cifar, table = read_jsonl(out / "results.jsonl")
  assert cifar["returncode"] == 0, log("cifar20")
  assert cifar["steps"] == 4 and cifar["val_count"] == 20 and cifar["paper_test_error"] == 8.75
  assert len(cifar["val_accuracies"]) == 2  # a replica each
  assert "train on the devices; test on the devices" in log("cifar20")
  assert table["returncode"] == 0, log("throughput")
  # What comes back from the device: at most 8 files, none in a folder.
  assert sorted(p.name for p in out.iterdir()) == [
      "cifar10_resnet20.msgpack", "records.tar.gz", "results.jsonl", "throughput.jsonl"]
  with tarfile.open(out / "records.tar.gz") as tar:
    assert {"logs/cifar20.log", "logs/throughput.log", "cifar10_resnet20/metrics.jsonl",
            "cifar10_resnet20/curves.png"} <= set(tar.getnames())
  _check_throughput_rows(read_jsonl(out / "throughput.jsonl"), [
      ("jresnet", "bf16"), ("pytorch", "bf16 autocast channels_last"),
      ("pytorch", "bf16 autocast channels_last torch.compile")])
