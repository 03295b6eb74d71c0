"""CIFAR-10 ResNet-56 in the same hour as `cifar10_resnet20_budget.py`: 6 epochs.

    python train.py --config configs/cifar10_resnet56_budget.py --workdir runs/cifar10_budget_r56 \
        --config.data.path=../shared/datasets/cifar10_jpeg

The ResNet-20 budget recipe (split, augmentation, warm-up + cosine, Nesterov, weight decay) at
depth 56, whose step costs ~3x ResNet-20's, so that 6 epochs take the hour of a 2-core CPU.

Expected: about 79% validation accuracy (README, Results).
"""

from configs import cifar10_resnet20_budget


def get_config():
  c = cifar10_resnet20_budget.get_config()
  c.model.depth = 56
  c.num_epochs = 6
  return c
