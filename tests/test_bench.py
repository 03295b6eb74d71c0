"""The benchmarks run end to end in their smoke modes, print their tables and write JSON lines.

The GPU session script runs in processes that cannot import TensorFlow, as on the GPU machines.
"""

import gzip
import json
import os
import subprocess
import sys
import tarfile

import pytest
from conftest import deadline

import jresnet
from bench import compile_time, profile, replicas, throughput
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
  both = replicas.measure(2, 2, batch=8, depth=8, repeats=1)
  assert (both["replicas"], both["steps_per_call"]) == (2, 2)
  assert both["per_replica"] == pytest.approx(both["images_per_s"] / 2, rel=1e-3)
  assert both["images_per_s"] > 0


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
  every process it starts): the throughput table with a trace, the loop against its step, then
  CIFAR through train.py on an array file."""
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
                        "--arrays", str(tmp_path / "tiny.npz"), "--replicas", "2",
                        "--parts", "throughput,loop,cifar20", "--workdirs", str(workdirs)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=deadline(300))
  assert run.returncode == 0, run.stderr[-2000:]
  log = lambda part: (workdirs / "logs" / f"{part}.log").read_text()[-2000:]
  table, loop, cifar = read_jsonl(out / "results.jsonl")
  assert table["returncode"] == 0, log("throughput")
  assert loop["returncode"] == 0, log("loop")
  assert cifar["returncode"] == 0, log("cifar20")
  assert cifar["steps"] == 4 and cifar["val_count"] == 20 and cifar["paper_test_error"] == 8.75
  assert len(cifar["val_accuracies"]) == 2  # a replica each
  assert "train on the devices; test on the devices" in log("cifar20")
  # What comes back from the device: at most 8 files, none in a folder.
  assert sorted(path.name for path in out.iterdir()) == [
      "cifar10_resnet20.msgpack", "records.tar.gz", "results.jsonl", "throughput.jsonl"]
  with tarfile.open(out / "records.tar.gz") as tar:
    assert {"logs/throughput.log", "logs/loop.log", "logs/cifar20.log",
            "cifar10_resnet20/metrics.jsonl", "cifar10_resnet20/curves.png",
            "loop_resnet20/metrics.jsonl", "traces/ResNet-20_CIFAR_train_bf16.trace.json.gz",
            } <= set(tar.getnames())
  rows = read_jsonl(out / "throughput.jsonl")
  _check_throughput_rows(rows[:3], [
      ("jresnet", "bf16"), ("pytorch", "bf16 autocast channels_last"),
      ("pytorch", "bf16 autocast channels_last torch.compile")])
  assert rows[0]["top_ops"]["note"].startswith("no device in the trace")  # (a CPU)
  assert (rows[3]["framework"], rows[3]["batch"]) == ("jresnet", 8)  # alone, a larger batch
  [rate] = rows[4:]
  assert rate["bench"] == "loop_rate" and rate["steps"] == 6 and rate["batch"] == 8
  assert rate["loop_vs_step"] == round(rate["loop"] / rate["step"], 3) > 0
  assert loop["loop_vs_step"] == {"resnet20": rate["loop_vs_step"]}
  assert run.stdout.rstrip().splitlines()[-1].startswith("cifar20")  # the table, last


def test_top_ops_ranks_the_device_ops_of_a_chrome_trace(tmp_path):
  """Per-step times, fractions and calls of the 'XLA Ops' line of a device; host lines and the
  device's other lines are not counted."""
  meta = lambda kind, pid, tid, name: {"ph": "M", "name": kind, "pid": pid, "tid": tid,
                                       "args": {"name": name}}
  op = lambda tid, name, dur, pid=1: {"ph": "X", "pid": pid, "tid": tid, "ts": 0, "dur": dur,
                                      "name": name}
  events = [meta("process_name", 1, None, "/device:GPU:0"), meta("process_name", 2, None,
                                                                 "/host:CPU"),
            meta("thread_name", 1, 10, "XLA Ops"), meta("thread_name", 1, 11, "XLA Modules"),
            meta("thread_name", 1, 12, "Stream #7(Compute)"), meta("thread_name", 2, 20, "python"),
            op(10, "fusion.3", 3000), op(10, "fusion.3", 3000), op(10, "convolution.1", 2000),
            op(10, "copy.2", 1000), op(11, "jit_train_step", 9000), op(12, "kernel", 9000),
            op(20, "fusion.3", 99000, pid=2)]
  path = tmp_path / "x.trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  top = profile.top_ops(str(path), steps=2, count=2)
  assert top == {"source": "XLA Ops", "device_ms_per_step": 4.5, "ops": [
      {"name": "fusion.3", "ms_per_step": 3.0, "fraction": 0.6667, "calls_per_step": 1.0},
      {"name": "convolution.1", "ms_per_step": 1.0, "fraction": 0.2222, "calls_per_step": 0.5}]}
  events = [e for e in events if e.get("tid") != 10]  # no 'XLA Ops' line: the streams' kernels
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  assert profile.top_ops(str(path), steps=3)["ops"] == [
      {"name": "kernel", "ms_per_step": 3.0, "fraction": 1.0, "calls_per_step": 0.33}]
