"""Images/s of train.py's own step with several replicas and several steps a call, in one run.

    python -m bench.replicas                                   # replicas 1,2,4,8 x steps 1,16
    python -m bench.replicas --replicas 1,4 --steps-per-call 1,16 --batch 512 --depth 56

What train.py runs (`loop.build`, `Dataset.train_batches`): CIFAR ResNet-20 (or `--depth`) at
batch `--batch` per replica, on synthetic 32x32 images held on the device (the cifar preset's
augmentation gathered there), the jit runner over every device. Each setting is one program:
`replicas` runs vmapped side by side, `steps_per_call` steps under `lax.scan` a call. images/s
counts the images of every replica; `per_replica` is that over the replica count, and `vs_1x1`
compares with one replica at one step a call in the same run.
"""

import argparse

import jax

from bench import report, timing
from configs import default
from jresnet import data
from jresnet.training import loop


def measure(replicas: int, steps_per_call: int, batch: int, depth: int, repeats: int) -> dict:
  config = default.get_config()
  config.model.depth = depth
  config.data.update(source="synthetic", image_shape=(32, 32, 3), num_examples=50 * batch,
                     preprocess="cifar", train_split="train", eval_split="test")
  config.update(batch_size=batch, num_train_steps=1000 * steps_per_call, log_every_steps=None,
                steps_per_call=steps_per_call, replicas=replicas)
  dataset = data.open(config.data)
  config, runner = loop.build(config, dataset.info)
  state = [loop.init_state(config, runner, dataset.info.image_shape)]
  batches, train_call = loop.train_batches(config, runner, dataset)

  def step():
    state[0], _ = train_call(state[0], next(batches))

  rate = timing.throughput(step, lambda: jax.block_until_ready(state[0]),
                           replicas * steps_per_call * batch, repeats, min_steps=1,
                           max_steps=max(64 // steps_per_call, 1))
  return {"bench": "replicas", "model": f"ResNet-{depth} CIFAR train", "batch": batch,
          "replicas": replicas, "steps_per_call": steps_per_call, **rate,
          "per_replica": round(rate["images_per_s"] / replicas, 2)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--replicas", default="1,2,4,8")
  parser.add_argument("--steps-per-call", default="1,16")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--depth", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default="bench/results.jsonl")
  args = parser.parse_args()
  machine = report.machine()
  rows = [{**report.conditions(), **measure(r, k, args.batch, args.depth, args.repeats),
           **machine}  # (the load just before each measurement)
          for r in map(int, args.replicas.split(","))
          for k in map(int, args.steps_per_call.split(","))]
  base = next((row["images_per_s"] for row in rows
               if row["replicas"] == 1 and row["steps_per_call"] == 1), None)
  for row in rows:
    row["vs_1x1"] = round(row["images_per_s"] / base, 2) if base else None
  print(report.table(rows, ["replicas", "steps_per_call", "batch", "images_per_s",
                            "per_replica", "vs_1x1", "first_step_s", "loadavg_1m"]))
  print(f"# {machine['cpu_model']}, {machine['cores']} cores, jax {machine['jax']}")
  report.append_jsonl(args.out, rows)


if __name__ == "__main__":
  main()
