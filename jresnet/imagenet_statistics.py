"""ImageNet's per-channel mean and std of pixels in [0, 1], the normalisation of torchvision's and
timm's ImageNet models.

Defined here, outside both, because the data presets and the weights' eval transform use them
and neither package may import the other.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
