"""One convolution's forward + backward (input and kernel gradients), per ResNet layer shape:
XLA's `lax.conv_general_dilated`, jresnet's default convolution (`jresnet.models.convolution`)
and PyTorch's `conv2d`, in one run.

    python -m bench.conv_layers [--repeats 7] [--out bench/results.jsonl]

Milliseconds, median of the repeats after one warm-up call; JAX compiles with the train step's
XLA options (`jresnet.training.compiler`). Shapes: the CIFAR ResNet-20 layers at batch 128 and the
ResNet-50 layers at batch 16 (224x224 input).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import torch
from jax import lax

from bench import report
from jresnet.models import convolution
from jresnet.training import compiler, huge_pages

NHWC = ("NHWC", "HWIO", "NHWC")
# (name, batch, size, in, out, kernel, stride)
LAYERS = [
    ("ResNet-20 stage 1 3x3", 128, 32, 16, 16, 3, 1),
    ("ResNet-20 stage 2 3x3", 128, 16, 32, 32, 3, 1),
    ("ResNet-20 stage 3 3x3", 128, 8, 64, 64, 3, 1),
    ("ResNet-20 3x3 stride 2", 128, 32, 16, 32, 3, 2),
    ("ResNet-50 stem 7x7 stride 2", 16, 224, 3, 64, 7, 2),
    ("ResNet-50 layer1 3x3", 16, 56, 64, 64, 3, 1),
    ("ResNet-50 layer1 1x1 expand", 16, 56, 64, 256, 1, 1),
    ("ResNet-50 layer1 1x1 reduce", 16, 56, 256, 64, 1, 1),
    ("ResNet-50 layer2 1x1 stride 2", 16, 56, 256, 512, 1, 2),
    ("ResNet-50 layer3 3x3", 16, 14, 256, 256, 3, 1),
    ("ResNet-50 layer3 1x1 reduce", 16, 14, 1024, 256, 1, 1),
    ("ResNet-50 layer4 3x3", 16, 7, 512, 512, 3, 1),
]
COLUMNS = ["layer", "shape", "lax_ms", "jresnet_ms", "torch_channels_last_ms",
           "jresnet_speedup_over_lax", "jresnet_vs_torch"]


def _median_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return round(1e3 * statistics.median(times), 2)


def jax_ms(conv, n, size, cin, cout, k, stride, repeats) -> float:
  pad = ((k - 1) // 2,) * 2

  def fwd_bwd(x, w):
    y, vjp = jax.vjp(lambda x, w: conv(x, w, (stride, stride), (pad, pad),
                                       dimension_numbers=NHWC), x, w)
    return y, vjp(jnp.ones_like(y))

  step = jax.jit(fwd_bwd, compiler_options=compiler.options(jax.default_backend()))
  x = jax.random.normal(jax.random.key(0), (n, size, size, cin))
  w = jax.random.normal(jax.random.key(1), (k, k, cin, cout))
  return _median_ms(lambda: jax.block_until_ready(step(x, w)), repeats)


def torch_ms(n, size, cin, cout, k, stride, repeats) -> float:
  x = torch.randn(n, cin, size, size).contiguous(memory_format=torch.channels_last)
  x.requires_grad_()
  w = torch.randn(cout, cin, k, k, requires_grad=True)

  def fwd_bwd():
    y = torch.nn.functional.conv2d(x, w, stride=stride, padding=(k - 1) // 2)
    y.backward(torch.ones_like(y))

  return _median_ms(fwd_bwd, repeats)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default="bench/results.jsonl")
  args = parser.parse_args(argv)
  torch.set_num_threads(report.cores())
  header = {"bench": "conv_layers", "repeats": args.repeats, **report.machine()}
  rows = []
  for name, *shape in LAYERS:
    conditions = report.conditions()
    lax_ms = jax_ms(lax.conv_general_dilated, *shape, args.repeats)
    ours = jax_ms(convolution.conv_general_dilated, *shape, args.repeats)
    theirs = torch_ms(*shape, args.repeats)
    rows.append({**header, **conditions, "layer": name, "shape": "x".join(map(str, shape)),
                 "lax_ms": lax_ms, "jresnet_ms": ours, "torch_channels_last_ms": theirs,
                 "jresnet_speedup_over_lax": round(lax_ms / ours, 2),
                 "jresnet_vs_torch": round(theirs / ours, 2)})
    report.append_jsonl(args.out, rows[-1:])
  print(report.table(rows, COLUMNS))
  return rows


if __name__ == "__main__":
  huge_pages.exec_with_huge_pages()  # as train.py runs
  main()
