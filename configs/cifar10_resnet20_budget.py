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

Measured here (2026-11-23, 2 CPU cores, nothing else running for most of it): 5,274 steps in
57 min 38 s of training (57 min 54 s wall for the command; ~200 images/s, the input pipeline
sharing the two cores), **83.40% validation accuracy** (top-5 99.10%, loss 0.5096) at the last
step. This is short of the 90% that the recipe was meant to reach: training accuracy is also
~83-87% at the end, so the model is under-trained, not over-fitted; more epochs are the fix (the
paper's 182 epochs give ~91.3%), and at this speed 15 epochs is what an hour holds.
`--mode=eval --config.eval_checkpoint=<workdir>/model.msgpack` gives the same 83.40%.
That run predates the CPU steps' compiler options (jresnet/training/compiler.py), which change
float32 rounding and make the step ~20% faster; with them, 18 epochs (`--config.num_epochs=18`)
took 54 min 13 s of training and reached 83.26% (2026-11-24), so 15 epochs stay the default.
PyTorch following this config on the same split (`python -m bench.torch_recipe`, 2026-11-24)
reached 82.44% in 15 epochs and 84.92% in 30 (`--config.num_epochs=30`): the plateau is the
recipe's length on this data, not jresnet. If each doubling kept adding 2.5 points (an
extrapolation from these two runs), 90% would take ~120 epochs: ~6 hours of jresnet here.
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
