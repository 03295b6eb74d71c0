"""The imagenet preset as the host stream ran it before window decoding, the reference of
`bench.jpeg_input`: decode the whole JPEG, then the Inception crop (train) or the shorter side to
256 and the central 224 (eval), antialiased resizes, float32 normalised on the host."""

import tensorflow as tf

from jresnet.data import presets, transforms

MEAN = tf.constant(presets.IMAGENET_MEAN) * 255
STD = tf.constant(presets.IMAGENET_STD) * 255


def train_image(encoded: tf.Tensor, seed: tf.Tensor, size=(224, 224)) -> tf.Tensor:
  image = tf.io.decode_jpeg(encoded, channels=3)
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed,
      min_object_covered=0.0, aspect_ratio_range=transforms.INCEPTION_ASPECT,
      area_range=transforms.INCEPTION_AREA, max_attempts=10, use_image_if_no_bounding_boxes=True)
  out = tf.image.resize(tf.slice(image, begin, box), size, antialias=True)
  out = tf.image.stateless_random_flip_left_right(out, flip_seed)
  return (out - MEAN) / STD


def eval_image(encoded: tf.Tensor, size=(224, 224)) -> tf.Tensor:
  image = tf.io.decode_jpeg(encoded, channels=3)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = (max(size) / presets.CENTER_CROP_FRACTION) / tf.reduce_min(hw)
  resized = tf.cast(tf.round(hw * scale), tf.int32)
  image = tf.image.resize(image, resized, antialias=True)
  top, left = tf.unstack((resized - tf.constant(size)) // 2)
  out = tf.image.crop_to_bounding_box(image, top, left, size[0], size[1])
  return (out - MEAN) / STD
