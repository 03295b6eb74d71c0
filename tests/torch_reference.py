"""PyTorch references for the equivalence tests and the benchmarks: the publishers' own models,
and a CIFAR ResNet.

torchvision's and timm's model code is imported as published (`import_torchvision`,
`import_timm`). The CIFAR ResNet of He et al. 2015 with option-A shortcuts, which torchvision and
timm do not have, is given here in its most used PyTorch form.
"""

import importlib
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn


def import_torchvision():
  """torchvision, imported without its compiled operators where they do not load.

  torchvision's `_C` extension (nms, roi_align, ...) is built against the CUDA build of torch and
  does not load beside the CPU build; its import then fails in `torchvision._meta_registrations`,
  which only registers fake kernels for those operators. An empty module in its place lets the
  pure-Python rest import unchanged; the ResNets use none of the compiled operators.
  """
  try:
    return importlib.import_module("torchvision")
  except RuntimeError as e:
    if "torchvision::" not in str(e):
      raise
  for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
    del sys.modules[name]
  sys.modules["torchvision._meta_registrations"] = types.ModuleType(
      "torchvision._meta_registrations")
  return importlib.import_module("torchvision")


def import_timm():
  """timm, which imports torchvision (see `import_torchvision`)."""
  import_torchvision()
  return importlib.import_module("timm")


def conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class OptionA(nn.Module):
  """Parameter-free shortcut: subsample by 2, zero-pad the channels on both sides."""

  def __init__(self, planes):
    super().__init__()
    self.pad = planes // 4

  def forward(self, x):
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBasicBlock(nn.Module):
  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = OptionA(planes) if stride != 1 or inplanes != planes else nn.Identity()

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
  """He et al. 2015, section 4.2: depth 6n+2, widths 16/32/64, option-A shortcuts."""

  def __init__(self, depth, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = conv3x3(3, 16)
    self.bn1 = nn.BatchNorm2d(16)
    inplanes, stages = 16, []
    for planes, stride in [(16, 1), (32, 2), (64, 2)]:
      blocks = []
      for i in range(n):
        blocks.append(CifarBasicBlock(inplanes, planes, stride if i == 0 else 1))
        inplanes = planes
      stages.append(nn.Sequential(*blocks))
    self.layer1, self.layer2, self.layer3 = stages
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(x.mean(dim=(2, 3)))


def randomise_batchnorm(model: nn.Module, input_shape, seed: int = 0) -> nn.Module:
  """Gives every BatchNorm random affine parameters and running statistics, in eval mode.

  The statistics are those of a random batch, perturbed, so that activations keep a realistic
  scale through the depth of the network (purely random ones make logits explode to 1e2-1e3, where
  float32 rounding alone exceeds any absolute tolerance).
  """
  g = torch.Generator().manual_seed(seed)
  batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for m in batchnorms:
      m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
      m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
      m.momentum = None  # running statistics = plain average over the calibration batch
    model.train()(torch.randn(input_shape, generator=g))
    for m in batchnorms:
      m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.1)
      m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
  return model.eval()
