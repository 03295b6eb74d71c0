"""Named members of the family: `ResNet50(num_classes=10)` is `ResNet(depth=50, num_classes=10)`.

Any keyword overrides the named architecture's defaults (dtype, scan_blocks, input_channels, ...).
Parameter counts in the docstrings are at 1000 classes (ImageNet) or 10 classes (CIFAR).
`MODELS` holds them by timm's and torchvision's names (`resnet50`, `resnext50_32x4d`,
`wide_resnet50_2`, `resnet50d`; `cifar_resnet20`, `preact_resnet18`, ... for the others), which
`jresnet.create_model` and `jresnet.list_models` use.
"""

from collections.abc import Callable

from jresnet.models.resnet import ResNet

MODELS: dict[str, Callable[..., ResNet]] = {}


def registry_name(constructor_name: str) -> str:
  """`ResNeXt50_32x4d` -> `resnext50_32x4d`, `WideResNet50_2` -> `wide_resnet50_2`,
  `CifarPreActResNet110` -> `cifar_preact_resnet110`."""
  name = constructor_name
  for prefix, snake in (("Cifar", "cifar_"), ("PreAct", "preact_"), ("Wide", "wide_")):
    name = name.replace(prefix, snake)
  return name.lower()


def _named(name: str, doc: str, **architecture):
  def make(**overrides) -> ResNet:
    return ResNet(**{**architecture, **overrides})

  make.__name__ = make.__qualname__ = name
  make.__doc__ = doc
  MODELS[registry_name(name)] = make
  return make


ResNet18 = _named("ResNet18", "ResNet-18, 11,689,512 parameters.", depth=18)
ResNet34 = _named("ResNet34", "ResNet-34, 21,797,672 parameters.", depth=34)
ResNet50 = _named("ResNet50", "ResNet-50 v1.5 (torchvision), 25,557,032 parameters.", depth=50)
ResNet101 = _named("ResNet101", "ResNet-101 v1.5, 44,549,160 parameters.", depth=101)
ResNet152 = _named("ResNet152", "ResNet-152 v1.5, 60,192,808 parameters.", depth=152)
ResNet200 = _named("ResNet200", "ResNet-200 v1.5, 64,673,832 parameters.", depth=200)
ResNet26D = _named("ResNet26D", "ResNet-26-D (timm resnet26d): bottlenecks (2, 2, 2, 2), deep "
                   "stem, average-pool shortcuts.", depth=26, stem="deep", shortcut="D")
ResNet50D = _named("ResNet50D", "ResNet-50-D (He et al. 2019; timm resnet50d): deep stem and "
                   "average-pool shortcuts.", depth=50, stem="deep", shortcut="D")
ResNet101D = _named("ResNet101D", "ResNet-101-D (timm resnet101d).", depth=101, stem="deep",
                    shortcut="D")
ResNet152D = _named("ResNet152D", "ResNet-152-D (timm resnet152d).", depth=152, stem="deep",
                    shortcut="D")
ResNeXt50_32x4d = _named("ResNeXt50_32x4d", "ResNeXt-50 32x4d, 25,028,904 parameters.",
                         depth=50, groups=32, width_per_group=4)
ResNeXt101_32x8d = _named("ResNeXt101_32x8d", "ResNeXt-101 32x8d, 88,791,336 parameters.",
                          depth=101, groups=32, width_per_group=8)
ResNeXt101_64x4d = _named("ResNeXt101_64x4d", "ResNeXt-101 64x4d, 83,455,272 parameters.",
                          depth=101, groups=64, width_per_group=4)
WideResNet50_2 = _named("WideResNet50_2", "Wide ResNet-50-2, 68,883,240 parameters.",
                        depth=50, width_per_group=128)
WideResNet101_2 = _named("WideResNet101_2", "Wide ResNet-101-2, 126,886,696 parameters.",
                         depth=101, width_per_group=128)
PreActResNet18 = _named("PreActResNet18", "Pre-activation ResNet-18 (v2).", depth=18, version="v2")
PreActResNet50 = _named("PreActResNet50", "Pre-activation ResNet-50 (v2).", depth=50, version="v2")

CifarResNet20 = _named("CifarResNet20", "CIFAR ResNet-20 (option A), 0.27M parameters.",
                       depth=20, family="cifar", num_classes=10)
CifarResNet32 = _named("CifarResNet32", "CIFAR ResNet-32 (option A), 0.46M parameters.",
                       depth=32, family="cifar", num_classes=10)
CifarResNet44 = _named("CifarResNet44", "CIFAR ResNet-44 (option A), 0.66M parameters.",
                       depth=44, family="cifar", num_classes=10)
CifarResNet56 = _named("CifarResNet56", "CIFAR ResNet-56 (option A), 0.85M parameters.",
                       depth=56, family="cifar", num_classes=10)
CifarResNet110 = _named("CifarResNet110", "CIFAR ResNet-110 (option A), 1.7M parameters.",
                        depth=110, family="cifar", num_classes=10)
CifarResNet1202 = _named("CifarResNet1202", "CIFAR ResNet-1202 (option A), 19.4M parameters.",
                         depth=1202, family="cifar", num_classes=10)
CifarPreActResNet110 = _named("CifarPreActResNet110", "Pre-activation CIFAR ResNet-110, basic "
                              "blocks, 1.7M parameters.", depth=110, family="cifar",
                              version="v2", block="basic", num_classes=10)
CifarPreActResNet164 = _named("CifarPreActResNet164", "Pre-activation CIFAR ResNet-164, "
                              "bottlenecks, 1.7M parameters.", depth=164, family="cifar",
                              version="v2", num_classes=10)
CifarPreActResNet1001 = _named("CifarPreActResNet1001", "Pre-activation CIFAR ResNet-1001, "
                               "bottlenecks, 10.2M parameters.", depth=1001, family="cifar",
                               version="v2", num_classes=10)

__all__ = [make.__name__ for make in MODELS.values()]  # what `from zoo import *` exports
