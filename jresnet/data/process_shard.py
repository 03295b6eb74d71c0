"""Which rows of every global batch belong to this process.

Process p of P owns rows [p*b, (p+1)*b) of each global batch of B = P*b examples, so the shards
are disjoint and, concatenated in process order, are exactly the batch one process would see.
A process keeps a stream position `pos` (example `pos % B` of global batch `pos // B`) iff
`(pos % B) // b == p`; positions are decided before decoding, so a process decodes only its rows.
An evaluation runs the same number of global batches on every process, the last one padded.
"""

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Shard:
  global_batch_size: int
  process_index: int
  process_count: int

  @property
  def batch_size(self) -> int:
    """Rows per batch on this process."""
    return self.global_batch_size // self.process_count

  def owns(self, position):
    """Whether stream position `position` (an int64 tf.Tensor, or an integer array) is one of
    this process's rows."""
    row = position % self.global_batch_size
    return row // self.batch_size == self.process_index


def shard(global_batch_size: int, process_index: int | None = None,
          process_count: int | None = None) -> Shard:
  """This process's shard; defaults to JAX's view of the processes. Checks divisibility."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"process_index={index} is not in [0, process_count={count}).")
  if global_batch_size < 1 or global_batch_size % count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={count}.")
  return Shard(global_batch_size, index, count)


def eval_batch_count(num_examples: int, global_batch_size: int) -> int:
  """Global batches that hold each of `num_examples` once, the last one padded: ceil(N / B)."""
  return -(-num_examples // global_batch_size)
