"""CIFAR-style ResNet-20 on scikit-learn's 8x8 digits, upsampled to 16x16: the offline demo.

    python train.py --config configs/digits.py --workdir runs/digits

Needs no download (the digits ship with scikit-learn): 1,437 training and 360 test images.
Expected: about 99.4% test accuracy in a few minutes of a 2-core CPU (README, Results).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.source = "digits"
  c.data.image_size = 16
  c.model.depth = 20
  c.batch_size = 64
  c.num_epochs = 20
  c.optimizer.learning_rate = 0.1
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.schedule.warmup_epochs = 1
  c.log_every_steps = 10
  return c
