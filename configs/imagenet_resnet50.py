"""ImageNet ResNet-50 v1.5, the large-minibatch recipe of Goyal et al. 2017.

    python train.py --config configs/imagenet_resnet50.py --workdir runs/imagenet_resnet50 \
        --config.data.data_dir=<TFDS data dir> --config.data.manual_dir=<dir with ILSVRC2012 tars>

lr 0.1 x batch/256 (0.4 at the default batch 1024), 5-epoch linear warm-up from 0, 90 epochs with
lr / 10 at epochs 30, 60 and 80, SGD momentum 0.9, weight decay 1e-4 on convolution and dense
kernels only (none on BatchNorm parameters and biases), zero-initialised last BatchNorm gamma in
every residual branch; Inception-style random-resized crops at 224 with flips for training,
resize 256 + centre crop 224 for evaluation. Computation in bfloat16 on GPU/TPU (float32 params,
BatchNorm statistics and loss); batch_size is global, over all devices and processes.

Expected: about 76.3% top-1 (Goyal et al. report 23.74 +- 0.09% top-1 error at batch 8k).
Runtime: accelerators only (about 6-7 hours on 8 A100-class GPUs); not run here.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.source = "tfds"
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.preprocess = "imagenet"
  c.model.depth = 50
  c.model.family = "imagenet"
  c.model.zero_init_residual = True
  c.batch_size = 1024
  c.num_epochs = 90
  c.optimizer.learning_rate = 0.1
  c.optimizer.lr_base_batch = 256
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.weight_decay_mask = True
  c.schedule.name = "piecewise"
  c.schedule.warmup_epochs = 5
  c.schedule.boundaries = (30 / 90, 60 / 90, 80 / 90)
  c.schedule.decay_factor = 0.1
  c.precision = "auto"
  c.log_every_steps = 100
  c.keep_checkpoints = 3
  return c
