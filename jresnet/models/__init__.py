"""Flax ResNets. Pure model code: nothing here imports data or training."""

from jresnet.models.architecture import IMAGENET_DEPTHS, Architecture
from jresnet.models.blocks import (
                                   BasicBlock,
                                   BottleneckBlock,
                                   PreActBasicBlock,
                                   PreActBottleneckBlock,
                                   Shortcut,
)
from jresnet.models.head import reset_classifier
from jresnet.models.initialisation import init_variables
from jresnet.models.layout import to_scanned, to_unrolled
from jresnet.models.resnet import ResNet, Stage
from jresnet.models.stems import CifarStem, DeepStem, ImageNetStem
from jresnet.models.zoo import *  # noqa: F401,F403 (the named constructors)
