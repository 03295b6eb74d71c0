"""Train or evaluate a jresnet model.

    python train.py --config configs/cifar10_resnet20.py --workdir runs/r20 [--config.key=value ...]
    python train.py --config configs/cifar10_resnet20.py --workdir runs/r20 --mode=eval \
        [--config.eval_checkpoint=best] [--config.data.eval_split=test]
    python train.py --config configs/cifar10_resnet20_budget.py --workdir runs/cifar10_arrays \
        --mode=write_arrays [--arrays_encoding=jpeg]   # the config's two splits, one file
    python train.py --config configs/imagenet_resnet50.py --workdir runs/imagenet_small \
        --mode=write_resized --resized_side=256   # an image folder, shorter sides <= 256 px

Eval mode starts from the workdir's config.json (the training run's values); fields given on the
command line override it.

A run resumes from the checkpoints in --workdir; SIGTERM checkpoints and exits 0 (during start-up,
before there is anything new to save, it exits 0 saying which checkpoint the workdir holds). On
Linux the command re-executes itself once with glibc's huge pages on
(jresnet/training/huge_pages.py: faster CPU steps), keeping a SIGTERM sent meanwhile;
JRESNET_HUGE_PAGES=0 keeps it as it is.
"""

import os
import signal
import sys


class _SigtermDuringStartup:
  """Notes a SIGTERM that arrives before the training loop's own handler is installed; that
  handler takes the note over, and the run stops before training, with nothing new to save."""

  requested = False

  def __call__(self, signum, frame):
    self.requested = True


if __name__ == "__main__":  # first: the imports take seconds
  # Held (pending) until the huge-pages exec is done or skipped: one sent meanwhile survives the
  # exec, and the threads that the imports start never take it.
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
  signal.signal(signal.SIGTERM, _SigtermDuringStartup())

from jresnet.training import huge_pages  # noqa: E402

if __name__ == "__main__":  # an exec starts over: before the slow imports below (TensorFlow)
  huge_pages.exec_with_huge_pages()
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # the handler takes a held one

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jresnet.compat import flax_imagenet  # noqa: E402
from jresnet.training import distributed, loop, run_config  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file whose get_config() returns the run's "
                                "ml_collections.ConfigDict.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and curves.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "write_arrays", "write_resized"],
                  "Train (and evaluate); only evaluate a checkpoint of --workdir; write the "
                  "config's train and eval splits to <workdir>/arrays.npz (data.source=arrays "
                  "reads it, without TensorFlow); or write a copy of the dataset with smaller "
                  "images to <workdir>/resized<side>/ (an image folder, faster to decode).")
flags.DEFINE_enum("arrays_encoding", "raw", ["raw", "jpeg"], "--mode=write_arrays: decoded "
                  "pixels, or an image folder's JPEG files as they are (far smaller).")
flags.DEFINE_integer("resized_side", 256, "--mode=write_resized: the longest shorter side, in "
                     "pixels, of the copy's images.")
flags.DEFINE_integer("resized_quality", None, "--mode=write_resized: the copy's JPEG quality, "
                     "90-100 (default 90, as FFCV's ImageNet copies).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


@distributed.exits_when_a_process_is_lost  # a job that lost a process: one line, exit 1
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if flax_imagenet.is_example_config(FLAGS.config):
    sys.exit(flax_imagenet.translation_hint(config_flags.get_config_filename(
        FLAGS["config"])))
  logging.set_verbosity(logging.WARNING)  # orbax and tfds narrate every file at INFO
  distributed.initialize(FLAGS.config.distributed.initialization_timeout_s,
                         FLAGS.config.distributed.heartbeat_timeout_s)
  distributed.check_one_job({"mode": FLAGS.mode, **FLAGS.config.to_dict()})
  if FLAGS.config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(FLAGS.config.compilation_cache_dir))
  if FLAGS.mode == "write_arrays":
    metrics = loop.write_arrays(FLAGS.config, FLAGS.workdir, FLAGS.arrays_encoding)
  elif FLAGS.mode == "write_resized":
    metrics = loop.write_resized(FLAGS.config, FLAGS.workdir, FLAGS.resized_side,
                                 FLAGS.resized_quality)
  elif FLAGS.mode == "train":
    metrics = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:  # the run's config.json is the base; the command line's fields win
    config = run_config.for_eval(FLAGS.config, FLAGS.workdir,
                                 config_flags.get_override_values(FLAGS["config"]))
    metrics = loop.evaluate_checkpoint(config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in metrics.items()))


if __name__ == "__main__":
  app.run(main)
