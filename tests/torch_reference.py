"""PyTorch reference ResNets for the equivalence tests.

torchvision's ResNet (`torchvision/models/resnet.py`), restated here because torchvision's compiled
operators do not load beside the local CPU build of torch, and the CIFAR ResNet of He et al. 2015
with option-A shortcuts in its most used PyTorch form. Names and init follow the originals, so the
parameter counts equal torchvision's published ones (checked in test_interop.py).
"""

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(cin, cout, stride=1, groups=1, dilation=1):
  return nn.Conv2d(cin, cout, 3, stride, padding=dilation, groups=groups, bias=False,
                   dilation=dilation)


def conv1x1(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
               dilation=1):
    super().__init__()
    if dilation > 1:
      raise NotImplementedError("Dilation > 1 not supported in BasicBlock")  # as torchvision
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64,
               dilation=1):
    super().__init__()
    width = int(planes * (base_width / 64.0)) * groups
    self.conv1 = conv1x1(inplanes, width)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = conv3x3(width, width, stride, groups, dilation)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = conv1x1(width, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):
  """torchvision.models.resnet.ResNet; `deep_stem` and `avg_down` add timm's ResNet-D options
  (timm/models/resnet.py: stem_type='deep', stem_width=32; avg_down=True)."""

  def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64,
               replace_stride_with_dilation=(False, False, False), deep_stem=False,
               avg_down=False):
    super().__init__()
    self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
    self.dilation, self.avg_down = 1, avg_down
    if deep_stem:
      self.conv1 = nn.Sequential(
          nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
          nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
          nn.Conv2d(32, 64, 3, 1, 1, bias=False))
    else:
      self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    dilate = replace_stride_with_dilation
    self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=dilate[0])
    self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[1])
    self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[2])
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
    previous_dilation = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      if self.avg_down:  # timm: an identity in place of the pool where nothing is strided
        pool = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                if stride != 1 else nn.Identity())
        downsample = nn.Sequential(pool, conv1x1(self.inplanes, planes * block.expansion),
                                   nn.BatchNorm2d(planes * block.expansion))
      else:
        downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                   nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                    previous_dilation)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                     dilation=self.dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def features(self, x):
    """The stem's and every stage's output, as timm's `features_only` returns them."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    out = {"stem": x}
    for i, layer in enumerate([self.layer1, self.layer2, self.layer3, self.layer4]):
      x = out[f"layer{i + 1}"] = layer(x)
    return out

  def forward(self, x):
    x = self.features(x)["layer4"]
    return self.fc(torch.flatten(self.avgpool(x), 1))


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
