"""Drop-in replacements for other projects' ResNet modules: `jresnet.compat.flax_imagenet` stands
in for the `models` module of flax's examples/imagenet."""
