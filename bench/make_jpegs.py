"""Writes ImageNet-like JPEGs for input-pipeline benchmarks, made from real photographs: random
crops of the photographs scikit-learn ships, rescaled to ImageNet's typical 500x375 (a quarter of
them portrait, 375x500), with random colour and brightness and mild sensor-like noise, encoded at
quality 95, in an image folder `<out>/train/<class>/<n>.jpg`.

    python -m bench.make_jpegs --out /tmp/imagenet_like --per-class 100

ImageNet's training JPEGs average ~110 KB at about 400x350 to 500x375; these average about
85 KB (30-125 KB). Entropy decoding, the bulk of a JPEG decode, scales with the file's bytes,
so rates on smooth, upsampled small images (CIFAR-10 at 500x375 is ~20 KB a file) overstate
what a real dataset decodes.
"""

import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images


def imagenet_like(photos: list[np.ndarray], rng: np.random.Generator, size=(375, 500)):
  """One image: a random crop of a random photograph, resized to `size` (H, W; transposed for a
  portrait image a quarter of the time), its colour, brightness and noise perturbed."""
  photo = photos[rng.integers(len(photos))]
  h, w = size if rng.random() < 0.75 else size[::-1]
  ph, pw = photo.shape[:2]
  scale = rng.uniform(0.55, 1.0) * min(ph / h, pw / w)  # the crop, in photograph pixels
  ch, cw = int(h * scale), int(w * scale)
  top, left = rng.integers(ph - ch + 1), rng.integers(pw - cw + 1)
  crop = Image.fromarray(photo[top:top + ch, left:left + cw])
  if rng.random() < 0.5:
    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  pixels = np.asarray(crop.resize((w, h), Image.Resampling.BICUBIC), np.float32)
  pixels = pixels * rng.uniform(0.75, 1.25, 3) + rng.uniform(-20, 20)  # colour, brightness
  pixels += rng.normal(0, rng.uniform(2, 5), pixels.shape)  # sensor-like noise
  return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--per-class", type=int, default=100)
  parser.add_argument("--quality", type=int, default=95)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  photos = load_sample_images().images
  rng = np.random.default_rng(args.seed)
  sizes = []
  for c in range(args.classes):
    directory = os.path.join(args.out, "train", f"class{c:02d}")
    os.makedirs(directory, exist_ok=True)
    for n in range(args.per_class):
      path = os.path.join(directory, f"{n:04d}.jpg")
      imagenet_like(photos, rng).save(path, quality=args.quality)
      sizes.append(os.path.getsize(path))
  print(f"wrote {len(sizes)} JPEGs to {args.out}/train: mean {np.mean(sizes) / 1e3:.1f} KB "
        f"(min {min(sizes) / 1e3:.1f}, max {max(sizes) / 1e3:.1f}), quality {args.quality}")


if __name__ == "__main__":
  main()
