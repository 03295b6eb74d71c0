"""What a lent GPU session measures, prepared here and run there in one command per call.

On the development machine (network, TensorFlow), once:

    python -m bench.gpu_run --prepare --carry runs/gpu_carry \
        --data ../shared/datasets/cifar10_jpeg

writes `runs/gpu_carry/`: the ml_collections wheel (the GPU machines lack it) and the CIFAR-10
45,000/5,000 split as a JPEG-encoded array file (`train.py --mode=write_arrays`, ~45 MiB), to
travel with the working tree (`carry=["runs/gpu_carry"]`). On the GPU machine, two calls, the
second's deadline being what the session's device time has left, less a minute:

    python -m bench.gpu_run --carry runs/gpu_carry --out $OUT --parts throughput,loop \
        --deadline-s 420
    python -m bench.gpu_run --carry runs/gpu_carry --out $OUT --parts cifar20,cifar56,cifar110 \
        --deadline-s 420

Parts, in the order given, each started only if its estimate fits before `--deadline-s`:
  throughput                  `bench.throughput --device gpu`: train.py's ResNet-50 bf16 train
                              step at batch 256 beside torchvision's under torch.compile and
                              eager, a trace of jresnet's step with its ops ranked by time; then
                              jresnet alone at batch 400 (MLPerf's)
  loop                        `bench.loop_rate`: train.py itself against its step alone, ResNet-50
                              at batch 256 on synthetic images and ResNet-20 at batch 128 on the
                              array file, both held on the devices
  cifar20, cifar56, cifar110  train.py with configs/cifar10_resnet{20,56,110}.py (He et al.'s
                              recipe: 64k iterations at batch 128) on the array file, on the device
                              path, `--replicas` seeds in one program; the workdir stays on the
                              device's disk (--workdirs), its export comes back as
                              <out>/cifar10_resnet<depth>.msgpack (the best replica)
What comes back fits the device tool's limits (at most 8 files, 2 folders down): results.jsonl
(one line per part: command, wall time, accuracy of each replica, images/s, the paper's
figure), throughput.jsonl (the throughput and loop rows), one export per depth, and
records.tar.gz (every part's log, each workdir's metrics.jsonl, config.json and curves.png, and
the traces). `--smoke` runs every part at tiny sizes, on any device (the CI test).
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

from bench import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARRAYS = "cifar10_45k5k.npz"
# depth -> (He et al. 2015's CIFAR-10 test error in %, minutes estimated on an H200, compile
# included: ~140k images/s for ResNet-20, per-step cost ~ depth)
CIFAR = {20: (8.75, 2.0), 56: (6.97, 4.0), 110: (6.43, 7.5)}
MINUTES = {"throughput": 3.0, "loop": 2.5}  # estimated on an H200, compilation included
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
  size = sum(os.path.getsize(path) for path in glob.glob(os.path.join(carry, "**"),
                                                           recursive=True)
             if os.path.isfile(path))
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


def run_part(name: str, commands: list[list[str]], logs: str, env: dict) -> tuple[int, float]:
  """Runs each of `commands` (a failure does not stop the next) into <logs>/<name>.log; (the
  first non-zero return code or 0, seconds)."""
  os.makedirs(logs, exist_ok=True)
  start, codes = time.perf_counter(), []
  with open(os.path.join(logs, f"{name}.log"), "w") as log:
    for command in commands:
      print(f"$ {' '.join(command)}", file=log, flush=True)
      codes.append(subprocess.run(command, cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT).returncode)
  return next((code for code in codes if code), 0), round(time.perf_counter() - start, 1)


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f]


def cifar(depth: int, args, env: dict) -> dict:
  workdir = os.path.join(args.workdirs, f"cifar10_resnet{depth}")
  command = [sys.executable, "train.py", "--config", f"configs/cifar10_resnet{depth}.py",
             "--workdir", workdir, "--config.data.source=arrays",
             f"--config.data.path={args.arrays or os.path.join(args.carry, ARRAYS)}",
             "--config.compilation_cache_dir=", f"--config.replicas={args.replicas}"]
  command += SMOKE_OVERRIDES if args.smoke else []
  rc, wall = run_part(f"cifar{depth}", [command], args.logs, env)
  row = {"part": f"cifar{depth}", "command": " ".join(command[1:]), "returncode": rc,
         "wall_s": wall, "paper_test_error": CIFAR[depth][0], "replicas": args.replicas,
         "smoke": args.smoke}
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  if rows:
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
  """Every part's log, each workdir's records and the traces into <out>/records.tar.gz (one file
  back)."""
  with tarfile.open(os.path.join(args.out, "records.tar.gz"), "w:gz") as tar:
    tar.add(args.logs, arcname="logs")
    for workdir in sorted(glob.glob(os.path.join(args.workdirs, "*"))):
      for name in ("metrics.jsonl", "config.json", "curves.png"):
        if os.path.exists(os.path.join(workdir, name)):
          tar.add(os.path.join(workdir, name),
                  arcname=os.path.join(os.path.basename(workdir), name))
    for trace in glob.glob(os.path.join(args.workdirs, "traces", "*", "**", "*.trace.json.gz"),
                           recursive=True):
      variant = os.path.relpath(trace, os.path.join(args.workdirs, "traces")).split(os.sep)[0]
      tar.add(trace, arcname=os.path.join("traces", f"{variant}.trace.json.gz"))


def throughput(args, env: dict) -> dict:
  """ResNet-50's train step at batch 256 beside torchvision's, traced; then at batch 400."""
  out = os.path.join(args.out, "throughput.jsonl")
  command = [sys.executable, "-m", "bench.throughput", "--device", "gpu", "--modes", "train",
             "--repeats", "3", "--out", out]
  command += ["--quick", "--models", "resnet20"] if args.smoke else ["--models", "resnet50"]
  commands = [command + ["--profile", os.path.join(args.workdirs, "traces")],
              command + ["--frameworks", "jresnet", "--batch", "8" if args.smoke else "400"]]
  rc, wall = run_part("throughput", commands, args.logs, env)
  rows = [r for r in read_jsonl(out) if r.get("bench") == "throughput" and "images_per_s" in r]
  return {"part": "throughput", "commands": [" ".join(c[1:]) for c in commands],
          "returncode": rc, "wall_s": wall, "smoke": args.smoke,
          "images_per_s": {f"{r['framework']} {r['variant']} batch {r['batch']}":
                           r["images_per_s"] for r in rows}}


def loop(args, env: dict) -> dict:
  """train.py against its step: ResNet-50 on synthetic images, ResNet-20 on the array file."""
  out = os.path.join(args.out, "throughput.jsonl")
  command = [sys.executable, "-m", "bench.loop_rate", "--out", out, "--workdirs", args.workdirs]
  arrays = ["--arrays", args.arrays or os.path.join(args.carry, ARRAYS)]
  if args.smoke:
    commands = [command + ["--workloads", "resnet20", "--batch", "8", "--steps", "6",
                           "--log-every", "2", "--repeats", "1", *arrays, *SMOKE_OVERRIDES[:2],
                           SMOKE_OVERRIDES[-1]]]
  else:
    commands = [command + ["--workloads", "resnet50", "--steps", "300", "--log-every", "50"],
                command + ["--workloads", "resnet20", "--steps", "2000", "--log-every", "200",
                           *arrays]]
  rc, wall = run_part("loop", commands, args.logs, env)
  rows = [r for r in read_jsonl(out) if r.get("bench") == "loop_rate"]
  return {"part": "loop", "commands": [" ".join(c[1:]) for c in commands], "returncode": rc,
          "wall_s": wall, "smoke": args.smoke,
          "loop_vs_step": {r["workload"]: r["loop_vs_step"] for r in rows}}


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--carry", default="runs/gpu_carry")
  parser.add_argument("--prepare", action="store_true", help="write --carry and stop")
  parser.add_argument("--data", help="--prepare: the CIFAR-10 image folder")
  parser.add_argument("--out", help="results, logs and exports go here ($OUT on the device)")
  parser.add_argument("--parts", default="throughput,loop,cifar20,cifar56,cifar110")
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
  parts = [part.strip() for part in args.parts.split(",") if part.strip()]
  known = ["throughput", "loop"] + [f"cifar{d}" for d in CIFAR]
  if not parts or set(parts) - set(known):
    parser.error(f"--parts takes {', '.join(known)}; got {args.parts!r}")
  os.makedirs(args.out, exist_ok=True)
  args.workdirs = args.workdirs or tempfile.mkdtemp(prefix="gpu_run_")
  args.logs = os.path.join(args.workdirs, "logs")
  env = environment(args.carry)
  start, rows = time.perf_counter(), []
  for part in parts:
    minutes = MINUTES[part] if part in MINUTES else CIFAR[int(part[5:])][1]
    elapsed = time.perf_counter() - start
    if not args.smoke and elapsed + 60 * minutes > args.deadline_s:
      row = {"part": part, "skipped": f"estimated {minutes} min, {elapsed:.0f} s already used "
             f"of --deadline-s {args.deadline_s:.0f}"}
    else:
      row = (throughput(args, env) if part == "throughput" else loop(args, env)
             if part == "loop" else cifar(int(part[5:]), args, env))
    rows.append(row)
    print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "results.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
    pack(args)  # after every part: what a cut-short session has done still comes back
  summary = [{"part": row["part"], "rc": row.get("returncode"), "wall_s": row.get("wall_s"),
              "result": outcome(row)} for row in rows]
  print(report.table(summary, ["part", "rc", "wall_s", "result"]))
  return rows


def outcome(row: dict) -> str:
  """A part's result in a few words, for the table printed last."""
  if "skipped" in row:
    return f"skipped: {row['skipped']}"
  if row["part"] == "throughput":
    return "; ".join(f"{name} {rate:.0f} img/s" for name, rate in row["images_per_s"].items())
  if row["part"] == "loop":
    return "loop/step " + ", ".join(f"{name} {ratio}" for name, ratio in
                                    row["loop_vs_step"].items())
  if "val_accuracies" not in row:
    return "no evaluation"
  accuracies = [100 * a for a in row["val_accuracies"] if a is not None]
  spread = f" ± {statistics.stdev(accuracies):.2f}" if len(accuracies) > 1 else ""
  return (f"val {statistics.mean(accuracies):.2f}%{spread} ({len(accuracies)} seeds; paper "
          f"{100 - row['paper_test_error']:.2f}% test); {row['images_per_s_median']} img/s")


if __name__ == "__main__":
  main()
