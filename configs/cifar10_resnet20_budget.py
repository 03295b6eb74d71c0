"""CIFAR-10 ResNet-20 in an hour of a 2-core CPU: 15 epochs, warmup + cosine, Nesterov SGD.

    python train.py --config configs/cifar10_resnet20_budget.py --workdir runs/cifar10_budget \
        --config.data.path=../shared/datasets/cifar10_jpeg

`data.path` is an image folder `<path>/train/<class>/<image>.jpg` holding CIFAR-10's 50,000
training images (any folder of 32x32 images in that layout works): the run trains on a fixed,
class-balanced 45,000 of them ('train[:45000]') and validates on the other 5,000
('train[45000:]'), as He et al. hold out 5k for model selection. The first run decodes the JPEGs
once into ~/.cache/jresnet.

The paper's recipe (configs/cifar10_resnet20.py, 182 epochs) compressed for a budget: the same
model, option-A shortcuts and augmentation (pad 4, random crop, flip); 1 epoch of linear warmup
to lr 0.2, then cosine to 0; Nesterov momentum 0.9; weight decay 5e-4 on the weights only.

Expected: 82-83% validation accuracy (README, Results).
"""

from configs import cifar10_resnet20


def get_config():
  c = cifar10_resnet20.get_config()  # the model, splits and batch of the paper's setting
  c.data.source = "folder"
  c.data.preprocess = "cifar"
  c.eval_batch_size = 500
  c.num_train_steps = None
  c.num_epochs = 15
  c.optimizer.learning_rate = 0.2
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 5e-4
  c.weight_decay_mask = True
  c.schedule.name = "cosine"
  c.schedule.warmup_epochs = 1
  c.schedule.warmup_start_lr = 0.01
  return c
