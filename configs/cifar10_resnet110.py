"""CIFAR-10 ResNet-110 (He et al. 2015, section 4.2), with the paper's warm-up.

    python train.py --config configs/cifar10_resnet110.py --workdir runs/cifar10_resnet110 \
        --config.data.data_dir=<TFDS data dir with cifar10 prepared>

The paper trains at lr 0.01 until the training error is below 80% (about 400 iterations), then at
0.1; here a linear warm-up from 0.01 over the first epoch (352 steps) stands in for it.
Expected: about 93.4% accuracy (the paper's 6.43% test error, best of 5 runs; mean 6.61%).
Each step costs about 5.5x ResNet-20's.
"""

from configs import cifar10_resnet20


def get_config():
  c = cifar10_resnet20.get_config()
  c.model.depth = 110
  c.schedule.warmup_epochs = 1.0
  c.schedule.warmup_start_lr = 0.01
  return c
