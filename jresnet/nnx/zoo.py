"""Named members of the family as NNX models: `ResNet50(rngs=nnx.Rngs(0), num_classes=10)`.

One NNX constructor per linen constructor of `jresnet.models.zoo`, built from it, so the two lists
cannot drift apart; keywords override the named architecture's defaults as they do there.
"""

from flax import nnx

from jresnet.models import zoo as linen_zoo
from jresnet.nnx.resnet import ResNet

NAMES = list(linen_zoo.__all__)


def _twin(name: str):
  linen_constructor = getattr(linen_zoo, name)

  def make(*, rngs: nnx.Rngs, **overrides) -> ResNet:
    return ResNet(spec=linen_constructor(**overrides), rngs=rngs)

  make.__name__ = make.__qualname__ = name
  make.__doc__ = f"{linen_constructor.__doc__} Flax NNX."
  return make


globals().update({name: _twin(name) for name in NAMES})
__all__ = NAMES
