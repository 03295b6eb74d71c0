"""What a benchmark writes out: the machine it ran on, a plain-text table, JSON lines.

Every JSON line carries the machine and the load average at the time of measuring, because
numbers from a shared 2-core machine mean little without the conditions they were taken in.
"""

import datetime
import json
import os
import platform


def _cpuinfo(key: str) -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(key):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def _mem_total_gib() -> float | None:
  try:
    with open("/proc/meminfo") as f:
      kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return round(kib / 2**20, 1)
  except (OSError, StopIteration):
    return None


def cores() -> int:
  """CPU cores this process may run on (the affinity mask, not the host's count)."""
  return len(os.sched_getaffinity(0))


def machine() -> dict:
  """The machine and software versions, for every JSON line."""
  import jax  # noqa: PLC0415 (torch and jax only when measuring)
  info = {"host": platform.node(), "cpu_model": _cpuinfo("model name"),
          "processor": platform.processor(), "cores": cores(), "mem_gib": _mem_total_gib(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jax_backend": jax.default_backend(), "jax_device": jax.devices()[0].device_kind,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}  # huge pages or not
  try:
    import torch  # noqa: PLC0415
    info["torch"] = torch.__version__
  except ImportError:
    info["torch"] = None
  return info


def conditions() -> dict:
  """When, and how busy the machine was (1-minute load average) just before a measurement."""
  return {"time": datetime.datetime.now().isoformat(timespec="seconds"),
          "loadavg_1m": round(os.getloadavg()[0], 2)}


def append_jsonl(path: str, records: list[dict]) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def table(rows: list[dict], columns: list[str]) -> str:
  """A left-aligned text table of `columns` of `rows`; missing values print as '-'."""
  cells = [columns] + [[_fmt(row.get(c)) for c in columns] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
  lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _fmt(value) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
  return str(value)
