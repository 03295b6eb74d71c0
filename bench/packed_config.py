"""The recipe stored in a pack of `bench.accuracy_vs_epochs`, as a config file (no TensorFlow).

    --config=bench/packed_config.py:<pack.npz> --config.optimizer.weight_decay=1e-4

ml_collections passes what follows the colon to get_config, so the packed recipe can be changed
with `--config.key=value` on a machine that cannot import configs/ (they import jresnet.data).
"""

import json

import numpy as np
from ml_collections import ConfigDict


def get_config(pack: str) -> ConfigDict:
  with np.load(pack) as f:
    return ConfigDict(json.loads(str(f["config"])))
