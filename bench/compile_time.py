"""Train-step compile time against depth, unrolled and with `scan_blocks=True`, and
the compiled step's speed in each layout.

    python -m bench.compile_time [--models resnet20,resnet56] [--batch 8] [--with-unrolled-1001]
    python -m bench.compile_time --memory     # + peak RSS of ResNet-1001 at batch 128, +/- remat
    python -m bench.compile_time --persistent-cache /tmp/xla   # twice: cold, then cache hits

Compile time is `lower` + `compile` of the project's jitted train step (`bench.project_step`);
images/s is that step's throughput at the same batch (`bench.timing`, `--repeats` 0 skips it).
The unrolled ResNet-1001 is left out unless asked for: it takes minutes and gigabytes to compile.
`--memory` runs one ResNet-1001 (scanned) train step per setting of `remat`, each in a fresh
subprocess so that ru_maxrss is that step's alone; a step whose planned XLA buffers exceed the
available memory is reported as skipped rather than run into the OOM killer.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import jax

import jresnet
from bench import project_step, report, timing
from jresnet.training import huge_pages

MODELS = {  # name -> (constructor, image size)
    "resnet20": (jresnet.CifarResNet20, 32), "resnet56": (jresnet.CifarResNet56, 32),
    "resnet110": (jresnet.CifarResNet110, 32), "preact164": (jresnet.CifarPreActResNet164, 32),
    "preact1001": (jresnet.CifarPreActResNet1001, 32), "resnet50": (jresnet.ResNet50, 224),
    "resnet101": (jresnet.ResNet101, 224), "resnet152": (jresnet.ResNet152, 224),
}
COLUMNS = ["model", "params", "layout", "batch", "compile_s", "images_per_s"]
MEMORY_COLUMNS = ["model", "remat", "batch", "planned_gib", "peak_rss_gib", "step_s", "note"]


def compile_row(name: str, scan: bool, batch: int, repeats: int) -> dict:
  make, image_size = MODELS[name]
  params = jresnet.summary(make(), (1, image_size, image_size, 3)).total_params
  compile_s, step, sync = project_step.train(make(scan_blocks=scan), batch, image_size)
  speed = timing.throughput(step, sync, batch, repeats) if repeats else {}
  return {"model": name, "params": params, "layout": "scan" if scan else "unrolled",
          "batch": batch, "image_size": image_size, "compile_s": round(compile_s, 2), **speed}


def memory_child(remat: bool, batch: int) -> dict:
  """One ResNet-1001 train step in this (fresh) process: planned bytes, peak RSS, step time."""
  model = jresnet.CifarPreActResNet1001(scan_blocks=True, remat=remat)
  runner = project_step.build(model, batch, 32)
  state, data = project_step.initial_state(runner, 32), project_step.batch(runner, batch, 32)
  executable, compile_s = project_step.compiled(runner.train_step, state, data)
  m = executable.memory_analysis()
  planned = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
  with open("/proc/meminfo") as f:
    available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
  row = {"model": "preact1001 (scan)", "remat": remat, "batch": batch,
         "compile_s": round(compile_s, 2), "planned_gib": round(planned / 2**30, 2),
         "available_gib": round(available / 2**30, 2)}
  if planned > 0.8 * available:
    return {**row, "note": "not run: planned buffers > 80% of available memory"}
  print(json.dumps({**row, "note": "step did not finish"}), flush=True)  # kept if killed
  start = time.perf_counter()
  jax.block_until_ready(executable(state, data))
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
  return {**row, "step_s": round(time.perf_counter() - start, 2),
          "peak_rss_gib": round(rss / 2**30, 2), "note": "measured"}


def memory_rows(batch: int) -> list[dict]:
  rows = []
  for remat in (False, True):
    out = subprocess.run([sys.executable, "-m", "bench.compile_time", "--memory-child",
                          "--remat" if remat else "--no-remat", "--memory-batch", str(batch)],
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    row = json.loads(lines[-1]) if lines else {"model": "preact1001 (scan)", "remat": remat,
                                               "batch": batch}
    if out.returncode:
      row["note"] = f"{row.get('note', '')}; exit {out.returncode}: {out.stderr.strip()[-200:]}"
    rows.append(row)
  return rows


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the step")
  parser.add_argument("--with-unrolled-1001", action="store_true")
  parser.add_argument("--memory", action="store_true")
  parser.add_argument("--memory-batch", type=int, default=128)
  parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--remat", action=argparse.BooleanOptionalAction, default=False,
                      help=argparse.SUPPRESS)
  parser.add_argument("--persistent-cache", metavar="DIR",
                      help="JAX's compilation cache directory: a second run measures loading")
  parser.add_argument("--out", default="bench/results.jsonl", help="JSON lines appended here")
  args = parser.parse_args(argv)
  if args.persistent_cache:
    jax.config.update("jax_compilation_cache_dir", args.persistent_cache)
  if args.memory_child:
    print(json.dumps(memory_child(args.remat, args.memory_batch)))
    return []

  machine = report.machine()
  print(f"# {machine['cpu_model']}, {machine['cores']} cores; jax {machine['jax']}", flush=True)
  rows = []
  for name in args.models.split(","):
    for scan in (False, True):
      if name == "preact1001" and not scan and not args.with_unrolled_1001:
        continue
      row = {**compile_row(name, scan, args.batch, args.repeats), **report.conditions(),
             "persistent_cache": args.persistent_cache}
      print(report.table([row], COLUMNS).splitlines()[-1], flush=True)
      rows.append(row)
  print("\n" + report.table(rows, COLUMNS))
  if args.memory:
    memory = memory_rows(args.memory_batch)
    print("\n" + report.table(memory, MEMORY_COLUMNS))
    rows += [{**row, "kind": "memory"} for row in memory]
  report.append_jsonl(args.out, [{**row, "bench": "compile_time", "machine": machine}
                                 for row in rows])
  return rows


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  main()
