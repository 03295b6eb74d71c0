"""The classifier head `fc`, replaced or removed on a model and its variables.

timm's `model.reset_classifier(n)` changes a PyTorch module in place; a linen module and its
variables are immutable values, so here the new pair is returned and the old one is unchanged.
"""

import jax

from jresnet.models.initialisation import init_variables
from jresnet.models.resnet import ResNet

HEAD = "fc"


def reset_classifier(model: ResNet, variables: dict, num_classes: int,
                     key: jax.Array | int = 0) -> tuple[ResNet, dict]:
  """`model` with a head for `num_classes`, and `variables` with that head freshly initialised
  from `key` (the head `init_variables(new_model, key)` gives) and everything else as it was;
  `num_classes=0` removes the head (a backbone returning pooled features).

      model, variables = jresnet.reset_classifier(model, variables, 10, key=1)
  """
  if model.features_only:
    raise ValueError("a features_only model has no classifier to reset")
  model = model.clone(num_classes=num_classes)
  params = {name: value for name, value in variables["params"].items() if name != HEAD}
  if model.num_classes:
    params[HEAD] = init_variables(model, key)["params"][HEAD]
  return model, {**variables, "params": params}
