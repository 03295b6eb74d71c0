"""CIFAR-10 ResNet-20 exactly as He et al. 2015, section 4.2.

    python train.py --config configs/cifar10_resnet20.py --workdir runs/cifar10_resnet20 \
        --config.data.data_dir=<TFDS data dir with cifar10 prepared>

Option-A (parameter-free) shortcuts, SGD lr 0.1, momentum 0.9, weight decay 1e-4 on all weights
(as the original Torch code), batch 128, 64k iterations, lr / 10 at 32k and 48k; standard
augmentation (pad 4, random 32x32 crop, flip). Trained on 45k images, validated on the other 5k
of the training set, as the paper does for model selection.

Expected: about 91.25% accuracy (the paper's 8.75% test error); 64k steps take hours on a CPU,
minutes on a GPU (README, Results).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.train_split = "train[:45000]"
  c.data.eval_split = "train[45000:]"
  c.model.depth = 20
  c.model.family = "cifar"
  c.model.shortcut = "A"
  c.batch_size = 128
  c.num_train_steps = 64_000
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.weight_decay_mask = False
  c.schedule.name = "piecewise"
  c.schedule.boundaries = (0.5, 0.75)   # 32k and 48k of 64k
  c.schedule.decay_factor = 0.1
  c.log_every_steps = 100
  return c
