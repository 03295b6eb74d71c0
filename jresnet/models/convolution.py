"""`lax.conv_general_dilated` with gradients that XLA:CPU computes fast.

XLA:CPU differentiates a convolution with respect to its kernel as another convolution, whose
"kernel" is the whole feature map: for ResNet's layers that runs 2-15x slower than the forward
pass with XLA's default (YNNPACK) convolutions, and still makes the train step 5-17% slower with
XLA's own (BENCHMARKS.md). On CPU this module computes the weight gradient as im2col matmuls
instead, one chunk of the batch at a time so that the patches stay in cache, and computes 1x1
convolutions as matmuls. The input gradient is written out as a convolution in the forward's
own NHWC/HWIO layout: XLA:CPU rewrites other layouts into that one, which its fast (Eigen)
kernels need, only for top-level convolutions, so autodiff's convolution inside a loop (a
scanned stage) ran on the generic path, 30x slower. The choice is made per backend with
`lax.platform_dependent`: lowered for GPU or TPU, the graph is `lax.conv_general_dilated`'s own,
unchanged.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
CHUNK_BYTES = 8 * 2**20  # im2col patches per chunk: measured best between 2 and 16 MiB


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The static arguments of one 2-D NHWC/HWIO convolution."""
  strides: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  dilation: tuple[int, int]

  def plain(self, lhs: jax.Array, rhs: jax.Array, precision=None) -> jax.Array:
    return lax.conv_general_dilated(lhs, rhs, self.strides, self.padding,
                                    rhs_dilation=self.dilation, dimension_numbers=NHWC,
                                    precision=precision)

  def is_pointwise(self, kernel_shape) -> bool:
    return tuple(kernel_shape[:2]) == (1, 1) and self.padding == ((0, 0), (0, 0))

  def patches(self, x: jax.Array, kernel_hw: tuple[int, int]) -> jax.Array:
    """im2col: (N, H', W', kh * kw * C), ordered as a reshaped HWIO kernel's rows."""
    x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *(p + (0,) for p in self.padding),
                                            (0, 0, 0)))
    n, h, w, c = x.shape
    out = [(size - d * (k - 1) - 1) // s + 1 for size, k, s, d in
           zip((h, w), kernel_hw, self.strides, self.dilation)]
    windows = [lax.slice(x, (0, i * self.dilation[0], j * self.dilation[1], 0),
                         (n, i * self.dilation[0] + (out[0] - 1) * self.strides[0] + 1,
                          j * self.dilation[1] + (out[1] - 1) * self.strides[1] + 1, c),
                         (1, *self.strides, 1))
               for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]
    return windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)


def input_gradient(geometry: Geometry, cotangent: jax.Array, rhs: jax.Array,
                   input_hw: tuple[int, int], precision=None) -> jax.Array:
  """d(loss)/d(lhs): the cotangent dilated by the strides, convolved (NHWC/HWIO) with the kernel
  flipped in space and with its feature axes swapped."""
  kernel = jnp.flip(rhs, (0, 1)).swapaxes(2, 3)
  padding = []
  for size, out, k, s, d, (lo, _) in zip(input_hw, cotangent.shape[1:3], rhs.shape[:2],
                                         geometry.strides, geometry.dilation, geometry.padding):
    padding.append((d * (k - 1) - lo, size - 1 - (out - 1) * s + lo))
  return lax.conv_general_dilated(cotangent, kernel, (1, 1), padding,
                                  lhs_dilation=geometry.strides, rhs_dilation=geometry.dilation,
                                  dimension_numbers=NHWC, precision=precision)


def batch_chunk(batch: int, bytes_per_example: int) -> int:
  """The largest divisor of `batch` whose patches fit in CHUNK_BYTES (at least 1)."""
  fitting = max(1, CHUNK_BYTES // max(bytes_per_example, 1))
  return max(d for d in range(1, min(batch, fitting) + 1) if batch % d == 0)


def weight_gradient(geometry: Geometry, lhs: jax.Array, cotangent: jax.Array,
                    kernel_shape: tuple[int, ...], precision=None) -> jax.Array:
  """d(loss)/d(kernel) = sum over examples and positions of patches^T @ cotangent, chunked;
  accumulated and returned in float32."""
  kh, kw, c, o = kernel_shape
  n, oh, ow, _ = cotangent.shape
  chunk = batch_chunk(n, oh * ow * kh * kw * c * lhs.dtype.itemsize)

  def partial_sum(x, g):
    return jnp.einsum("nhwk,nhwo->ko", geometry.patches(x, (kh, kw)), g, precision=precision,
                      preferred_element_type=jnp.float32)

  if chunk == n:
    total = partial_sum(lhs, cotangent)
  else:
    def body(acc, xs):
      return acc + partial_sum(*xs), None
    split = lambda a: a.reshape(n // chunk, chunk, *a.shape[1:])  # noqa: E731
    total, _ = lax.scan(body, jnp.zeros((kh * kw * c, o), jnp.float32),
                        (split(lhs), split(cotangent)))
  return total.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def cpu_conv(geometry: Geometry, lhs: jax.Array, rhs: jax.Array, precision=None) -> jax.Array:
  if geometry.is_pointwise(rhs.shape):
    strided = lhs[:, ::geometry.strides[0], ::geometry.strides[1]]
    return jnp.einsum("nhwc,co->nhwo", strided, rhs[0, 0], precision=precision)
  return geometry.plain(lhs, rhs, precision)


def _cpu_conv_fwd(geometry, lhs, rhs, precision):
  return cpu_conv(geometry, lhs, rhs, precision), (lhs, rhs)


def _cpu_conv_bwd(geometry, precision, residuals, cotangent):
  lhs, rhs = residuals
  if geometry.is_pointwise(rhs.shape):  # a matmul: autodiff's gradient is matmuls too
    _, input_vjp = jax.vjp(lambda x: cpu_conv.fun(geometry, x, rhs, precision), lhs)
    lhs_gradient = input_vjp(cotangent)[0]
  else:
    lhs_gradient = input_gradient(geometry, cotangent, rhs, lhs.shape[1:3], precision)
  return (lhs_gradient,
          weight_gradient(geometry, lhs, cotangent, rhs.shape, precision).astype(rhs.dtype))


cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         out_sharding=None):
  """Drop-in for `lax.conv_general_dilated` (what `flax.linen.Conv` and `flax.nnx.Conv` call).

  2-D NHWC/HWIO convolutions without groups, input dilation or an output sharding take the CPU
  formulation on CPU; everything else, and every other backend, is `lax.conv_general_dilated`
  itself.
  """
  plain = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type,
      **({} if out_sharding is None else {"out_sharding": out_sharding}))  # older jax: no such arg
  special = (lhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1
             or preferred_element_type is not None or out_sharding is not None
             or any(d != 1 for d in lhs_dilation or ())
             or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
             != lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
  if special:
    return plain(lhs, rhs)
  dilation = tuple(rhs_dilation or (1, 1))
  if isinstance(padding, str):
    window = [d * (k - 1) + 1 for d, k in zip(dilation, rhs.shape[:2])]
    padding = lax.padtype_to_pads(lhs.shape[1:3], window, window_strides, padding)
  geometry = Geometry(tuple(window_strides), tuple(tuple(p) for p in padding), dilation)
  return lax.platform_dependent(
      lhs, rhs, cpu=lambda x, w: cpu_conv(geometry, x, w, precision), default=plain)

