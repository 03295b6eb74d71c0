"""The training side: the driver (`loop`), eval mode, steps, optimisers, state, parallelism,
checkpoints, records.

Above the models and `jresnet.data`; TensorFlow loads only where a TensorFlow source is read or a
split is streamed.
"""
