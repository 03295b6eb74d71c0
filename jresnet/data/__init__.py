"""Input pipelines of jresnet: TFDS datasets, image folders, array files, scikit-learn digits and
synthetic data, batched onto the devices ready for the model.

    dataset = data.open(config.data)   # built once per run; a missing dataset fails here
    dataset.info                       # classes, image shape, split sizes, the preset
    batches = dataset.train_batches(sharding, batch_size=B, seed=s, start_step=k)

Splits held in memory are batched and augmented on the devices in JAX; streamed splits are
decoded by tf.data on the host (dataset.py says which, and why).

Multi-host: every process calls the same functions; a batch is the global batch, each process
computing or sending its own rows [p*b, (p+1)*b), b = B // P, so the shards are disjoint and
together are the single-process batch. Eval batches are padded (mask False) so every process runs
the same number of steps.

TensorFlow runs here as a guest, imported only by the modules that run tf.data, when a source or a
split needs it: `import jresnet.data` does not load it. Its threads are bounded
(config.data.threads) and its GPUs hidden. This package knows no model; nothing else in jresnet
imports it.
"""

import os

# Before any module here imports TensorFlow: without these it prints C++ info lines and a
# oneDNN notice.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from jresnet.data.dataset import Dataset, DatasetInfo, open  # noqa: A004, E402
from jresnet.data.errors import (  # noqa: E402
  ArrayFileError,
  DatasetNotFoundError,
  UndecodableImageError,
)

__all__ = ["ArrayFileError", "Dataset", "DatasetInfo", "DatasetNotFoundError",
           "UndecodableImageError", "open"]
