"""TensorFlow as a guest in a JAX program: bounded threads, no GPU, quiet logs.

tf.data only feeds the accelerator (or, on a CPU host, the XLA step), so it must not take every
core nor reserve GPU memory. TensorFlow fixes its thread pools and visible devices when its runtime
starts, so the first call wins; later calls with other values only bound tf.data (per pipeline).
"""

import tensorflow as tf

# What TensorFlow raises for image bytes that do not decode (unknown format, truncated data).
DECODE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.DataLossError)

_configured = False


def configure(threads: int) -> None:
  """Hides GPUs from TensorFlow and bounds its thread pools to `threads`."""
  global _configured
  if not _configured:
    _configured = True
    # RuntimeError: TensorFlow's runtime was started by someone else; its settings stay.
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
      pass
    try:
      tf.config.threading.set_intra_op_parallelism_threads(threads)
      tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
      pass


def options(threads: int) -> tf.data.Options:
  """tf.data options for every pipeline here: its own pool of `threads`, deterministic order."""
  opts = tf.data.Options()
  opts.deterministic = True
  opts.threading.private_threadpool_size = threads
  opts.threading.max_intra_op_parallelism = 1
  return opts
