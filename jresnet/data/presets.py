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
"""

import dataclasses
import re
from collections.abc import Callable

import tensorflow as tf

from jresnet.data import transforms as T
from jresnet.data.sources import Metadata

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3759,)  # of scikit-learn's digits, pixels 0..16 -> [0, 1]

CENTER_CROP_FRACTION = 0.875  # imagenet eval: shorter side to size / 0.875, central size crop

_CIFAR_LIKE = {"cifar10", "cifar100", "cifar10_1", "cifar10_corrupted", "svhn_cropped", "cinic10"}
_MNIST_LIKE = {"mnist", "fashion_mnist", "emnist", "kmnist", "mnist_corrupted"}
_IMAGENET_LIKE = {"imagenet2012", "imagenet2012_subset", "imagenet2012_real", "imagenette",
                  "imagewang", "imagenet_v2", "imagenet_a", "imagenet_r"}


def _split_seed(seed, n):
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _resize_only(image, size):
  return T.resize(image, size)


def _no_augmentation(image, size, seed):
  del seed
  return T.resize(image, size)


def _cifar_train(image, size, seed):
  crop_seed, flip_seed = _split_seed(seed, 2)
  image = T.pad_and_crop(T.resize(image, size), max(size) // 8, crop_seed)
  return T.flip(image, flip_seed)


def _digits_train(image, size, seed):
  return T.pad_and_crop(T.resize(image, size), max(size) // 8, seed)


def _imagenet_train(image, size, seed):
  crop_seed, flip_seed = _split_seed(seed, 2)
  return T.flip(T.random_resized_crop(image, size, crop_seed), flip_seed)


@dataclasses.dataclass(frozen=True)
class _Recipe:
  train: Callable  # (uint8 image, (H, W), seed) -> float32 image in [0, 255]
  eval: Callable  # (uint8 image, (H, W)) -> float32 image in [0, 255]
  image_size: int | None  # None: keep the stored size
  mean: tuple
  std: tuple


_RECIPES = {
    "cifar": _Recipe(_cifar_train, _resize_only, 32, CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": _Recipe(_imagenet_train,
                        lambda image, size: T.center_crop(image, size, CENTER_CROP_FRACTION), 224,
                        IMAGENET_MEAN, IMAGENET_STD),
    "mnist": _Recipe(_no_augmentation, _resize_only, None, MNIST_MEAN, MNIST_STD),
    "digits": _Recipe(_digits_train, _resize_only, 32, DIGITS_MEAN, DIGITS_STD),
    "none": _Recipe(_no_augmentation, _resize_only, None, (0.0,), (1.0,)),
}
NAMES = ("auto", *_RECIPES)


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
  """A resolved recipe: its size, statistics, and per-example train/eval functions."""
  name: str
  image_shape: tuple[int, int, int]  # (H, W, C) of the images fed to the model
  mean: tuple
  std: tuple
  recipe: _Recipe

  def train(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """uint8 (h, w, C) -> float32 image_shape, randomly augmented by the stateless `seed`."""
    out = self.recipe.train(image, self.image_shape[:2], seed)
    return tf.ensure_shape(T.normalize(out, self.mean, self.std), self.image_shape)

  def eval(self, image: tf.Tensor) -> tf.Tensor:
    """uint8 (h, w, C) -> float32 image_shape, deterministically."""
    out = self.recipe.eval(image, self.image_shape[:2])
    return tf.ensure_shape(T.normalize(out, self.mean, self.std), self.image_shape)


def resolve(cfg, meta: Metadata) -> Preset:
  """The preset config.data asks for, with image_size/mean/std filled in for this dataset."""
  if cfg.preprocess not in NAMES:
    raise ValueError(f"Unknown preprocess preset {cfg.preprocess!r}; choose one of {list(NAMES)}.")
  name = auto(meta) if cfg.preprocess == "auto" else cfg.preprocess
  recipe = _RECIPES[name]
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
  return Preset(name, (*hw, c), mean, std, recipe)
