"""The training side: optimisers, state, steps, parallelism, checkpoints, records, the loop.

Imports the models; the input pipeline (`jresnet.data`, TensorFlow) only when data is read.
"""
