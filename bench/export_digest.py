"""The cost of the export's digest on ResNet-50: `jresnet.export.save` and `export.load` with the
sha256 of every array and JSON field, against the same calls without it.

    python -m bench.export_digest [--repeats 5] [--dir /tmp/jresnet-export-bench]

Without the digest: `save` with the digest computation replaced by an empty record, and `load` of
a file that records none (an export written before digests were kept; loaded unchecked). The two
alternate in one process on the same local disk; the medians are printed side by side, with the
digest's own time.
"""

import argparse
import os
import shutil
import statistics
import tempfile
from unittest import mock

import jax

from bench import report, timing
from jresnet import export
from jresnet.models import ResNet50, init_variables


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
  args = parser.parse_args()

  model = ResNet50()
  variables = jax.device_get(init_variables(model, 0))
  root = args.dir or tempfile.mkdtemp(prefix="jresnet-export-bench-")
  os.makedirs(root, exist_ok=True)
  paths = {digest: os.path.join(root, f"model-{digest}.msgpack") for digest in (False, True)}

  def save(digest: bool) -> None:
    if digest:
      export.save(paths[True], model, variables)
    else:
      with mock.patch.object(export, "_payload_digests", lambda payload: {}):
        export.save(paths[False], model, variables)

  def load(digest: bool) -> None:
    with mock.patch.object(export.logging.getLogger("jresnet"), "warning"):  # "records no sha256"
      jax.block_until_ready(export.load(paths[digest]).variables)

  times = {(digest, op): [] for digest in (False, True) for op in ("save", "load")}
  for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
    for digest in (False, True):
      saved = timing.seconds(lambda: save(digest))  # noqa: B023 (called at once)
      if not digest:  # as an export from before digests: no sha256 field at all
        with open(paths[False], "rb") as f:
          payload = export.serialization.msgpack_restore(f.read())
        del payload["sha256"]
        with open(paths[False], "wb") as f:
          f.write(export.serialization.msgpack_serialize(payload))
      loaded = timing.seconds(lambda: load(digest))  # noqa: B023
      if repeat:
        times[digest, "save"].append(saved)
        times[digest, "load"].append(loaded)
  with open(paths[True], "rb") as f:
    payload = export.serialization.msgpack_restore(f.read())
  alone = statistics.median(timing.seconds(lambda: export._payload_digests(payload))  # noqa: SLF001
                            for _ in range(args.repeats))
  megabytes = os.path.getsize(paths[True]) / 2**20
  if not args.dir:
    shutil.rmtree(root)

  median = {k: statistics.median(v) for k, v in times.items()}
  print(f"ResNet-50 export: {megabytes:.0f} MiB; {args.repeats} repeats, medians; "
        f"{report.machine()['cpu_model']}, load {report.conditions()['loadavg_1m']}")
  print(f"{'':6} {'no digest':>10} {'digest':>8} {'difference':>11}")
  for op in ("save", "load"):
    off, on = median[False, op], median[True, op]
    print(f"{op:6} {off:9.3f}s {on:7.3f}s {on - off:+10.3f}s")
  print(f"the digest alone (sha256 of every array and JSON field): {alone:.3f}s")


if __name__ == "__main__":
  main()
