"""CIFAR-10 ResNet-20 in an hour of a 2-core CPU: 15 epochs, warmup + cosine, Nesterov SGD.

    python train.py --config configs/cifar10_resnet20_budget.py --workdir runs/cifar10_budget \
        --config.data.path=../shared/datasets/cifar10_jpeg

`data.path` is an image folder `<path>/train/<class>/<image>.jpg` holding CIFAR-10's 50,000
training images (any folder of 32x32 images in that layout works): the run trains on a fixed,
class-balanced 45,000 of them ('train[:45000]') and validates on the other 5,000
('train[45000:]'), as He et al. hold out 5k for model selection. The first run decodes the JPEGs
once into ~/.cache/jresnet (about a minute).

The paper's recipe (configs/cifar10_resnet20.py, 182 epochs) compressed for a budget: the same
model, option-A shortcuts and augmentation (pad 4, random crop, flip); 1 epoch of linear warmup
to lr 0.2, then cosine to 0; Nesterov momentum 0.9; weight decay 5e-4 on the weights only.

Measured here with the current code (2026-11-24 19:35-20:22, 2 CPU cores, nothing else running
for most of it): 5,274 steps in 46 min 52 s of training (47 min 08 s wall for the command; ~218
images/s with the input pipeline sharing the cores), **82.00% validation accuracy** (top-5
98.94%, loss 0.5250) at the last step; `--mode=eval
--config.eval_checkpoint=<workdir>/model.msgpack` gives the same 82.00%. Single runs of this
recipe spread over more than a point (82.00-83.40% so far): another seed
(`--config.seed=1`, 2026-11-24 22:35-23:35, an hour when this machine ran slower: 58 min 58 s
of training at ~150-200 images/s) reached 82.48% (loss 0.5276); the first run (2026-11-23,
before the CPU compiler options of jresnet/training/compiler.py changed float32 rounding)
reached 83.40% in 57 min 38 s; 18 epochs (`--config.num_epochs=18`) 83.26%.
This is short of the 90% that the recipe was meant to reach: training accuracy is also ~83-87% at
the end, so the model is under-trained, not over-fitted. PyTorch following this config on the same
split (`python -m bench.torch_recipe`) reached 82.44% in 15 epochs and 84.92% in 30
(`--config.num_epochs=30`): the plateau is the recipe's length on this data, not jresnet. If each
doubling kept adding 2.5 points (an extrapolation from two runs), 90% would take ~120 epochs: ~6
hours of jresnet here. `python -m bench.accuracy_vs_epochs` measures the whole curve on a GPU.
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
