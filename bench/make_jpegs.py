"""Writes ImageNet-sized JPEGs for input-pipeline benchmarks: photos from a small image folder
(e.g. the CIFAR-10 JPEGs), resized to ImageNet's typical 500x375 and re-encoded, in the same
`<out>/train/<class>/` layout, so that decoding and random-resized cropping work on ImageNet-sized
pixels. Smooth upsampled photos compress better than ImageNet's (~20 KB against ~110 KB a file),
so entropy decoding is cheaper here: rates measured on them are an upper bound.

    python -m bench.make_jpegs --source /work/shared/datasets/cifar10_jpeg/train \
        --out /tmp/imagenet_like --per-class 200
"""

import argparse
import os

import tensorflow as tf


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source", required=True, help="<root>/<split> of an image folder")
  parser.add_argument("--out", required=True)
  parser.add_argument("--per-class", type=int, default=200)
  parser.add_argument("--height", type=int, default=375)
  parser.add_argument("--width", type=int, default=500)
  parser.add_argument("--quality", type=int, default=90)
  args = parser.parse_args(argv)
  for cls in sorted(os.listdir(args.source)):
    os.makedirs(os.path.join(args.out, "train", cls), exist_ok=True)
    for name in sorted(os.listdir(os.path.join(args.source, cls)))[:args.per_class]:
      image = tf.io.decode_image(tf.io.read_file(os.path.join(args.source, cls, name)), 3,
                                 expand_animations=False)
      big = tf.image.resize(image, (args.height, args.width), "bicubic")
      big = tf.cast(tf.clip_by_value(tf.round(big), 0, 255), tf.uint8)
      tf.io.write_file(os.path.join(args.out, "train", cls, name),
                       tf.io.encode_jpeg(big, quality=args.quality))


if __name__ == "__main__":
  main()
