"""The data section of a training config (`config.data`): what to read and how to prepare it."""

from ml_collections import config_dict


def default_config() -> config_dict.ConfigDict:
  """CIFAR-10 from TFDS with its usual recipe; every None means 'derived from the dataset'."""
  c = config_dict.ConfigDict()
  # Where examples come from: 'tfds' | 'folder' | 'digits' | 'synthetic'.
  c.source = "tfds"
  # TFDS dataset name (source='tfds'): cifar10, cifar100, imagenet2012, imagenette, mnist, ...
  c.name = "cifar10"
  # Image folder root (source='folder'), laid out as <path>/<split>/<class>/<image>.{jpg,png}.
  c.path = config_dict.placeholder(str)
  # TFDS data directory; None = TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.data_dir = config_dict.placeholder(str)
  # Manually downloaded archives (imagenet2012's ILSVRC2012_img_*.tar); used when download=True.
  c.manual_dir = config_dict.placeholder(str)
  # Prepare a missing TFDS dataset (network, or manual_dir). False: fail fast, no network.
  c.download = False
  # Split strings in TFDS syntax, also for folders/digits/synthetic: 'train[:90%]', 'train[45000:]'.
  c.train_split = "train"
  c.eval_split = "test"
  # 'auto' | 'cifar' | 'imagenet' | 'mnist' | 'digits' | 'none'; 'auto' picks from the dataset.
  c.preprocess = "auto"
  # Side of the square images fed to the model; None = the preset's default (32, 224, 28, ...).
  c.image_size = config_dict.placeholder(int)
  # Per-channel mean and std of pixels scaled to [0, 1]; None = the preset's default.
  c.mean = config_dict.placeholder(tuple)
  c.std = config_dict.placeholder(tuple)
  # Encoded records in the shuffle buffer of streamed splits (imagenet: ~110 KB each); in-memory
  # splits are fully permuted instead.
  c.shuffle_buffer = 10_000
  # Keep the decoded split in memory (random access, full permutation per epoch).
  # None = when images have one fixed size and the split needs at most max_cache_mb.
  c.cache = config_dict.placeholder(bool)
  c.max_cache_mb = 4096
  # Decoded image folders are saved here so the next run does not decode them again ('' = never).
  c.cache_dir = "~/.cache/jresnet"
  # Threads for TensorFlow and tf.data; None = half the cores (the rest are left to XLA).
  c.threads = config_dict.placeholder(int)
  # Batches kept in flight to the devices by prefetch_to_device.
  c.prefetch = 2
  # source='synthetic': random uint8 images and labels (benchmarks, smoke tests), splits
  # 'train' and 'test' of num_examples each, fixed by synthetic_seed.
  c.num_classes = 10
  c.image_shape = (32, 32, 3)
  c.num_examples = 1024
  c.synthetic_seed = 0
  return c
