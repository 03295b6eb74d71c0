"""What a PyTorch DataLoader worker does to an ImageNet training JPEG, the reference of
`bench.jpeg_input`: PIL decode, torchvision's RandomResizedCrop(224) (antialiased bilinear),
RandomHorizontalFlip, ToTensor, Normalize."""

import torch
from PIL import Image

from bench import torch_reference
from jresnet.data import presets


class JpegFiles(torch.utils.data.Dataset):

  def __init__(self, files: list[str], uint8: bool = False):
    """uint8: PILToTensor instead of ToTensor + Normalize (left to the GPU, as jresnet does)."""
    transforms = torch_reference.import_torchvision().transforms
    self.files = files
    to_tensor = ([transforms.PILToTensor()] if uint8 else
                 [transforms.ToTensor(), transforms.Normalize(presets.IMAGENET_MEAN,
                                                              presets.IMAGENET_STD)])
    self.transform = transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), *to_tensor])

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> torch.Tensor:
    with Image.open(self.files[i]) as image:
      return self.transform(image.convert("RGB"))


def loader(files: list[str], batch_size: int, workers: int,
           uint8: bool = False) -> torch.utils.data.DataLoader:
  """workers=0: in this process, one thread (torch.set_num_threads(1) by the caller)."""
  return torch.utils.data.DataLoader(JpegFiles(files, uint8), batch_size=batch_size, shuffle=True,
                                     num_workers=workers, persistent_workers=workers > 0)
