"""What a lent GPU session measures, prepared here and run there in one command per call.

On the development machine (network, TensorFlow), once:

    python -m bench.gpu_run --prepare --carry runs/gpu_carry \
        --data ../shared/datasets/cifar10_jpeg

writes `runs/gpu_carry/`: the ml_collections wheel (the GPU machines lack it) and the CIFAR-10
45,000/5,000 split as a JPEG-encoded array file (`train.py --mode=write_arrays`, ~45 MiB), to
travel with the working tree (`carry=["runs/gpu_carry"]`). On the GPU machine:

    python -m bench.gpu_run --carry runs/gpu_carry --out $OUT --parts cifar20,cifar56
    python -m bench.gpu_run --carry runs/gpu_carry --out $OUT --parts throughput

Parts, in the order given, each started only if its estimate fits before `--deadline-s`:
  cifar20, cifar56, cifar110  train.py with configs/cifar10_resnet{20,56,110}.py (He et al.'s
                              recipe: 64k iterations at batch 128) on the array file, on the device
                              path, `--replicas` seeds in one program; the workdir stays on the
                              device's disk (--workdirs), its export comes back as
                              <out>/cifar10_resnet<depth>.msgpack (the best replica)
  throughput                  `bench.throughput --device gpu`: train.py's ResNet-50 bf16 step at
                              batch 256 beside torchvision's under torch.compile and eager
What comes back fits the device tool's limits (at most 8 files, 2 folders down): results.jsonl
(one line per part: command, wall time, accuracy of each replica, images/s, the paper's
figure), throughput.jsonl, one export per depth, and records.tar.gz (every part's log, and each
workdir's metrics.jsonl, config.json and curves.png). `--smoke` runs every part at tiny sizes,
on any device (the CI test).
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARRAYS = "cifar10_45k5k.npz"
# depth -> (He et al. 2015's CIFAR-10 test error in %, minutes estimated on an H200, compile
# included: ~140k images/s for ResNet-20, per-step cost ~ depth)
CIFAR = {20: (8.75, 2.0), 56: (6.97, 4.0), 110: (6.43, 7.5)}
THROUGHPUT_MINUTES = 5.0
SMOKE_OVERRIDES = ["--config.data.train_split=train", "--config.data.eval_split=test",
                   "--config.num_train_steps=4", "--config.eval_every_steps=2",
                   "--config.log_every_steps=1", "--config.batch_size=8", "--config.model.depth=8"]


def prepare(carry: str, data: str) -> None:
  """The wheel and the array file, into `carry` (run where there is network and TensorFlow)."""
  os.makedirs(os.path.join(carry, "wheels"), exist_ok=True)
  subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                  os.path.join(carry, "wheels"), "ml_collections"], check=True)
  workdir = os.path.join(carry, "arrays")
  subprocess.run([sys.executable, "train.py", "--mode=write_arrays", "--arrays_encoding=jpeg",
                  "--config", "configs/cifar10_resnet20_budget.py", f"--config.data.path={data}",
                  "--workdir", workdir], check=True, cwd=REPO)
  os.replace(os.path.join(workdir, "arrays.npz"), os.path.join(carry, ARRAYS))
  shutil.rmtree(workdir)
  size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(carry, "**"), recursive=True)
             if os.path.isfile(p))
  print(f"{carry}: {size / 2**20:.1f} MiB to carry")


def environment(carry: str) -> dict:
  """The environment of the parts: ml_collections from the carried wheel where it is missing."""
  env = {**os.environ, "JRESNET_HUGE_PAGES": "0"}
  try:
    import ml_collections  # noqa: F401, PLC0415
  except ImportError:
    site = os.path.join(carry, "site")
    wheels = glob.glob(os.path.join(carry, "wheels", "ml_collections-*.whl"))
    if not wheels:
      raise SystemExit(f"ml_collections is not installed and {carry}/wheels has no wheel: run "
                       "--prepare on a machine with network") from None
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--target", site, *wheels], check=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
  return env


def run_part(name: str, command: list[str], logs: str, env: dict) -> tuple[int, float]:
  os.makedirs(logs, exist_ok=True)
  start = time.perf_counter()
  with open(os.path.join(logs, f"{name}.log"), "w") as log:
    print(f"$ {' '.join(command)}", file=log, flush=True)
    rc = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
  return rc, round(time.perf_counter() - start, 1)


def cifar(depth: int, args, env: dict) -> dict:
  workdir = os.path.join(args.workdirs, f"cifar10_resnet{depth}")
  command = [sys.executable, "train.py", "--config", f"configs/cifar10_resnet{depth}.py",
             "--workdir", workdir, "--config.data.source=arrays",
             f"--config.data.path={args.arrays or os.path.join(args.carry, ARRAYS)}",
             "--config.compilation_cache_dir=", f"--config.replicas={args.replicas}"]
  command += SMOKE_OVERRIDES if args.smoke else []
  rc, wall = run_part(f"cifar{depth}", command, args.logs, env)
  row = {"part": f"cifar{depth}", "command": " ".join(command[1:]), "returncode": rc,
         "wall_s": wall, "paper_test_error": CIFAR[depth][0], "replicas": args.replicas,
         "smoke": args.smoke}
  metrics = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(metrics):
    with open(metrics) as f:
      rows = [json.loads(line) for line in f]
    train = [r["images_per_sec"] for r in rows if r["split"] == "train"][1:]  # first: compile
    evals = [r for r in rows if r["split"] == "eval"]
    row.update(steps=max(r["step"] for r in rows),
               images_per_s_median=round(statistics.median(train), 1) if train else None)
    if evals:
      final = evals[-1]
      accuracies = [final[f"accuracy_r{i}"] for i in range(args.replicas)] if (
          args.replicas > 1) else [final["accuracy"]]
      row.update(val_accuracy=final["accuracy"], val_accuracies=accuracies,
                 val_error=round(100 * (1 - final["accuracy"]), 2), val_count=final["count"])
  export = os.path.join(workdir, "model.msgpack")
  if os.path.exists(export):
    shutil.copy(export, os.path.join(args.out, f"cifar10_resnet{depth}.msgpack"))
  return row


def pack(args) -> None:
  """Every part's log and each workdir's records into <out>/records.tar.gz (one file back)."""
  with tarfile.open(os.path.join(args.out, "records.tar.gz"), "w:gz") as tar:
    tar.add(args.logs, arcname="logs")
    for workdir in sorted(glob.glob(os.path.join(args.workdirs, "*"))):
      for name in ("metrics.jsonl", "config.json", "curves.png"):
        if os.path.exists(os.path.join(workdir, name)):
          tar.add(os.path.join(workdir, name),
                  arcname=os.path.join(os.path.basename(workdir), name))


def throughput(args, env: dict) -> dict:
  out = os.path.join(args.out, "throughput.jsonl")
  command = [sys.executable, "-m", "bench.throughput", "--device", "gpu", "--out", out]
  command += ["--quick", "--models", "resnet20"] if args.smoke else []
  rc, wall = run_part("throughput", command, args.logs, env)
  return {"part": "throughput", "command": " ".join(command[1:]), "returncode": rc,
          "wall_s": wall, "rows": out, "smoke": args.smoke}


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--carry", default="runs/gpu_carry")
  parser.add_argument("--prepare", action="store_true", help="write --carry and stop")
  parser.add_argument("--data", help="--prepare: the CIFAR-10 image folder")
  parser.add_argument("--out", help="results, logs and exports go here ($OUT on the device)")
  parser.add_argument("--parts", default="cifar20,cifar56,cifar110,throughput")
  parser.add_argument("--deadline-s", type=float, default=540.0,
                      help="start no part whose estimate ends after this many seconds")
  parser.add_argument("--arrays", help="the array file (default: <carry>/" + ARRAYS + ")")
  parser.add_argument("--replicas", type=int, default=1,
                      help="seeds per CIFAR depth, trained side by side in one program")
  parser.add_argument("--workdirs", help="where the CIFAR workdirs go (default: a new temporary "
                      "directory); only their exports and records come back in --out")
  parser.add_argument("--smoke", action="store_true", help="every part at tiny sizes, any device")
  args = parser.parse_args(argv)
  if args.prepare:
    if not args.data:
      parser.error("--prepare needs --data, the CIFAR-10 image folder")
    prepare(args.carry, args.data)
    return []
  if not args.out:
    parser.error("--out is required")
  parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  known = [f"cifar{d}" for d in CIFAR] + ["throughput"]
  if not parts or set(parts) - set(known):
    parser.error(f"--parts takes {', '.join(known)}; got {args.parts!r}")
  os.makedirs(args.out, exist_ok=True)
  args.workdirs = args.workdirs or tempfile.mkdtemp(prefix="gpu_run_")
  args.logs = os.path.join(args.workdirs, "logs")
  env = environment(args.carry)
  start, rows = time.perf_counter(), []
  for part in parts:
    minutes = THROUGHPUT_MINUTES if part == "throughput" else CIFAR[int(part[5:])][1]
    elapsed = time.perf_counter() - start
    if not args.smoke and elapsed + 60 * minutes > args.deadline_s:
      row = {"part": part, "skipped": f"estimated {minutes} min, {elapsed:.0f} s already used "
             f"of --deadline-s {args.deadline_s:.0f}"}
    else:
      row = throughput(args, env) if part == "throughput" else cifar(int(part[5:]), args, env)
    rows.append(row)
    print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "results.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
    pack(args)  # after every part: what a cut-short session has done still comes back
  return rows


if __name__ == "__main__":
  main()
