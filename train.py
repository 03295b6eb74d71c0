"""Train or evaluate a jresnet model.

    python train.py --config configs/digits.py --workdir runs/digits [--config.key=value ...]
    python train.py --workdir runs/digits --mode=eval [--config.eval_checkpoint=best]
    python train.py --config configs/digits.py --mode=print_config   # every key, with its value
    python train.py --config configs/cifar10_resnet20_budget.py --workdir runs/cifar10_arrays \\
        --mode=write_arrays [--arrays_encoding=jpeg]   # the config's two splits, one file
    python train.py --config configs/imagenet_resnet50.py --workdir runs/imagenet_small \\
        --mode=write_resized --resized_side=256   # an image folder, shorter sides <= 256 px

Eval mode starts from the workdir's config.json (the training run's values); fields given on the
command line (with --config) override it. An optional path given as None or '' is unset.

A mistake in the command (a config key that does not exist, a value out of range, weights or data
that are not there) is one line, `error: ...`, and exit 1.

A run resumes from the checkpoints in --workdir; SIGTERM checkpoints and exits 0 (during start-up,
before there is anything new to save, it exits 0 saying which checkpoint the workdir holds). On
Linux the command re-executes itself once with glibc's huge pages on
(jresnet/training/huge_pages.py: faster CPU steps), keeping a SIGTERM sent meanwhile;
JRESNET_HUGE_PAGES=0 keeps it as it is.
"""

import os
import signal
import sys

if __name__ == "__main__":  # first: the imports take seconds
  # Held (pending) until the huge-pages exec is done or skipped: one sent meanwhile survives the
  # exec, and the threads that the imports start never take it.
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

from jresnet.training import distributed, huge_pages  # noqa: E402

if __name__ == "__main__":  # an exec starts over: before the slow imports below
  distributed.listen()  # a SIGTERM from now on stops the run cleanly, saying what it saved
  huge_pages.exec_with_huge_pages()
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # the handler takes a held one

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import traverse_util  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import default  # noqa: E402
from jresnet import data, export  # noqa: E402
from jresnet.compat import flax_imagenet  # noqa: E402
from jresnet.training import (  # noqa: E402
  checkpoint,
  evaluate,
  loop,
  pretrained,
  records,
  run_config,
  workdir_lock,
)
from jresnet.weights import download  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file whose get_config() returns the run's "
                                "ml_collections.ConfigDict (configs/digits.py trains offline); "
                                "--mode=eval without it reads <workdir>/config.json.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and curves.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "write_arrays", "write_resized",
                                    "print_config"],
                  "Train (and evaluate); only evaluate a checkpoint of --workdir; write the "
                  "config's train and eval splits to <workdir>/arrays.npz (data.source=arrays "
                  "reads it, without TensorFlow); write a copy of the dataset with smaller "
                  "images to <workdir>/resized<side>/ (an image folder, faster to decode); or "
                  "print every config key with its value.")
flags.DEFINE_enum("arrays_encoding", "raw", ["raw", "jpeg"], "--mode=write_arrays: decoded "
                  "pixels, or an image folder's JPEG files as they are (far smaller).")
flags.DEFINE_integer("resized_side", 256, "--mode=write_resized: the longest shorter side, in "
                     "pixels, of the copy's images.")
flags.DEFINE_integer("resized_quality", None, "--mode=write_resized: the copy's JPEG quality, "
                     "90-100 (default 90, as FFCV's ImageNet copies).")
FLAGS = flags.FLAGS
HELP_FLAGS = ("--help", "-?", "--helpshort", "--helpfull")

# The errors jresnet raises on purpose, whose message says what is wrong and what to do: one line
# each, without a traceback. Any other exception is a bug, and keeps its traceback.
EXPLAINED_ERRORS = (
    run_config.ConfigError, run_config.RunConfigError, records.MetricsFileError,
    loop.WorkdirLostError, evaluate.NoCheckpointError, loop.NonFiniteUpdateError,
    checkpoint.CheckpointMismatchError, checkpoint.CorruptCheckpointError,
    checkpoint.NonFiniteStateError, workdir_lock.WorkdirLockedError, export.ExportError,
    pretrained.InitFromError, pretrained.InitFromNotFoundError, download.WeightsUnavailableError,
    download.CorruptWeightsError, download.UnreadableWeightsError,
    data.DatasetNotFoundError, data.UndecodableImageError, data.ArrayFileError)
ARRAYS_FILE = "arrays.npz"  # --mode=write_arrays
RESIZED_DIR = "resized{side}"  # --mode=write_resized


def _fail(message: str):
  """One line on stderr, and exit 1."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, except that `--help` (also `-h`) exits 0, and that a config key the config
  does not have is one line with ml_collections' suggestion, not a traceback."""
  argv = ["--help" if arg == "-h" else arg for arg in argv]
  try:
    return app.parse_flags_with_usage(argv)
  except SystemExit as stop:
    if stop.code == 1 and any(arg in HELP_FLAGS for arg in argv):
      sys.exit(0)  # absl exits 1 after printing the help that was asked for
    raise
  except KeyError as error:  # ml_collections: "'key'\nDid you mean ..."
    key, _, suggestion = str(error.args[0]).partition("\n")
    given = [arg.split("=")[0] for arg in argv if arg.startswith("--config.")
             and key.strip("'") in arg.split("=")[0].split(".")]
    if not given:  # raised by the config file itself
      raise
    hint = f" {suggestion}" if suggestion else ""
    _fail(f"{given[0]}: the config has no field {key}.{hint} (--mode=print_config lists the "
          "fields)")


def _config(mode: str, workdir: str | None):
  """The run's config: the config file's (in eval mode over the workdir's config.json), or
  without a config file, in eval and print_config modes, the workdir's config.json alone."""
  if FLAGS.config is not None:
    if mode == "eval":  # the run's config.json is the base; the command line's fields win
      return run_config.for_eval(FLAGS.config, workdir,
                                 config_flags.get_override_values(FLAGS["config"]))
    return FLAGS.config
  if mode in ("eval", "print_config") and workdir:
    return run_config.from_workdir(default.get_config(), workdir)
  raise run_config.ConfigError("give --config, a config file (e.g. configs/digits.py); only "
                           "--mode=eval can do without, reading <workdir>/config.json")


def print_config(config) -> None:
  """Every field of `config`, one `key = value` a line, by name."""
  for key, value in traverse_util.flatten_dict(config.to_dict(), sep=".").items():
    print(f"{key} = {value!r}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    run(FLAGS.mode, FLAGS.workdir)
  except EXPLAINED_ERRORS as error:
    _fail(str(error))


@distributed.exits_when_a_process_is_lost  # a job that lost a process: one line, exit 1
def run(mode: str, workdir: str | None) -> None:
  """`--mode` on the run's config: train, evaluate, write a copy of the data or print the config."""
  # Orbax and TFDS narrate every file at INFO, and JAX its backends (also where a failed command
  # asks for the process count, to tell a lost process).
  logging.set_verbosity(logging.WARNING)
  if FLAGS.config is not None and flax_imagenet.is_example_config(FLAGS.config):
    sys.exit(flax_imagenet.translation_hint(config_flags.get_config_filename(
        FLAGS["config"])))
  if workdir is None and mode != "print_config":
    raise run_config.ConfigError(f"--mode={mode} needs --workdir, the run's directory")
  config = run_config.unset_paths(_config(mode, workdir))
  if mode == "print_config":
    print_config(config)
    return
  distributed.initialize(config.distributed.initialization_timeout_s,
                         config.distributed.heartbeat_timeout_s)
  distributed.check_one_job({"mode": mode, **config.to_dict()})
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
  if mode == "write_arrays":
    metrics = write_arrays(config, workdir, FLAGS.arrays_encoding)
  elif mode == "write_resized":
    metrics = write_resized(config, workdir, FLAGS.resized_side, FLAGS.resized_quality)
  elif mode == "train":
    metrics = loop.train_and_evaluate(config, workdir)
  else:
    metrics = evaluate.evaluate_checkpoint(config, workdir)
  if jax.process_index() == 0:
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in metrics.items()))


def write_arrays(config, workdir: str, encoding: str = "raw") -> dict:
  """The config's train and eval splits to <workdir>/arrays.npz, which
  `--config.data.source=arrays --config.data.path=<that file>` reads with the same split names.
  Returns the examples written per split."""
  dataset = data.open(config.data)  # a missing dataset or split fails here, in seconds
  path = os.path.join(workdir, ARRAYS_FILE)
  if jax.process_index() != 0:  # one file per job
    return {}
  counts = dataset.write_arrays(path, encoding)
  print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, {encoding}); train from it "
        f"with --config.data.source=arrays --config.data.path={path}")
  return counts


def write_resized(config, workdir: str, side: int, quality: int | None = None) -> dict:
  """Every split of the config's dataset to <workdir>/resized<side>/, an image folder with the
  shorter sides capped at `side` pixels, JPEG at `quality` (None: the copy's default). Returns
  the images per split."""
  from jresnet.data import resized_copy  # noqa: PLC0415 (TensorFlow)

  out = os.path.join(workdir, RESIZED_DIR.format(side=side))
  if jax.process_index() != 0:  # one copy per job
    return {}
  quality = resized_copy.QUALITY if quality is None else quality
  counts = data.open(config.data).write_resized(out, side, quality)
  print(f"wrote {sum(counts.values())} images to {out} (shorter side <= {side}, JPEG quality "
        f"{quality}); train from it with --config.data.source=folder --config.data.path={out}")
  return counts


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
