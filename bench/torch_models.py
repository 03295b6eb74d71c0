"""PyTorch counterparts of the jresnet workloads, and their train and eval steps.

torchvision's resnet50/resnet18, imported by `tests.torch_reference` (which also works beside a
CPU build of torch that torchvision's compiled operators do not load with), and the CIFAR
ResNet-20 of `tests.torch_reference` (torchvision has none): the references the equivalence tests
hold jresnet's models against. `source` names what was built, so that a table never hides which
model was measured.
"""

import torch
import torch.nn.functional as F

from tests import torch_reference


def build(name: str, num_classes: int) -> tuple[torch.nn.Module, str]:
  """(model, source) for 'resnet18', 'resnet50' or 'resnet20' (CIFAR)."""
  if name == "resnet20":
    return torch_reference.CifarResNet(20, num_classes), "tests.torch_reference CifarResNet(20)"
  torchvision = torch_reference.import_torchvision()
  return getattr(torchvision.models, name)(num_classes=num_classes), f"torchvision.models.{name}"


def inputs(size: int, image_size: int, num_classes: int, device, channels_last: bool):
  x = torch.randn(size, 3, image_size, image_size, device=device)
  if channels_last:
    x = x.contiguous(memory_format=torch.channels_last)
  return x, torch.randint(0, num_classes, (size,), device=device)


def prepare(model: torch.nn.Module, device, channels_last: bool) -> torch.nn.Module:
  model = model.to(device)
  return model.to(memory_format=torch.channels_last) if channels_last else model


def train_step(model, x, y, bf16: bool):
  """step() doing forward, cross-entropy, backward and an SGD momentum update."""
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  model.train()

  def step():
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
      loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  return step


def eval_step(model, x, bf16: bool):
  model.eval()

  def step():
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
      model(x)

  return step


def sync_for(device):
  return torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
