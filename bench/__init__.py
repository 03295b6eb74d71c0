"""Benchmarks of jresnet, run as modules: `python -m bench.<name> --help`."""
