"""A model's initial variables in a fresh process: `jresnet.init_variables` beside Flax's own
`model.init` (eager) and `jax.jit(model.init)`, and whether they agree bit for bit.

    python -m bench.init_time [--models resnet50,resnet18] [--repeats 3]

Each measurement is a new Python process (what a notebook restart or a script pays): `import_s`
is `import jax, jresnet`, `init_s` the variables made and ready. The JAX persistent compilation
cache is off in the children, so every compile is paid. `equal` compares each method's variables
with `model.init`'s, bitwise, in one further process.
"""

import argparse
import json
import os
import subprocess
import sys

from bench import report

MODELS = {"resnet18": "ResNet18", "resnet50": "ResNet50", "resnet101": "ResNet101",
          "resnet20": "CifarResNet20"}
METHODS = {
    "init_variables": "jresnet.init_variables(model, jax.random.key(0))",
    "model.init": "model.init(jax.random.key(0), x)",
    "jit(model.init)": "jax.jit(model.init)(jax.random.key(0), x)",
}
COLUMNS = ["model", "method", "import_s", "init_s", "min_s", "max_s", "loadavg_1m"]

CHILD = """
import time
start = time.perf_counter()
import jax, jax.numpy as jnp
import jresnet
imported = time.perf_counter()
model = jresnet.{constructor}()
x = jnp.zeros((1, 64, 64, 3))
variables = jax.block_until_ready({call})
print(imported - start, time.perf_counter() - imported)
"""

EQUAL = """
import jax, jax.numpy as jnp, numpy as np
import jresnet
model = jresnet.{constructor}()
x = jnp.zeros((1, 64, 64, 3))
reference = model.init(jax.random.key(0), x)
for call in {calls!r}:
  got = eval(call)
  same = jax.tree.structure(got) == jax.tree.structure(reference) and all(
      np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference)))
  print(same)
"""


def _child_env() -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_COMPILATION_CACHE="false")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def measure(constructor: str, call: str) -> tuple[float, float]:
  out = subprocess.run([sys.executable, "-c", CHILD.format(constructor=constructor, call=call)],
                       capture_output=True, text=True, check=True, env=_child_env())
  import_s, init_s = map(float, out.stdout.split()[-2:])
  return import_s, init_s


def equal(constructor: str, calls: list[str]) -> list[bool]:
  out = subprocess.run([sys.executable, "-c", EQUAL.format(constructor=constructor, calls=calls)],
                       capture_output=True, text=True, check=True, env=_child_env())
  return [line == "True" for line in out.stdout.split()]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="resnet50")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--jsonl", default="bench/results.jsonl")
  args = parser.parse_args()
  rows = []
  for name in args.models.split(","):
    constructor = MODELS[name]
    methods = args.methods.split(",")
    same = equal(constructor, [METHODS[m] for m in methods])
    for method, is_equal in zip(methods, same):
      conditions = report.conditions()
      times = [measure(constructor, METHODS[method]) for _ in range(args.repeats)]
      inits = sorted(t for _, t in times)
      rows.append({"bench": "init_time", "model": name, "method": method,
                   "import_s": round(sorted(i for i, _ in times)[len(times) // 2], 2),
                   "init_s": round(inits[len(inits) // 2], 2), "min_s": round(inits[0], 2),
                   "max_s": round(inits[-1], 2), "equal_to_model_init": is_equal,
                   **conditions})
      print(json.dumps(rows[-1]), flush=True)
  print(report.table(rows, COLUMNS + ["equal_to_model_init"]))
  machine = report.machine()
  report.append_jsonl(args.jsonl, [{**row, "machine": machine} for row in rows])


if __name__ == "__main__":
  main()
