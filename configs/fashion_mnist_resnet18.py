"""Fashion-MNIST with a 1-channel ResNet-18 at 96x96: the recipe of d2l.ai's ResNet chapter,
with Adam.

    python train.py --config configs/fashion_mnist_resnet18.py --workdir runs/fashion_resnet18 \
        --config.data.data_dir=<TFDS data dir with fashion_mnist prepared>

ImageNet-style ResNet-18 (7x7/2 stem, max-pool, 4 stages) on images resized from 28 to 96,
1 input channel, Adam lr 1e-3, batch 256, 5 epochs, no augmentation.
Expected: about 92-93% test accuracy (d2l reports ~0.91-0.93 after 10 SGD epochs). Runtime:
5 epochs x 60k images of ResNet-18 at 96x96 is roughly 2 hours on this 2-core CPU; minutes on
a GPU. Not run to completion here.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.source = "tfds"
  c.data.name = "fashion_mnist"
  c.data.preprocess = "mnist"
  c.data.image_size = 96
  c.model.depth = 18
  c.model.family = "imagenet"
  c.batch_size = 256
  c.num_epochs = 5
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.weight_decay = 0.0
  c.schedule.name = "constant"
  c.log_every_steps = 20
  return c
