"""The cost of the checkpoint integrity check on ResNet-50: a sha256 of every array and a NaN
check at saving, both again at restoring (`Checkpoints(verify=True)`, what train.py runs).

    python -m bench.checkpoint_digests [--repeats 3] [--dir /tmp/jresnet-ckpt-bench]

The train state of configs/imagenet_resnet50.py (ResNet-50 and its SGD momentum) is saved
(synchronously: the whole write) and restored with jresnet.training.checkpoint.Checkpoints, with
the check and without it, alternately; the medians are printed side by side, with the check's own
time (the digests and the NaN check of the state on the host).
"""

import argparse
import os
import shutil
import statistics
import tempfile

import flax.serialization
import jax

from bench import report, timing
from configs import imagenet_resnet50
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import recipe as recipe_lib


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
  args = parser.parse_args()

  config = imagenet_resnet50.get_config()
  config.batch_size = jax.device_count() * 32
  p = recipe_lib.build(config, 1000, (224, 224, 3), 1_281_167)
  state = p.runner.get_state(p.create_state())
  meta = {"model": {"depth": 50}}
  arrays = checkpoint_lib.host_arrays(flax.serialization.to_state_dict(state))
  megabytes = sum(x.nbytes for x in arrays.values()) / 2**20
  root = args.dir or tempfile.mkdtemp(prefix="jresnet-ckpt-bench-")

  times = {(verify, op): [] for verify in (False, True) for op in ("save", "restore")}
  check = []
  for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
    for verify in (False, True):
      directory = os.path.join(root, f"{verify}-{repeat}")
      ckpts = checkpoint_lib.Checkpoints(directory, async_save=False, verify=verify)
      save = timing.seconds(lambda: ckpts.save(state, meta))  # noqa: B023 (called at once)
      restore = timing.seconds(lambda: jax.block_until_ready(ckpts.restore(  # noqa: B023
          int(state.step), state, meta)))
      ckpts.close()
      shutil.rmtree(directory)
      if repeat:
        times[verify, "save"].append(save)
        times[verify, "restore"].append(restore)
    if repeat:
      check.append(timing.seconds(lambda: (checkpoint_lib.digests(checkpoint_lib.host_arrays(
          flax.serialization.to_state_dict(state))), checkpoint_lib.non_finite(arrays))))
  if not args.dir:
    shutil.rmtree(root)

  median = {k: statistics.median(v) for k, v in times.items()}
  print(f"ResNet-50 train state: {len(arrays)} arrays, {megabytes:.0f} MiB; "
        f"{args.repeats} repeats, medians; {jax.devices()[0].device_kind}, "
        f"load {report.conditions()['loadavg_1m']}")
  print(f"{'':10} {'no check':>10} {'with check':>11} {'difference':>11}")
  for op in ("save", "restore"):
    off, on = median[False, op], median[True, op]
    print(f"{op:10} {off:9.2f}s {on:10.2f}s {on - off:+10.2f}s")
  total_off = median[False, "save"] + median[False, "restore"]
  total_on = median[True, "save"] + median[True, "restore"]
  print(f"{'total':10} {total_off:9.2f}s {total_on:10.2f}s {total_on - total_off:+10.2f}s")
  print(f"the check alone (device_get, sha256 and NaN check of the state): "
        f"{statistics.median(check):.2f}s")


if __name__ == "__main__":
  main()
