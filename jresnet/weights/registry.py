"""Published ImageNet weights that jresnet's models load: where each file is, how to check it,
what it needs, how to evaluate it, and what its publisher reports.

torchvision publishes the first 8 hex digits of each file's sha256 in its name (what
`torch.hub` checks with `check_hash=True`). Where the full digest is on record (other projects
pin 7 of these files; each record agrees with the published prefix) it is checked, else the
prefix. timm's files on the Hugging Face hub carry no hash in timm's code: the digests here are
the hub's Git LFS ones; where none is recorded (`sha256=None`) the download is checked for
completeness only and its digest is logged, so that a user can pin it.
"""

import dataclasses
import importlib.resources
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jresnet.imagenet_statistics import IMAGENET_MEAN, IMAGENET_STD
from jresnet.models import ResNet, zoo
from jresnet.weights import download

# The 1,000 ImageNet-1k classes in the label order of torchvision's and timm's classifiers.
IMAGENET_CLASSES: tuple[str, ...] = tuple(
    importlib.resources.files(__package__).joinpath("imagenet_classes.txt").read_text()
    .splitlines())


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """Resize the shorter side to `resize`, centre-crop `crop` x `crop`, scale to [0, 1],
  normalise: torchvision's `ImageClassification` and timm's eval transform. `keep_aspect=False`
  resizes the whole image to `crop` x `crop` instead (jresnet's CIFAR-style presets)."""
  resize: int = 256
  crop: int = 224
  interpolation: str = "bilinear"   # bilinear | bicubic
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  keep_aspect: bool = True

  def __call__(self, image) -> jax.Array:
    """uint8 pixels -> float32 model input (antialiased resize): an (H, W, C) image gives
    (crop, crop, channels), a batch (N, H, W, C) of equal-sized images gives (N, crop, crop,
    channels). A grayscale image, (H, W) or (H, W, 1), is repeated to the channels of `mean`."""
    image = jnp.asarray(image)
    if image.ndim == 4:
      return jax.vmap(self)(image)
    if image.ndim == 2:
      image = image[..., None]
    channels = len(self.mean)
    if image.ndim != 3 or image.shape[-1] not in {1, channels}:
      raise ValueError(f"the eval transform takes (H, W), (H, W, {channels}) or (N, H, W, "
                       f"{channels}) images (or 1 channel), not shape {image.shape}")
    image = jnp.broadcast_to(image, (*image.shape[:2], channels)).astype(jnp.float32) / 255.0
    h, w = image.shape[:2]
    scale = self.resize / min(h, w)
    size = (max(self.resize, round(h * scale)), max(self.resize, round(w * scale)))
    if not self.keep_aspect:
      size = (self.crop, self.crop)
    method = {"bilinear": "linear", "bicubic": "cubic"}[self.interpolation]
    if size != (h, w):
      image = jax.image.resize(image, (*size, channels), method, antialias=True)
    top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
    image = image[top:top + self.crop, left:left + self.crop]
    return (image - jnp.asarray(self.mean)) / jnp.asarray(self.std)


@dataclasses.dataclass(frozen=True)
class Weights:
  name: str
  architecture: Callable[..., ResNet]   # a jresnet.zoo constructor
  url: str
  sha256: str | None                    # full hex digest, a published prefix of it, or None
  file_format: str                      # 'pth' | 'safetensors'
  license: str
  transform: EvalTransform
  top1: float                           # ImageNet-1k validation top-1 (%), as published
  source: str                           # where the publisher reports `top1`

  @property
  def file_name(self) -> str:
    """The cache file name: torchvision's own, or `<name>.safetensors` for hub files (which
    are all called model.safetensors)."""
    if self.file_format == "pth":
      return self.url.rsplit("/", 1)[-1]
    return f"{self.name}.{self.file_format}"

  def model(self, **overrides) -> ResNet:
    return self.architecture(**overrides)

  def download(self, cache: str | None = None, progress: bool = True) -> str:
    """The verified file's path in the cache, downloaded first if it is not there."""
    return download.fetch(self.url, self.file_name, self.sha256, cache, progress)


TORCHVISION = "https://download.pytorch.org/models/"
TV_LICENSE = "BSD-3-Clause (torchvision); trained on ImageNet-1k, non-commercial terms of ImageNet"
TV_SOURCE = "torchvision.models.resnet, *_Weights meta['_metrics']['ImageNet-1K']['acc@1']"
TV_V1 = EvalTransform(resize=256)
TV_V2 = EvalTransform(resize=232)


# Full digests of torchvision files, as pinned in other projects' download scripts.
TV_FULL_SHA256 = {
    "resnet18-f37072fd.pth": "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
    "resnet34-b627a593.pth": "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f",
    "resnet50-0676ba61.pth": "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
    "resnet50-11ad3fa6.pth": "11ad3fa62ca79e40addfd354a8ec4b7c75143b3038b8d2a807fbc68deab379ca",
    "resnet101-63fe2227.pth": "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a",
    "resnet101-cd907fc2.pth": "cd907fc2a0de2292b2ba2b27d2216bc672d84632d1cf20058d01c0c03b5e020e",
    "resnet152-394f9c45.pth": "394f9c45966e3651a89bbb78a48410a6755854ce4a5ab64927cf1c7247f85e58",
    "wide_resnet50_2-95faca4d.pth":
        "95faca4d11227dddf8633dbb5ff6c8a9003c1aa5b8945c73834b8007b10950b8",
}


def _torchvision(name, architecture, file, top1, transform):
  prefix = file.rsplit("-", 1)[1].split(".")[0]
  return Weights(name, architecture, TORCHVISION + file, TV_FULL_SHA256.get(file, prefix),
                 "pth", TV_LICENSE, transform, top1, TV_SOURCE)


_ENTRIES = [
    _torchvision("resnet18.tv_in1k", zoo.ResNet18, "resnet18-f37072fd.pth", 69.758, TV_V1),
    _torchvision("resnet34.tv_in1k", zoo.ResNet34, "resnet34-b627a593.pth", 73.314, TV_V1),
    _torchvision("resnet50.tv_in1k", zoo.ResNet50, "resnet50-0676ba61.pth", 76.130, TV_V1),
    _torchvision("resnet50.tv2_in1k", zoo.ResNet50, "resnet50-11ad3fa6.pth", 80.858, TV_V2),
    _torchvision("resnet101.tv_in1k", zoo.ResNet101, "resnet101-63fe2227.pth", 77.374, TV_V1),
    _torchvision("resnet101.tv2_in1k", zoo.ResNet101, "resnet101-cd907fc2.pth", 81.886, TV_V2),
    _torchvision("resnet152.tv_in1k", zoo.ResNet152, "resnet152-394f9c45.pth", 78.312, TV_V1),
    _torchvision("resnet152.tv2_in1k", zoo.ResNet152, "resnet152-f82ba261.pth", 82.284, TV_V2),
    _torchvision("resnext50_32x4d.tv_in1k", zoo.ResNeXt50_32x4d, "resnext50_32x4d-7cdf4587.pth",
                 77.618, TV_V1),
    _torchvision("resnext50_32x4d.tv2_in1k", zoo.ResNeXt50_32x4d,
                 "resnext50_32x4d-1a0047aa.pth", 81.198, TV_V2),
    _torchvision("resnext101_32x8d.tv_in1k", zoo.ResNeXt101_32x8d,
                 "resnext101_32x8d-8ba56ff5.pth", 79.312, TV_V1),
    _torchvision("resnext101_32x8d.tv2_in1k", zoo.ResNeXt101_32x8d,
                 "resnext101_32x8d-110c445d.pth", 82.834, TV_V2),
    _torchvision("resnext101_64x4d.tv_in1k", zoo.ResNeXt101_64x4d,
                 "resnext101_64x4d-173b62eb.pth", 83.246, TV_V2),
    _torchvision("wide_resnet50_2.tv_in1k", zoo.WideResNet50_2, "wide_resnet50_2-95faca4d.pth",
                 78.468, TV_V1),
    _torchvision("wide_resnet50_2.tv2_in1k", zoo.WideResNet50_2, "wide_resnet50_2-9ba9bcbe.pth",
                 81.602, TV_V2),
    _torchvision("wide_resnet101_2.tv_in1k", zoo.WideResNet101_2,
                 "wide_resnet101_2-32ee1156.pth", 78.848, TV_V1),
    _torchvision("wide_resnet101_2.tv2_in1k", zoo.WideResNet101_2,
                 "wide_resnet101_2-d733dc28.pth", 82.510, TV_V2),
]

TIMM_LICENSE = "Apache-2.0 (timm's model cards); trained on ImageNet-1k"
TIMM_SOURCE = "timm results/results-imagenet.csv, the row at the eval transform's crop"


def _timm(name, architecture, sha256, top1, resize, crop):
  """A timm weight file on the Hugging Face hub, evaluated at timm's test size (bicubic)."""
  return Weights(name, architecture, f"https://huggingface.co/timm/{name}/resolve/main/"
                 "model.safetensors", sha256, "safetensors", TIMM_LICENSE,
                 EvalTransform(resize, crop, "bicubic"), top1, TIMM_SOURCE)


# sha256: the Git LFS digests shown on the hub's file pages; None where none was at hand.
_ENTRIES += [
    _timm("resnet18.a1_in1k", zoo.ResNet18,
          "80c49dee3da4822c009c5a7fe591e9223c5a2cfcf95a4067ca4dfb5a7b89c612", 73.164, 288, 288),
    _timm("resnet34.a1_in1k", zoo.ResNet34,
          "829a220f9529d2b1ffdc8719d3273463001e0daf411eaf1916865d9db62c0ed2", 77.930, 288, 288),
    _timm("resnet50.a1_in1k", zoo.ResNet50,
          "773525d5821de224f8f30c33377b7a795d7863e08522698200d3217d3f2a41bb", 81.240, 288, 288),
    _timm("resnet26d.bt_in1k", zoo.ResNet26D,
          "43fa069f9736cd25599153d7dc7b387a9339193676d36e2c6d88d08631f4ed62", 77.422, 303, 288),
    _timm("resnet50d.ra2_in1k", zoo.ResNet50D, None, 81.354, 303, 288),
    _timm("resnet101d.ra2_in1k", zoo.ResNet101D,
          "c2192596da2e8d652cbf0465b8694704247b524efb68ed194504af453830709c", 83.020, 320, 320),
    _timm("resnet152d.ra2_in1k", zoo.ResNet152D, None, 83.684, 320, 320),
]

REGISTRY: dict[str, Weights] = {w.name: w for w in _ENTRIES}


def get(name: str) -> Weights:
  if name not in REGISTRY:
    raise KeyError(f"no weights named {name!r}; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]
