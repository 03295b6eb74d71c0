"""CIFAR-10 pre-activation ResNet-1001 (He et al. 2016, "Identity Mappings", section 4).

    python train.py --config configs/cifar10_preact_resnet1001.py \
        --workdir runs/cifar10_preact_resnet1001 \
        --config.data.data_dir=<TFDS data dir with cifar10 prepared>

Bottleneck pre-activation blocks, depth 9n+2 with n=111 (10.3M parameters); the CIFAR schedule of
the paper (lr 0.1, / 10 at 32k and 48k of 64k iterations, batch 128, weight decay 1e-4, with a
warm-up from 0.01 as for ResNet-110). The 333 identical blocks of each stage run as one `nn.scan`
(compile time independent of depth) and are rematerialised (activation memory of one block).
Expected: about 95.1% accuracy (the paper's 4.92% test error). Runtime: needs accelerators
(roughly 30x ResNet-20's work per step); not run here.
"""

from configs import cifar10_resnet20


def get_config():
  c = cifar10_resnet20.get_config()
  c.model.depth = 1001
  c.model.version = "v2"
  c.model.shortcut = "B"
  c.model.scan_blocks = True
  c.model.remat = True
  c.schedule.warmup_epochs = 1.0
  c.schedule.warmup_start_lr = 0.01
  return c
