"""CIFAR-10 ResNet-56 (He et al. 2015, section 4.2): the ResNet-20 recipe at depth 56.

    python train.py --config configs/cifar10_resnet56.py --workdir runs/cifar10_resnet56 \
        --config.data.data_dir=<TFDS data dir with cifar10 prepared>

Expected: about 93.0% accuracy (the paper's 6.97% test error); each step costs about 2.8x
ResNet-20's.
"""

from configs import cifar10_resnet20


def get_config():
  c = cifar10_resnet20.get_config()
  c.model.depth = 56
  return c
