"""Input pipelines of jresnet: TFDS datasets, image folders, scikit-learn digits, synthetic data.

    info = load_info(config.data)
    train = train_batches(config.data, global_batch_size=B, seed=s, start_step=step)
    batches = prefetch_to_device(train, config.data.prefetch, NamedSharding(mesh, P("data")))

Multi-host: every process calls the same functions; process p of P gets rows [p*b, (p+1)*b),
b = B // P, of every global batch (train and eval), so the shards are disjoint and together are
the single-process batch, and `prefetch_to_device` assembles them into global arrays. Eval
batches are padded (mask False) so every process runs the same number of steps.

TensorFlow runs here as a guest: its threads are bounded (config.data.threads) and GPUs hidden.
This package knows no model; nothing else in jresnet imports it.
"""

from jresnet.data import tf_runtime  # First: quiets TensorFlow before it is imported.
from jresnet.data.config import default_config
from jresnet.data.device import prefetch_to_device
from jresnet.data.errors import DatasetNotFoundError, UndecodableImageError
from jresnet.data.evaluation import check_split, eval_batches, num_eval_batches
from jresnet.data.info import DatasetInfo, load_info
from jresnet.data.train import train_batches

__all__ = ["DatasetInfo", "DatasetNotFoundError", "UndecodableImageError", "check_split",
           "default_config", "eval_batches", "load_info", "num_eval_batches", "prefetch_to_device",
           "train_batches"]
