"""Throughput of train.py's own train and eval steps beside PyTorch's, in one run, on CPU or GPU.

    python -m bench.throughput                      # the device's default workloads
    python -m bench.throughput --device cpu --models resnet50 --modes eval
    python -m bench.throughput --device gpu --models resnet50 --modes train --batch 384
    python -m bench.throughput --quick              # tiny batches and images, one repeat: a check

jresnet runs `jresnet.training.step.train_step` with `jresnet.training.optim`'s SGD, compiled by
the JitMesh runner as train.py compiles them (`bench.project_step`); PyTorch the same
architecture (`bench.torch_models`) with SGD momentum. Per device:
  cpu  ResNet-20 CIFAR train (32x32, batch 128), ResNet-50 train (224, batch 16) and eval
       (224, batch 32), `--models resnet18` ResNet-18 train (224, batch 32); jresnet fp32 and
       bf16 (float32 parameters), PyTorch fp32 and bf16 autocast, contiguous and channels_last.
  gpu  ResNet-50 train and eval (224, batch 256), ResNet-20 CIFAR train (32, batch 512); jresnet
       bf16, PyTorch bf16 autocast channels_last, eager and `torch.compile`.
images/s is the median of the timed repeats. FLOPs count 2 per multiply-add of
`jresnet.summary`, x3 for a train step (forward, and a backward of about twice its cost);
`peak_fraction` compares with the device's dense bf16 peak. `vs_torch` is jresnet's images/s over
the faster PyTorch variant at the same precision.

Environment knobs, passed through and recorded in every JSON line: XLA_FLAGS,
XLA_PYTHON_CLIENT_PREALLOCATE (off by default here, so that torch runs beside jax),
XLA_PYTHON_CLIENT_MEM_FRACTION, XLA_PYTHON_CLIENT_ALLOCATOR, BENCH_PEAK_TFLOPS (the dense bf16
peak of a GPU not known below).
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

import jresnet  # noqa: E402
from bench import profile, project_step, report, timing, torch_models  # noqa: E402
from jresnet.training import huge_pages  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, SXM
ENV_KNOBS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
             "XLA_PYTHON_CLIENT_ALLOCATOR", "BENCH_PEAK_TFLOPS")
COLUMNS = ["workload", "framework", "variant", "batch", "compile_s", "images_per_s",
           "gflops_per_s", "peak_fraction", "peak_mem_gib", "vs_torch"]


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  model: str           # a key of MODELS and of torch_models
  image_size: int
  batch: int
  mode: str            # 'train' | 'eval'
  default: bool = True  # run when --models is not given


@dataclasses.dataclass(frozen=True)
class Variant:
  framework: str       # 'jresnet' | 'pytorch'
  bf16: bool
  channels_last: bool = False  # pytorch
  compiled: bool = False       # pytorch: torch.compile

  @property
  def precision(self) -> str:
    return "bf16" if self.bf16 else "fp32"

  @property
  def name(self) -> str:
    if self.framework == "jresnet":
      return self.precision
    precision = "bf16 autocast" if self.bf16 else "fp32"
    layout = "channels_last" if self.channels_last else "contiguous"
    return f"{precision} {layout}" + (" torch.compile" if self.compiled else "")


MODELS = {"resnet20": jresnet.CifarResNet20, "resnet50": jresnet.ResNet50,
          "resnet18": jresnet.ResNet18}
WORKLOADS = {
    "cpu": [Workload("ResNet-20 CIFAR train", "resnet20", 32, 128, "train"),
            Workload("ResNet-50 train", "resnet50", 224, 16, "train"),
            Workload("ResNet-50 eval", "resnet50", 224, 32, "eval"),
            Workload("ResNet-18 train", "resnet18", 224, 32, "train", default=False)],
    "gpu": [Workload("ResNet-50 train", "resnet50", 224, 256, "train"),
            Workload("ResNet-50 eval", "resnet50", 224, 256, "eval"),
            Workload("ResNet-20 CIFAR train", "resnet20", 32, 512, "train")],
}
VARIANTS = {
    "cpu": [Variant("jresnet", False), Variant("jresnet", True)]
           + [Variant("pytorch", bf16, channels_last) for bf16 in (False, True)
              for channels_last in (False, True)],
    "gpu": [Variant("jresnet", True), Variant("pytorch", True, True),
            Variant("pytorch", True, True, compiled=True)],
}
QUICK = {"batch": 2, "max_image_size": 64, "cifar_batch": 8}
PROFILE_STEPS = 3


def flops_per_image(w: Workload, image_size: int) -> float:
  macs = jresnet.summary(MODELS[w.model](), (1, image_size, image_size, 3)).total_macs
  return 2 * macs * (3 if w.mode == "train" else 1)


def measure_jax(w: Workload, v: Variant, batch: int, image_size: int, timing_args: dict,
                profile_dir: str | None = None) -> dict:
  model = MODELS[w.model](dtype=jnp.bfloat16 if v.bf16 else jnp.float32)
  build = project_step.train if w.mode == "train" else project_step.evaluate
  compile_s, step, sync = build(model, batch, image_size)
  row = {"compile_s": round(compile_s, 2), **timing.throughput(step, sync, batch, **timing_args)}
  if profile_dir:
    directory = os.path.join(profile_dir, f"{w.name}_{v.name}".replace(" ", "_"))
    try:  # a trace that fails (no profiler on the machine, a format it did not expect) is noted
      row["trace"] = profile.trace(step, sync, directory, PROFILE_STEPS)
      row["top_ops"] = profile.top_ops(row["trace"], PROFILE_STEPS)
    except Exception as e:  # noqa: BLE001 (the measurement above stands)
      row["top_ops"] = {"note": f"no profile: {type(e).__name__}: {str(e)[:200]}"}
  peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  if peak is not None:
    row["peak_mem_gib"] = round(peak / 2**30, 2)
    row["peak_mem_note"] = "jax peak_bytes_in_use since process start (not reset per workload)"
  return row


def measure_torch(w: Workload, v: Variant, batch: int, image_size: int, device: str,
                  timing_args: dict) -> dict:
  torch.manual_seed(0)
  model, source = torch_models.build(w.model, 10 if w.model == "resnet20" else 1000)
  model = torch_models.prepare(model, device, v.channels_last)
  x, y = torch_models.inputs(batch, image_size, model.fc.out_features, device, v.channels_last)
  row = {"torch_model": source}
  if v.compiled:
    if device != "cuda":
      return {**row, "note": "skipped: torch.compile is measured on CUDA only"}
    model = torch.compile(model)
  step = (torch_models.train_step(model, x, y, v.bf16) if w.mode == "train"
          else torch_models.eval_step(model, x, v.bf16))
  sync = torch_models.sync_for(device)
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  try:
    start = time.perf_counter()
    step()
    sync()
    row["compile_s"] = round(time.perf_counter() - start, 2) if v.compiled else None
    row.update(timing.throughput(step, sync, batch, **timing_args))
  except Exception as e:  # noqa: BLE001 (torch.compile failures are reported, not fatal)
    return {**row, "note": f"failed: {type(e).__name__}: {str(e)[:160]}"}
  if device == "cuda":
    row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
  return row


def add_ratios(rows: list[dict], flops: float, peak_tflops: float | None) -> None:
  """FLOP rates of every measured row, and jresnet's speed over PyTorch's best at its precision."""
  for row in rows:
    if "images_per_s" in row:
      row["flops_per_image"] = flops
      row["gflops_per_s"] = round(row["images_per_s"] * flops / 1e9, 2)
      if peak_tflops:
        row["peak_fraction"] = round(row["gflops_per_s"] / 1e3 / peak_tflops, 4)
  for row in rows:
    if row["framework"] == "jresnet" and "images_per_s" in row:
      best = max((r["images_per_s"] for r in rows if r["framework"] == "pytorch"
                  and r["precision"] == row["precision"] and "images_per_s" in r), default=None)
      if best:
        row["vs_torch"] = round(row["images_per_s"] / best, 3)


def profile_text(row: dict) -> str:
  """The traced ops of a row ranked by time, as lines for the log."""
  top = row["top_ops"]
  if not top.get("ops"):
    return f"# {row['variant']} trace {row.get('trace')}: {top.get('note')}"
  lines = [f"# {row['variant']}: device {top['device_ms_per_step']} ms a step ({top['source']}), "
           f"step {1e3 * row['batch'] / row['images_per_s']:.3f} ms; trace {row['trace']}"]
  lines += [f"#   {op['ms_per_step']:8.3f} ms  {100 * op['fraction']:5.1f}%  "
            f"x{op['calls_per_step']:g}  {op['name']}" for op in top["ops"]]
  return "\n".join(lines)


def peak_tflops(device: str, device_kind: str) -> tuple[float | None, str]:
  if device != "gpu":
    return None, "not compared on CPU"
  if os.environ.get("BENCH_PEAK_TFLOPS"):
    return float(os.environ["BENCH_PEAK_TFLOPS"]), "BENCH_PEAK_TFLOPS"
  for key, value in PEAK_TFLOPS.items():
    if key in device_kind:
      return value, f"{key} SXM dense bf16; for a PCIe card set BENCH_PEAK_TFLOPS"
  return None, f"unknown for {device_kind!r}"


def gpu_driver() -> str | None:
  if not shutil.which("nvidia-smi"):
    return None
  out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True)
  return out.stdout.strip() or None


def select(parser, device: str, models: str | None, modes: str, frameworks: str):
  table = WORKLOADS[device]
  names = ([m.strip() for m in models.split(",") if m.strip()] if models
           else list(dict.fromkeys(w.model for w in table if w.default)))
  unknown = sorted(set(names) - {w.model for w in table})
  if unknown:
    parser.error(f"unknown models {unknown} on {device}; choose from "
                 f"{', '.join(dict.fromkeys(w.model for w in table))}")
  chosen_modes = {m.strip() for m in modes.split(",") if m.strip()}
  if not chosen_modes or chosen_modes - {"train", "eval"}:
    parser.error(f"--modes takes train and/or eval; got {modes!r}")
  chosen_frameworks = {f.strip() for f in frameworks.split(",") if f.strip()}
  if not chosen_frameworks or chosen_frameworks - {"jresnet", "pytorch"}:
    parser.error(f"--frameworks takes jresnet and/or pytorch; got {frameworks!r}")
  workloads = [w for w in table if w.model in names and w.mode in chosen_modes]
  if not workloads:
    parser.error(f"no {'/'.join(sorted(chosen_modes))} workload for {', '.join(names)}")
  variants = [v for v in VARIANTS[device] if v.framework in chosen_frameworks]
  return workloads, variants


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                      help="which workload table and variants (auto: gpu where jax has one)")
  parser.add_argument("--models", help="comma-separated, e.g. resnet20,resnet50")
  parser.add_argument("--modes", default="train,eval",
                      help="comma-separated, from train, eval: which of the models' workloads run")
  parser.add_argument("--frameworks", default="jresnet,pytorch")
  parser.add_argument("--batch", type=int, help="batch size of every selected workload")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--min-repeat-s", type=float, default=2.0,
                      help="steps per repeat are chosen so that a repeat lasts this long")
  parser.add_argument("--quick", action="store_true",
                      help="tiny batches, images of at most 64x64, one repeat: a check")
  parser.add_argument("--profile", metavar="DIR", help="after timing, trace a few jresnet steps "
                      "into DIR/<workload>_<variant>/ and rank the device's ops by time")
  parser.add_argument("--out", default="bench/results.jsonl", help="JSON lines appended here")
  args = parser.parse_args(argv)
  device = args.device if args.device != "auto" else (
      "gpu" if jax.default_backend() == "gpu" else "cpu")
  workloads, variants = select(parser, device, args.models, args.modes, args.frameworks)

  torch_device = "cuda" if device == "gpu" and torch.cuda.is_available() else "cpu"
  if torch_device == "cpu":
    torch.set_num_threads(report.cores())
  machine = {**report.machine(), "gpu_driver": gpu_driver(),
             "torch_device": (torch.cuda.get_device_name() if torch_device == "cuda"
                              else "cpu"),
             "env": {k: os.environ.get(k) for k in ENV_KNOBS}}
  peak, peak_source = peak_tflops(device, machine["jax_device"])
  timing_args = ({"repeats": 1, "min_repeat_s": 0.0, "min_steps": 1} if args.quick
                 else {"repeats": args.repeats, "min_repeat_s": args.min_repeat_s})
  print(f"# {device} table: jax {machine['jax']} on {machine['jax_device']} "
        f"({machine['jax_backend']}), torch {machine['torch']} on {machine['torch_device']}; "
        f"{machine['cpu_model']}, {machine['cores']} cores; driver {machine['gpu_driver']}; "
        f"peak {peak} TFLOP/s ({peak_source}); XLA_FLAGS={os.environ.get('XLA_FLAGS')}; "
        f"GLIBC_TUNABLES={machine['glibc_tunables']}"
        + ("; QUICK: tiny batches and images" if args.quick else ""), flush=True)
  if device == "gpu" and (machine["jax_backend"] != "gpu" or torch_device != "cuda"):
    print("# NOTE: the gpu table without a GPU for jax and/or torch: these are CPU numbers")
  rows = []
  for w in workloads:
    batch = args.batch or ((QUICK["cifar_batch"] if w.model == "resnet20" else QUICK["batch"])
                           if args.quick else w.batch)
    image_size = min(w.image_size, QUICK["max_image_size"]) if args.quick else w.image_size
    conditions = report.conditions()
    measured = []
    for v in variants:
      row = (measure_jax(w, v, batch, image_size, timing_args, args.profile)
             if v.framework == "jresnet"
             else measure_torch(w, v, batch, image_size, torch_device, timing_args))
      measured.append({"framework": v.framework, "variant": v.name, "precision": v.precision,
                       **row})
      gc.collect()
    add_ratios(measured, flops_per_image(w, image_size), peak)
    for row in measured:
      row.update(workload=w.name, model=w.model, mode=w.mode, batch=batch, image_size=image_size,
                 device=device, quick=args.quick, bench="throughput", machine=machine,
                 peak_tflops_assumed=peak, **conditions)
    report.append_jsonl(args.out, measured)
    print(report.table(measured, COLUMNS), flush=True)
    for row in measured:
      if row.get("note"):
        print(f"#   {row['framework']} {row['variant']}: {row['note']}")
      if row.get("top_ops"):
        print(profile_text(row))
    rows += measured
  print("\n# all workloads\n" + report.table(rows, COLUMNS))
  print("# PyTorch models: " + "; ".join(sorted({r["torch_model"] for r in rows
                                                  if "torch_model" in r})))
  print("# vs_torch: jresnet images/s / the faster PyTorch variant at the same precision; "
        "compile_s: jax lower + compile, torch.compile its first call")
  return rows


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  main()
