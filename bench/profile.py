"""A `jax.profiler` trace of a few steps, and the device's ops ranked by their time in it.

`trace` writes the profiler's files (the TensorBoard profile plugin's layout: `xplane.pb`, and
the Chrome-trace `*.trace.json.gz` that Perfetto and chrome://tracing open) under a directory;
`top_ops` reads the trace back and sums each op's time on the device: the 'XLA Ops' line of a GPU
or TPU (each HLO op, fusions by name), else the device's streams (its kernels). On a CPU there is
no device line and `top_ops` says so.
"""

import collections
import glob
import gzip
import json
import os
from collections.abc import Callable

import jax


def trace(step: Callable[[], None], sync: Callable[[], None], directory: str,
          steps: int = 3) -> str:
  """Traces `steps` steps (after one untraced, so that nothing is compiled or allocated while
  tracing) into `directory`; returns the path of the Chrome trace."""
  step()
  sync()
  with jax.profiler.trace(directory):
    for _ in range(steps):
      step()
    sync()
  paths = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*", "*.trace.json.gz")),
                 key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"jax.profiler.trace wrote no *.trace.json.gz under {directory}")
  return paths[-1]


def top_ops(path: str, steps: int, count: int = 10) -> dict:
  """The `count` ops of the device that took the most time in the trace at `path` of `steps`
  steps: {source, device_ms_per_step, ops: [{name, ms_per_step, fraction, calls_per_step}]}."""
  with gzip.open(path, "rt") as f:
    events = json.load(f)["traceEvents"]
  processes, threads = {}, {}
  for event in events:
    if event.get("ph") == "M" and event.get("name") == "process_name":
      processes[event["pid"]] = event["args"]["name"]
    elif event.get("ph") == "M" and event.get("name") == "thread_name":
      threads[(event["pid"], event.get("tid"))] = event["args"]["name"]
  devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
  if not devices:
    return {"source": None, "note": f"no device in the trace (processes: "
            f"{sorted(set(processes.values()))}): ops are ranked on accelerators only"}
  op_lines = {key for key, name in threads.items() if key[0] in devices and name == "XLA Ops"}
  stream_lines = {key for key, name in threads.items() if key[0] in devices
                  and name.startswith("Stream")}
  lines, source = (op_lines, "XLA Ops") if op_lines else (stream_lines, "streams")
  micros, calls = collections.Counter(), collections.Counter()
  for event in events:
    if event.get("ph") == "X" and (event.get("pid"), event.get("tid")) in lines:
      micros[event["name"]] += event.get("dur", 0)
      calls[event["name"]] += 1
  total = sum(micros.values())
  if not total:
    return {"source": None, "note": f"no timed op on the device's lines (threads: "
            f"{sorted({name for key, name in threads.items() if key[0] in devices})})"}
  ops = [{"name": name, "ms_per_step": round(us / steps / 1e3, 3),
          "fraction": round(us / total, 4), "calls_per_step": round(calls[name] / steps, 2)}
         for name, us in micros.most_common(count)]
  return {"source": source, "device_ms_per_step": round(total / steps / 1e3, 3), "ops": ops}
