"""Defaults that every config in this directory starts from; each config overrides a few fields.

Every field can be overridden on the command line, e.g. `--config.batch_size=256`
`--config.model.depth=56` `--config.optimizer.name=adamw`; an unknown key is an error.
`python train.py --config <file> --mode=print_config` lists every field with its value. An
optional path (init_from, data.path, data.data_dir, data.manual_dir) given as None or '' is unset.
"""

from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0

  # jresnet.ResNet fields; num_classes and input_channels come from the dataset.
  c.model = ConfigDict(dict(
      depth=20, family="cifar", version="v1.5",
      stage_sizes=config_dict.placeholder(tuple), block=config_dict.placeholder(str),
      stem=config_dict.placeholder(str), stem_width=32, shortcut=config_dict.placeholder(str),
      widths=config_dict.placeholder(tuple), width_multiplier=1.0, groups=1, width_per_group=64,
      zero_init_residual=True, bn_momentum=0.9, bn_epsilon=1e-5,
      scan_blocks=False, remat=False,
      output_stride=32,                              # 16 / 8: dilated last stages (dense tasks)
      frozen_bn=False,                               # BatchNorm on running statistics, not updated
      padding="torch",                               # 'same': flax's examples/imagenet's
      drop_rate=0.0,                                 # dropout before the head (timm's)
      drop_path_rate=0.0,                            # stochastic depth of the last block (timm's)
  ))
  c.data = data_config()

  c.batch_size = 128                                 # global, over all devices and processes
  c.eval_batch_size = config_dict.placeholder(int)   # None: batch_size
  c.num_epochs = 30.0
  c.num_train_steps = config_dict.placeholder(int)   # overrides num_epochs when set

  c.optimizer = ConfigDict(dict(
      name="sgd",                                    # sgd | adamw | lars
      learning_rate=0.1,
      lr_base_batch=config_dict.placeholder(int),    # lr *= batch_size / lr_base_batch (Goyal)
      momentum=0.9, nesterov=False, weight_decay=1e-4,
      b1=0.9, b2=0.999, eps=1e-8,                    # adamw
      trust_coefficient=0.001,                       # lars
  ))
  c.schedule = ConfigDict(dict(
      name="cosine",                                 # constant | piecewise | cosine | onecycle
      warmup_epochs=0.0, warmup_start_lr=0.0,
      boundaries=(0.5, 0.75), decay_factor=0.1,      # piecewise: fractions of the run
      final_lr_fraction=0.0,                         # cosine
      pct_start=0.3, div_factor=25.0, final_div_factor=1e4,  # onecycle
  ))
  c.weight_decay_mask = True                         # no decay on BatchNorm parameters, biases
  c.backbone_lr_scale = 1.0                          # fine-tuning: lr of all but `fc` times this
  c.frozen_stages = ()                               # e.g. ("stem", "layer1"): not updated
  c.label_smoothing = 0.0
  c.grad_clip_norm = config_dict.placeholder(float)
  c.ema_decay = config_dict.placeholder(float)       # evaluate an EMA of the weights

  c.precision = "auto"                               # auto: bf16 on GPU/TPU, fp32 on CPU |
                                                     # bfloat16 (bf16) | float32 (fp32)
  c.parallel = "jit"                                 # jit (mesh, NamedSharding) | pmap
  c.steps_per_call = 1                               # train steps per compiled call (jit): K
                                                     # steps under lax.scan, fewer dispatches
  c.replicas = 1                                     # independent runs in one program (jit,
                                                     # data in memory): replica i, seed + i
  c.sweep = ""                                       # JSON, e.g. '{"optimizer.learning_rate":
                                                     # [0.05, 0.1, 0.2]}': a replica per value
                                                     # (per value and seed with replicas > 1)
  c.compilation_cache_dir = "~/.cache/jresnet/xla"   # JAX's persistent cache: a repeated or
                                                     # resumed run loads its compiled steps
                                                     # ('': off)
  c.bn_span = config_dict.placeholder(int)           # BatchNorm statistics over groups of this
                                                     # many devices (pmap); None: global batch

  # Jobs of several processes (multi-host): how long a process waits for the whole job to join,
  # and after how long without heartbeats a process counts as lost (the others then stop within
  # about that time, and the whole job is restarted).
  c.distributed = ConfigDict(dict(initialization_timeout_s=300, heartbeat_timeout_s=10))

  c.log_every_steps = 50
  c.eval_every_steps = config_dict.placeholder(int)  # None: once an epoch
  c.checkpoint_every_steps = config_dict.placeholder(int)  # None: at every evaluation
  c.keep_checkpoints = 2                             # the last K, plus the best evaluated
  c.async_checkpoints = True
  c.stop_after_steps = config_dict.placeholder(int)  # checkpoint and stop after this many steps
                                                     # of this invocation (time-limited jobs)
  c.init_from = config_dict.placeholder(str)         # a run's workdir, a .pth/.safetensors file
                                                     # or a jresnet.weights name (new head if the
                                                     # class count differs)
  c.eval_checkpoint = "latest"                       # --mode=eval: latest | best | <step>
  return c


def data_config() -> ConfigDict:
  """`config.data`, what jresnet.data reads and how it prepares it: CIFAR-10 from TFDS with its
  usual recipe; every None means 'derived from the dataset'."""
  c = ConfigDict()
  # Where examples come from: 'tfds' | 'folder' | 'digits' | 'synthetic' | 'arrays' (an array
  # file written by `train.py --mode=write_arrays`, at `path`).
  c.source = "tfds"
  # TFDS dataset name (source='tfds'): cifar10, cifar100, imagenet2012, imagenette, mnist, ...
  c.name = "cifar10"
  # Image folder root (source='folder'), laid out as <path>/<split>/<class>/<image>.{jpg,png};
  # or the array file (source='arrays').
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
  # Hold the decoded split in memory and on the devices, where it is batched and augmented (a
  # full permutation per epoch); else stream it through tf.data. None = when its images have one
  # size and it needs at most max_cache_mb and a quarter of a device's memory.
  c.cache = config_dict.placeholder(bool)
  c.max_cache_mb = 4096
  # Decoded image folders are saved here so the next run does not decode them again ('' = never).
  c.cache_dir = "~/.cache/jresnet"
  # Threads for TensorFlow and tf.data; None = half the cores on a CPU host (the rest are left to
  # XLA), all but two on a GPU/TPU host.
  c.threads = config_dict.placeholder(int)
  # Batches kept in flight to the devices.
  c.prefetch = 2
  # source='synthetic': random uint8 images and labels (benchmarks, smoke tests), splits
  # 'train' and 'test' of num_examples each, fixed by synthetic_seed.
  c.num_classes = 10
  c.image_shape = (32, 32, 3)
  c.num_examples = 1024
  c.synthetic_seed = 0
  return c
