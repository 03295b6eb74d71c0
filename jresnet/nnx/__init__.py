"""The jresnet ResNets in Flax NNX, trainable, with weights shared with the linen models.

    import jresnet.nnx
    model = jresnet.nnx.ResNet50(rngs=nnx.Rngs(0))            # = ResNet(depth=50, rngs=...)
    model = jresnet.nnx.from_linen(net.variables, net.model)  # e.g. net = jresnet.pretrained(...)
    variables = jresnet.nnx.to_linen(model)

`jresnet.nnx.training` has the train steps (`nnx.jit` with `nnx.Optimizer`, and pure `jax.jit`).
Nothing here imports TensorFlow.
"""

from jresnet.nnx import training
from jresnet.nnx.blocks import (
                                BasicBlock,
                                BatchNorm,
                                BottleneckBlock,
                                PreActBasicBlock,
                                PreActBottleneckBlock,
                                Shortcut,
)
from jresnet.nnx.convert import abstract_model, from_linen, from_torch, to_linen, to_torch
from jresnet.nnx.resnet import ResNet, Stage
from jresnet.nnx.stems import CifarStem, DeepStem, ImageNetStem
from jresnet.nnx.zoo import *  # noqa: F401,F403 (the named constructors)
