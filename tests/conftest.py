"""Test-session set-up: 8 virtual CPU devices for the multi-device tests, quiet TensorFlow."""

import os

# Must happen before JAX initialises its backend (and before TensorFlow prints its notices).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
