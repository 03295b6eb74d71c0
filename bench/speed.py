"""CPU throughput of jresnet's train and eval steps beside PyTorch's, in one run (issue #6).

    python -m bench.speed [--models resnet20,resnet50] [--repeats 5] [--out bench/results.jsonl]
    python -m bench.speed --models resnet50 --modes eval   # one mode of a model's workloads
    python -m bench.speed --quick        # tiny batches, one repeat: a smoke test

Workloads: ResNet-20 CIFAR train (32x32, batch 128), ResNet-50 train (224, batch 16) and eval
(224, batch 32); `--models resnet18` adds ResNet-18 train (224, batch 32). jresnet runs the
project's jitted train step (`bench.project_step`) in float32 and in bfloat16 (float32
parameters); PyTorch the same architecture (`bench.torch_models`) in float32 and under bf16
autocast, each contiguous (NCHW) and channels_last. images/s is the median of the timed repeats;
GFLOP/s counts 2 FLOPs per multiply-add of `jresnet.summary`, times 3 for a train step
(forward, and a backward of about twice its cost).
"""

import argparse
import dataclasses
import gc

import jax.numpy as jnp
import torch

import jresnet
from bench import project_step, report, timing, torch_models
from jresnet.training import huge_pages


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  model: str           # a key of torch_models (and of MODELS)
  image_size: int
  batch: int
  quick_batch: int
  mode: str            # 'train' | 'eval'


MODELS = {"resnet20": jresnet.CifarResNet20, "resnet50": jresnet.ResNet50,
          "resnet18": jresnet.ResNet18}
WORKLOADS = {
    "resnet20": [Workload("ResNet-20 CIFAR train", "resnet20", 32, 128, 8, "train")],
    "resnet50": [Workload("ResNet-50 train", "resnet50", 224, 16, 2, "train"),
                 Workload("ResNet-50 eval", "resnet50", 224, 32, 2, "eval")],
    "resnet18": [Workload("ResNet-18 train", "resnet18", 224, 32, 2, "train")],
}
COLUMNS = ["workload", "framework", "variant", "batch", "compile_s", "images_per_s",
           "gflops_per_s", "vs_torch_best"]


def flops_per_image(w: Workload) -> float:
  macs = jresnet.summary(MODELS[w.model](), (1, w.image_size, w.image_size, 3)).total_macs
  return 2 * macs * (3 if w.mode == "train" else 1)


def measure_jax(w: Workload, batch: int, bf16: bool, timing_args: dict) -> dict:
  model = MODELS[w.model](dtype=jnp.bfloat16 if bf16 else jnp.float32)
  build = project_step.train if w.mode == "train" else project_step.evaluate
  compile_s, step, sync = build(model, batch, w.image_size)
  result = timing.throughput(step, sync, batch, **timing_args)
  return {"framework": "jresnet", "variant": "bf16" if bf16 else "fp32",
          "precision": "bf16" if bf16 else "fp32", "compile_s": round(compile_s, 2), **result}


def measure_torch(w: Workload, batch: int, bf16: bool, channels_last: bool,
                  timing_args: dict) -> dict:
  torch.manual_seed(0)
  model, source = torch_models.build(w.model, 10 if w.model == "resnet20" else 1000)
  model = torch_models.prepare(model, "cpu", channels_last)
  x, y = torch_models.inputs(batch, w.image_size, model.fc.out_features, "cpu", channels_last)
  step = (torch_models.train_step(model, x, y, bf16) if w.mode == "train"
          else torch_models.eval_step(model, x, bf16))
  result = timing.throughput(step, lambda: None, batch, **timing_args)
  layout = "channels_last" if channels_last else "contiguous"
  return {"framework": "pytorch", "variant": f"{'bf16 autocast' if bf16 else 'fp32'} {layout}",
          "precision": "bf16" if bf16 else "fp32", "torch_model": source, **result}


def run_workload(w: Workload, quick: bool, timing_args: dict) -> list[dict]:
  batch = w.quick_batch if quick else w.batch
  flops = flops_per_image(w)
  rows = []
  for bf16 in (False, True):
    rows.append(measure_jax(w, batch, bf16, timing_args))
    gc.collect()
  for bf16 in (False, True):
    for channels_last in (False, True):
      rows.append(measure_torch(w, batch, bf16, channels_last, timing_args))
  for row in rows:
    row.update(workload=w.name, mode=w.mode, batch=batch, image_size=w.image_size,
               flops_per_image=flops, gflops_per_s=round(row["images_per_s"] * flops / 1e9, 2))
  for row in rows:
    if row["framework"] == "jresnet":
      best = max(r["images_per_s"] for r in rows
                 if r["framework"] == "pytorch" and r["precision"] == row["precision"])
      row["vs_torch_best"] = round(row["images_per_s"] / best, 3)
  return rows


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="resnet20,resnet50",
                      help=f"comma-separated, from {', '.join(WORKLOADS)}")
  parser.add_argument("--modes", default="train,eval",
                      help="comma-separated, from train, eval: which of the models' workloads run")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--min-repeat-s", type=float, default=2.0,
                      help="steps per repeat are chosen so that a repeat lasts this long")
  parser.add_argument("--quick", action="store_true", help="tiny batches, 1 repeat: smoke test")
  parser.add_argument("--out", default="bench/results.jsonl", help="JSON lines appended here")
  args = parser.parse_args(argv)
  names = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = sorted(set(names) - set(WORKLOADS))
  if unknown:
    parser.error(f"unknown models {unknown}; choose from {', '.join(WORKLOADS)}")
  modes = {m.strip() for m in args.modes.split(",") if m.strip()}
  if not modes or modes - {"train", "eval"}:
    parser.error(f"--modes takes train and/or eval; got {args.modes!r}")
  workloads = [w for name in names for w in WORKLOADS[name] if w.mode in modes]
  if not workloads:
    parser.error(f"no {'/'.join(sorted(modes))} workload for {', '.join(names)}")

  torch.set_num_threads(report.cores())
  machine = report.machine()
  timing_args = ({"repeats": 1, "min_repeat_s": 0.0, "min_steps": 1} if args.quick
                 else {"repeats": args.repeats, "min_repeat_s": args.min_repeat_s})
  print(f"# {machine['cpu_model']}, {machine['cores']} cores, {machine['mem_gib']} GiB; "
        f"jax {machine['jax']} ({machine['jax_backend']}), torch {machine['torch']} "
        f"({torch.get_num_threads()} threads); GLIBC_TUNABLES={machine['glibc_tunables']}"
        f"{'; QUICK' if args.quick else ''}", flush=True)
  rows = []
  for w in workloads:
    conditions = report.conditions()
    measured = run_workload(w, args.quick, timing_args)
    for row in measured:
      row.update(bench="speed", quick=args.quick, machine=machine, **conditions)
    report.append_jsonl(args.out, measured)
    print(report.table(measured, COLUMNS), flush=True)
    rows += measured
  sources = sorted({r["torch_model"] for r in rows if "torch_model" in r})
  print("\n# all workloads\n" + report.table(rows, COLUMNS))
  print("# PyTorch models: " + "; ".join(sources))
  print("# vs_torch_best: jresnet images/s / the faster PyTorch layout at the same precision")
  return rows


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  main()
