"""Preprocessing recipes: what a train and an eval example go through before the model.

  cifar     train: pad 4 (zeros) + random 32 crop + horizontal flip; eval: as is.
  imagenet  train: Inception random-resized crop (area 8-100%, aspect 3/4-4/3) to 224 + flip;
            eval: shorter side to 256, central 224 crop (crop fraction 0.875 of image_size).
  mnist     train = eval: resize to image_size if set (the d2l recipe uses 96); no augmentation.
  digits    upsample 8x8 to image_size (32); train adds a random translation (pad 4 + crop), no
            flips since digits are not mirror-invariant.
  none      scale to [0, 1], resize only if image_size is set.
Each ends in per-channel (x - mean) / std; mean and std are of pixels in [0, 1]. With a
different image_size, cifar/digits/mnist resize first and pad by image_size // 8.

A `Preset` only describes the recipe (no TensorFlow here): the host pipeline runs it with tf.data
(`transforms.train_image` / `eval_image`), the device path with JAX (`device_transforms`).
"""

import dataclasses
import re

from jresnet.data.sources.base import Metadata
from jresnet.imagenet_statistics import IMAGENET_MEAN, IMAGENET_STD

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3759,)  # of scikit-learn's digits, pixels 0..16 -> [0, 1]

CENTER_CROP_FRACTION = 0.875  # imagenet eval: shorter side to size / 0.875, central size crop
INCEPTION_AREA, INCEPTION_ASPECT = (0.08, 1.0), (3 / 4, 4 / 3)  # imagenet train: the box's ranges

_CIFAR_LIKE = {"cifar10", "cifar100", "cifar10_1", "cifar10_corrupted", "svhn_cropped", "cinic10"}
_MNIST_LIKE = {"mnist", "fashion_mnist", "emnist", "kmnist", "mnist_corrupted"}
_IMAGENET_LIKE = {"imagenet2012", "imagenet2012_subset", "imagenet2012_real", "imagenette",
                  "imagewang", "imagenet_v2", "imagenet_a", "imagenet_r"}

PAD, RANDOM_RESIZED = "pad", "random_resized"  # train crops
CENTER = "center"                              # eval crop


@dataclasses.dataclass(frozen=True)
class _PresetSpec:
  train_crop: str | None  # PAD: translate by up to size // 8; RANDOM_RESIZED: Inception crop
  flip: bool              # random horizontal flips in training
  eval_crop: str | None   # CENTER: shorter side to size / 0.875, central crop; None: resize
  image_size: int | None  # None: keep the stored size
  mean: tuple
  std: tuple


_PRESET_SPECS = {
    "cifar": _PresetSpec(PAD, True, None, 32, CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": _PresetSpec(RANDOM_RESIZED, True, CENTER, 224, IMAGENET_MEAN, IMAGENET_STD),
    "mnist": _PresetSpec(None, False, None, None, MNIST_MEAN, MNIST_STD),
    "digits": _PresetSpec(PAD, False, None, 32, DIGITS_MEAN, DIGITS_STD),
    "none": _PresetSpec(None, False, None, None, (0.0,), (1.0,)),
}
NAMES = ("auto", *_PRESET_SPECS)


def auto(meta: Metadata) -> str:
  """The preset a dataset gets by default: by TFDS name, else by image size."""
  name = re.split("[/:]", meta.name)[0]
  if name == "digits":
    return "digits"
  if name in _CIFAR_LIKE:
    return "cifar"
  if name in _MNIST_LIKE:
    return "mnist"
  if name in _IMAGENET_LIKE:
    return "imagenet"
  h, w, c = meta.image_shape
  if h is not None and w is not None and max(h, w) <= 64:
    return "cifar" if c == 3 else "mnist"
  return "imagenet"


@dataclasses.dataclass(frozen=True)
class Preset:
  """A resolved recipe: the images fed to the model, their statistics, what training does."""
  name: str
  image_shape: tuple[int, int, int]  # (H, W, C) of the images fed to the model
  mean: tuple
  std: tuple
  train_crop: str | None
  flip: bool
  eval_crop: str | None

  @property
  def channels(self) -> int:
    return self.image_shape[2]

  @property
  def pad(self) -> int:
    """Pixels of the PAD translation."""
    return max(self.image_shape[:2]) // 8


def resolve(cfg, meta: Metadata) -> Preset:
  """The preset config.data asks for, with image_size/mean/std filled in for this dataset."""
  if cfg.preprocess not in NAMES:
    raise ValueError(f"Unknown preprocess preset {cfg.preprocess!r}; choose one of {list(NAMES)}.")
  name = auto(meta) if cfg.preprocess == "auto" else cfg.preprocess
  recipe = _PRESET_SPECS[name]
  h, w, c = meta.image_shape
  size = cfg.image_size or recipe.image_size
  if size:
    hw = (size, size)
  elif h is not None and w is not None:
    hw = (h, w)
  else:
    raise ValueError(f"{meta.name} images differ in size: set config.data.image_size for the "
                     f"{name!r} preset.")
  mean = tuple(cfg.mean or recipe.mean)
  std = tuple(cfg.std or recipe.std)
  if len(mean) not in (1, c) or len(std) not in (1, c):
    raise ValueError(f"mean {mean} and std {std} must have 1 or {c} (channels) values.")
  return Preset(name, (*hw, c), mean, std, recipe.train_crop, recipe.flip, recipe.eval_crop)
