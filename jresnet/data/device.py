"""Batches onto the devices ahead of the step that consumes them."""

import collections
import itertools
from collections.abc import Iterable, Iterator

import jax


def prefetch_to_device(iterator: Iterable, size: int, sharding: jax.sharding.Sharding) -> Iterator:
  """Yields each batch (a pytree of this process's numpy arrays) as global `jax.Array`s.

  Each array is `jax.make_array_from_process_local_data(sharding, local)`: with a NamedSharding
  over a 'data' mesh axis the leading (batch) axis is split over the devices, the local rows of
  all processes together forming the global batch. Transfers are asynchronous, so keeping `size`
  batches in flight overlaps copying the next batches with the current step.
  """
  iterator = iter(iterator)
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x), batch))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)
