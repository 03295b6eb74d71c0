"""XLA compiler options of the jitted steps, per platform.

By default XLA:CPU hands dots, reductions and convolutions to the YNNPACK library. For ResNet's
convolutions XLA:CPU's own kernels are faster, so on CPU the steps keep YNNPACK for dots and
reductions only (the measurements are in BENCHMARKS.md). Other platforms get XLA's defaults.
"""

import functools

import jax
from absl import logging

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def options(platform: str) -> dict | None:
  """The options for devices of `platform`; None for XLA's defaults, also where this XLA does not
  know the option (older jaxlib)."""
  if platform != "cpu":
    return None
  try:
    jax.jit(lambda x: x + 1, backend="cpu").lower(0.0).compile(compiler_options=CPU_OPTIONS)
  except jax.errors.JaxRuntimeError as e:
    logging.warning("XLA:CPU compiler options not applied: %s", e)
    return None
  return CPU_OPTIONS
