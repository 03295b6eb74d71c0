"""Test-session set-up: 8 virtual CPU devices for the multi-device tests, quiet TensorFlow."""

import os

import pytest

# Must happen before JAX initialises its backend (and before TensorFlow prints its notices).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Many tests compile the same small programs (XLA CPU spends ~1 s on each threefry RNG op of an
# init); a persistent cache shared by the session and its subprocesses compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"jresnet-test-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# Subprocess deadlines are what a step takes on an idle 2-core machine times this factor, so
# that a loaded machine slows the suite down rather than failing it.
TIMEOUT_FACTOR = float(os.environ.get("JRESNET_TEST_TIMEOUT_FACTOR", "5"))


def deadline(idle_seconds: float) -> float:
  """Seconds to wait for something that takes about `idle_seconds` on an idle machine."""
  return idle_seconds * TIMEOUT_FACTOR


# TFDS, mocked: the metadata (split sizes) is written the way `tfds build` would, the examples
# come from mock_data.

MOCK_N = 24


@pytest.fixture(scope="module")
def mock_metadata(tmp_path_factory):
  """TFDS metadata for cifar10 and imagenet2012 written as `tfds build` would, MOCK_N per split."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 (only tests that use it pay for TF)

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  for name, eval_split in [("cifar10", "test"), ("imagenet2012", "validation")]:
    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[MOCK_N], num_bytes=0)
        for s in ("train", eval_split)]))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
  return data_dir


class _RealFileSystem:
  """Stands in for tfds's MockFs inside mock_data: the metadata is on disk, so nothing needs a
  mocked file system. MockFs patches tf.io.gfile and epath for the whole process while a mocked
  `as_dataset` runs, so Orbax's background threads (saving, cleaning up temporary directories)
  would see every path under a temporary directory and fail."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def add_file(self, path):
    del path


@pytest.fixture
def mock_tfds(mock_metadata):
  """Mocked examples over that metadata; per test, since an open mock hides absent datasets."""
  from unittest import mock  # noqa: PLC0415

  import tensorflow_datasets as tfds  # noqa: PLC0415
  from tensorflow_datasets.testing import mocking  # noqa: PLC0415

  with mock.patch.object(mocking.test_utils, "MockFs", _RealFileSystem), \
      tfds.testing.mock_data(num_examples=MOCK_N, policy=tfds.testing.MockPolicy.USE_FILES,
                             data_dir=mock_metadata):
    yield mock_metadata
