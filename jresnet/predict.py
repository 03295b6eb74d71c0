"""Classify image files with an export or published weights: the top-5 classes and their
probabilities per image.

    python -m jresnet.predict runs/pets/model.msgpack cat.jpg dog.png
    python -m jresnet.predict runs/pets/model.msgpack ~/photos/      # every image below it
    python -m jresnet.predict resnet50.tv2_in1k cat.jpg              # ImageNet-1k class names

Images are decoded with Pillow (`pip install 'jresnet[predict]'`) and prepared with the eval
transform the export (or the publisher) records; no TensorFlow. A file that does not decode is
reported on stderr and skipped; the others are classified, and the command then exits 1, listing
the skipped files.
"""

import argparse
import os
import sys

import numpy as np

from jresnet import export, weights
from jresnet.data.errors import PILLOW_ERRORS, UndecodableImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
BATCH = 32


def image_files(paths: list[str]) -> list[str]:
  """The files given, and the image files under each folder given (sorted)."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                     for name in names if name.lower().endswith(IMAGE_SUFFIXES))
      if not found:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {path}")
      files += found
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise FileNotFoundError(f"no file or folder at {path}")
  return files


def read_image(path: str, channels: int) -> np.ndarray:
  """uint8 (H, W, channels) pixels of an image file; ValueError naming a file that does not
  decode (not an image, truncated, garbled)."""
  try:
    from PIL import Image  # noqa: PLC0415 (only the command needs it)
  except ImportError as e:
    raise ImportError("decoding images needs Pillow: pip install 'jresnet[predict]'") from e
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
  except PILLOW_ERRORS as e:
    raise ValueError(f"{path} does not decode as an image ({type(e).__name__}: {e})") from e
  return array[..., None] if channels == 1 else array


def load(name_or_path: str) -> export.Exported:
  """An export file, or a `jresnet.weights` entry (downloaded once) with its eval transform and,
  for its own ImageNet-1k classifier, the class names."""
  if name_or_path in weights.REGISTRY:
    net = weights.pretrained(name_or_path)
    return export.Exported(net.model, net.variables, net.class_names, net.transform)
  return export.load(name_or_path)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m jresnet.predict",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("export", help="a model.msgpack written by train.py or jresnet.export.save, "
                      "or a jresnet.weights name (e.g. resnet50.tv2_in1k)")
  parser.add_argument("images", nargs="+", help="image files, or folders of them")
  parser.add_argument("--top", type=int, default=5, help="classes shown per image (5)")
  args = parser.parse_args(argv)
  exported = load(args.export)
  files = image_files(args.images)
  undecodable = []
  for start in range(0, len(files), BATCH):
    batch, images = [], []
    for path in files[start:start + BATCH]:
      try:
        images.append(read_image(path, exported.model.input_channels))
        batch.append(path)
      except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        undecodable.append(path)
    if images:
      for path, best in zip(batch, exported.top_k(images, args.top)):
        print(f"{path}: " + ", ".join(f"{name} {p:.4f}" for name, p in best))
  if undecodable:
    raise UndecodableImageError(undecodable)


if __name__ == "__main__":
  try:
    main()
  except (FileNotFoundError, export.ExportError, ImportError, UndecodableImageError,
          weights.WeightsUnavailableError, weights.CorruptWeightsError,
          weights.UnreadableWeightsError) as e:
    sys.exit(f"error: {e}")
