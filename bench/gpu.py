"""GPU throughput of jresnet beside PyTorch: ResNet-50 bf16 train and eval, ResNet-20 (issue #9).

    python -m bench.gpu [--out bench/results.jsonl]
    python -m bench.gpu --smoke      # tiny batches and images on any device (CPU: a check)
    python -m bench.gpu --workloads "ResNet-50 train" --frameworks jresnet   # e.g. an XLA flag

Workloads: ResNet-50 224x224 train and eval at batch 256, CIFAR ResNet-20 32x32 train at batch
512, all bf16 (jresnet: dtype bfloat16, float32 parameters; PyTorch: channels_last under bf16
autocast, eager and `torch.compile`). Reported: compile seconds, images/s, TFLOP/s (2 FLOPs per
multiply-add of `jresnet.summary`, x3 for a train step) and its fraction of the device's dense
bf16 peak, peak device memory, and the jresnet/PyTorch ratios.

Imports only jax, flax, optax, numpy, jresnet's models and `jresnet.training.state`, and torch:
the GPU machine has no ml_collections or TensorFlow, and `jresnet.training.step` imports
ml_collections through `optim`, so the train step below restates it (same loss, gradients, SGD
momentum with weight decay masked to kernels, BatchNorm statistics; without the norm metrics).

Environment knobs, passed through untouched and recorded in every JSON line:
  XLA_FLAGS                  e.g. "--xla_gpu_enable_latency_hiding_scheduler=true"
                             or "--xla_gpu_autotune_level=4"
  XLA_PYTHON_CLIENT_PREALLOCATE, XLA_PYTHON_CLIENT_MEM_FRACTION, XLA_PYTHON_CLIENT_ALLOCATOR
                             (preallocation is off by default here, so torch can run beside jax)
  BENCH_PEAK_TFLOPS          the dense bf16 peak to compare with, for a GPU not known below
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import functools  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

import jresnet  # noqa: E402
from bench import report, timing, torch_models  # noqa: E402
from jresnet.training.state import create_train_state  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, SXM
WORKLOADS = [  # name, torch model, jresnet constructor, image size, batch, smoke batch, mode
    ("ResNet-50 train", "resnet50", jresnet.ResNet50, 224, 256, 2, "train"),
    ("ResNet-50 eval", "resnet50", jresnet.ResNet50, 224, 256, 2, "eval"),
    ("ResNet-20 CIFAR train", "resnet20", jresnet.CifarResNet20, 32, 512, 8, "train"),
]
ENV_KNOBS = ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
             "XLA_PYTHON_CLIENT_ALLOCATOR", "BENCH_PEAK_TFLOPS")
COLUMNS = ["workload", "framework", "variant", "batch", "compile_s", "images_per_s", "tflops",
           "peak_fraction", "peak_mem_gib", "vs_torch"]


def sgd(learning_rate=0.1):
  kernels = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key == "kernel", params)
  return optax.chain(optax.add_decayed_weights(1e-4, kernels),
                     optax.sgd(learning_rate, momentum=0.9))


def train_step(state, batch, model, tx):
  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"])
    labels = jax.nn.one_hot(batch["label"], logits.shape[-1])
    return optax.softmax_cross_entropy(logits, labels).mean(), updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state), loss


def measure_jax(make, image_size: int, batch: int, mode: str, timing_args: dict) -> dict:
  model, tx = make(dtype=jnp.bfloat16), sgd()
  state = jax.jit(lambda: create_train_state(model, tx, (image_size, image_size, 3), 0, False))()
  data = {"image": jax.random.normal(jax.random.key(1), (batch, image_size, image_size, 3)),
          "label": jax.random.randint(jax.random.key(2), (batch,), 0, model.num_classes)}
  if mode == "train":
    fn = jax.jit(functools.partial(train_step, model=model, tx=tx), donate_argnums=0)
    args = (state, data)
  else:
    fn = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
    args = (state.eval_variables(), data["image"])
  start = time.perf_counter()
  executable = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  if mode == "train":
    holder = [state]

    def step():
      holder[0], _ = executable(holder[0], data)
  else:
    holder = []

    def step():
      holder[:] = [executable(*args)]

  result = timing.throughput(step, lambda: jax.block_until_ready(holder), batch, **timing_args)
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {"framework": "jresnet", "variant": "bf16 jit", "compile_s": round(compile_s, 2),
          "peak_mem_gib": None if peak is None else round(peak / 2**30, 2),
          "peak_mem_note": "jax peak_bytes_in_use since process start (not reset per workload)",
          **result}


def measure_torch(name: str, image_size: int, batch: int, mode: str, compiled: bool,
                  device: str, timing_args: dict) -> dict:
  torch.manual_seed(0)
  model, source = torch_models.build(name, 10 if name == "resnet20" else 1000)
  model = torch_models.prepare(model, device, channels_last=True)
  x, y = torch_models.inputs(batch, image_size, model.fc.out_features, device, True)
  variant = "bf16 autocast channels_last " + ("torch.compile" if compiled else "eager")
  row = {"framework": "pytorch", "variant": variant, "torch_model": source}
  if compiled:
    if device != "cuda":
      return {**row, "note": "skipped: torch.compile is measured on CUDA only"}
    model = torch.compile(model)
  step = (torch_models.train_step(model, x, y, True)
          if mode == "train" else torch_models.eval_step(model, x, True))
  sync = torch_models.sync_for(device)
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  try:
    start = time.perf_counter()
    step()
    sync()
    row["compile_s"] = round(time.perf_counter() - start, 2) if compiled else None
    row.update(timing.throughput(step, sync, batch, **timing_args))
  except Exception as e:  # noqa: BLE001 (torch.compile failures are reported, not fatal)
    return {**row, "note": f"failed: {type(e).__name__}: {str(e)[:160]}"}
  if device == "cuda":
    row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
  return row


def peak_tflops(device_kind: str) -> tuple[float | None, str]:
  if os.environ.get("BENCH_PEAK_TFLOPS"):
    return float(os.environ["BENCH_PEAK_TFLOPS"]), "BENCH_PEAK_TFLOPS"
  for key, value in PEAK_TFLOPS.items():
    if key in device_kind:
      return value, f"{key} SXM dense bf16; for a PCIe card set BENCH_PEAK_TFLOPS"
  return None, f"unknown for {device_kind!r}"


def driver() -> str | None:
  if not shutil.which("nvidia-smi"):
    return None
  out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True)
  return out.stdout.strip() or None


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny batches, 1 repeat, any device")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="bench/results.jsonl", help="JSON lines appended here")
  parser.add_argument("--workloads", default=",".join(w[0] for w in WORKLOADS),
                      help="comma-separated names of the workloads to run")
  parser.add_argument("--frameworks", default="jresnet,pytorch",
                      help="comma-separated: jresnet, pytorch or both")
  args = parser.parse_args(argv)
  names, frameworks = set(args.workloads.split(",")), set(args.frameworks.split(","))
  unknown = (names - {w[0] for w in WORKLOADS}) | (frameworks - {"jresnet", "pytorch"})
  if unknown:
    parser.error(f"unknown workloads or frameworks: {sorted(unknown)}")
  workloads = [w for w in WORKLOADS if w[0] in names]
  device = "cuda" if torch.cuda.is_available() else "cpu"
  machine = {**report.machine(), "gpu_driver": driver(),
             "torch_device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
             "env": {k: os.environ.get(k) for k in ENV_KNOBS}}
  if device == "cpu":
    torch.set_num_threads(report.cores())
  peak, peak_source = peak_tflops(machine["jax_device"])
  timing_args = ({"repeats": 1, "min_repeat_s": 0.0, "min_steps": 1} if args.smoke
                 else {"repeats": args.repeats, "min_repeat_s": 2.0})
  print(f"# jax {machine['jax']} on {machine['jax_device']} ({machine['jax_backend']}); "
        f"torch {machine['torch']} on {machine['torch_device']}; driver {machine['gpu_driver']}")
  smoke = "; SMOKE: tiny batches and images (at most 64x64), not the GPU workloads"
  print(f"# peak assumed: {peak} TFLOP/s ({peak_source}); XLA_FLAGS={os.environ.get('XLA_FLAGS')}"
        + (smoke if args.smoke else ""))
  if machine["jax_backend"] != "gpu" or device != "cuda":
    print("# NOTE: no GPU for jax and/or torch; the numbers below are CPU numbers")
  rows = []
  for name, torch_name, make, image_size, full_batch, smoke_batch, mode in workloads:
    batch = smoke_batch if args.smoke else full_batch
    image_size = min(image_size, 64) if args.smoke else image_size
    macs = jresnet.summary(make(), (1, image_size, image_size, 3)).total_macs
    flops = 2 * macs * (3 if mode == "train" else 1)
    measured = ([measure_jax(make, image_size, batch, mode, timing_args)]
                if "jresnet" in frameworks else [])
    if "pytorch" in frameworks:
      measured += [measure_torch(torch_name, image_size, batch, mode, compiled, device,
                                 timing_args) for compiled in (False, True)]
    conditions = report.conditions()
    for row in measured:
      row.update(workload=name, mode=mode, batch=batch, image_size=image_size, smoke=args.smoke,
                 bench="gpu", machine=machine, peak_tflops_assumed=peak, **conditions)
      if "images_per_s" in row:
        row["tflops"] = round(row["images_per_s"] * flops / 1e12, 4)
        row["peak_fraction"] = round(row["tflops"] / peak, 4) if peak else None
    torch_best = max((r["images_per_s"] for r in measured if r["framework"] == "pytorch"
                      and "images_per_s" in r), default=None)
    if torch_best and "jresnet" in frameworks:
      measured[0]["vs_torch"] = round(measured[0]["images_per_s"] / torch_best, 3)
    report.append_jsonl(args.out, measured)
    print(report.table(measured, COLUMNS), flush=True)
    for row in measured:
      if row.get("note"):
        print(f"#   {row['framework']} {row['variant']}: {row['note']}")
    rows += measured
  sources = sorted({r["torch_model"] for r in rows if "torch_model" in r})
  print("# PyTorch models: " + "; ".join(sources))
  print("# vs_torch: jresnet images/s / the faster PyTorch variant (eager or compiled)")
  print("# compile_s: jax lower + compile; torch.compile its first call (compile + one step)")
  return rows


if __name__ == "__main__":
  main()
