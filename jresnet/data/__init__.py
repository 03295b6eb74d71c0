"""Input pipelines of jresnet: TFDS datasets, image folders, scikit-learn digits, synthetic data.

    info = load_info(config.data)
    train = train_batches(config.data, global_batch_size=B, seed=s, start_step=step)
    batch = normalize_batch(jax.device_put(next(train)), info.mean, info.std)  # the model's input

The host streams yield uint8 images, the preset's pixels before its normalisation, which runs on
the devices (`normalize_batch`, jitted: the host does no float work per pixel and sends a
quarter of the bytes).

Multi-host: every process calls the same functions; process p of P gets rows [p*b, (p+1)*b),
b = B // P, of every global batch (train and eval), so the shards are disjoint and together are
the single-process batch; the training side's runner assembles them into global arrays. Eval
batches are padded (mask False) so every process runs the same number of steps.

In-memory splits can instead go to the accelerators once and be batched and augmented there
(`open_device_splits`, config.data.on_device): no per-example work on the host, no TensorFlow.

TensorFlow runs here as a guest: its threads are bounded (config.data.threads) and GPUs hidden.
It is imported when a pipeline is first used, not by `import jresnet.data`. This package knows no
model; nothing else in jresnet imports it.
"""

import importlib
import os

# Before any module here imports TensorFlow: without these it prints C++ info lines and a
# oneDNN notice.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

_EXPORTS = {
    "DatasetInfo": "info", "load_info": "info",
    "ArrayFileError": "errors", "DatasetNotFoundError": "errors", "UndecodableImageError": "errors",
    "check_split": "eval_stream", "eval_batches": "eval_stream", "num_eval_batches": "eval_stream",
    "train_batches": "train_stream",
    "DeviceSplit": "device_stream", "open_device_splits": "device_stream",
    "decoded_split": "sources",
    "normalize_batch": "device_transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'jresnet.data' has no attribute {name!r}")
  return getattr(importlib.import_module(f"jresnet.data.{_EXPORTS[name]}"), name)
