"""jresnet against PyTorch: parameter counts, eval logits, and exact weight round trips.

The references are torchvision's and timm's own model code (imported without torchvision's
compiled operators, see tests/torch_reference.py), and for the CIFAR ResNet, which neither has,
the PyTorch form in tests/torch_reference.py.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jresnet  # noqa: E402
from jresnet import interop, weights  # noqa: E402
from tests import torch_reference as ref  # noqa: E402


def _import_or_skip(importer):
  try:
    return importer()
  except ImportError as e:
    pytest.skip(f"{e}; `make test` installs the reference libraries")


@pytest.fixture(scope="module")
def torchvision():
  return _import_or_skip(ref.import_torchvision)


@pytest.fixture(scope="module")
def timm():
  return _import_or_skip(ref.import_timm)


CASES = {
    # name: (jresnet model, input shape NCHW); the PyTorch model is torchvision's of that name.
    "resnet18": (jresnet.ResNet18(), (2, 3, 224, 224)),
    "resnet50": (jresnet.ResNet50(), (2, 3, 224, 224)),
    # An odd input size exercises the symmetric padding of every strided layer.
    "resnext50_32x4d": (jresnet.ResNeXt50_32x4d(), (2, 3, 97, 97)),
    "cifar_resnet20": (jresnet.CifarResNet20(), (4, 3, 32, 32)),
}


def _torch_model(name, request, randomise=True):
  torch.manual_seed(0)
  if name == "cifar_resnet20":
    model = ref.CifarResNet(20)
  else:
    model = request.getfixturevalue("torchvision").models.get_model(name)
  return ref.randomise_batchnorm(model, CASES[name][1]) if randomise else model


@pytest.mark.parametrize("name", CASES)
def test_eval_logits_equal_pytorch(name, request):
  torch_model, (model, shape) = _torch_model(name, request), CASES[name]
  variables = interop.from_torch(torch_model.state_dict(), model)
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x)).numpy()
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1))
  assert np.abs(expected).max() > 0.5  # the comparison is not between near-zero numbers
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["resnet18", "cifar_resnet20"])
def test_round_trips_are_exact(name, tmp_path, request):
  torch_model, model = _torch_model(name, request), CASES[name][0]
  state_dict = torch_model.state_dict()
  variables = interop.from_torch(state_dict, model)

  back = interop.to_torch(variables, model, as_tensors=True)
  assert back.keys() == state_dict.keys()
  for key, value in state_dict.items():
    if not key.endswith("num_batches_tracked"):
      assert torch.equal(back[key], value), key

  fresh = _torch_model(name, request, randomise=False)
  fresh.load_state_dict(back, strict=True)  # torch accepts jresnet's export as it is
  again = interop.from_torch(fresh.state_dict(), model)
  jax.tree.map(np.testing.assert_array_equal, again, variables)

  torch.save(state_dict, tmp_path / "weights.pth")
  from_file = interop.from_torch(weights.read_state_dict(str(tmp_path / "weights.pth")), model)
  jax.tree.map(np.testing.assert_array_equal, from_file, variables)


def test_conversion_into_scanned_layout_gives_same_logits(request):
  torch_model, model = _torch_model("cifar_resnet20", request), CASES["cifar_resnet20"][0]
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3), dtype=np.float32)
  unrolled = model.apply(interop.from_torch(torch_model.state_dict(), model), x)
  scanned_model = model.clone(scan_blocks=True)
  scanned = scanned_model.apply(interop.from_torch(torch_model.state_dict(), scanned_model), x)
  np.testing.assert_allclose(scanned, unrolled, atol=1e-5)


def test_mismatched_state_dict_names_the_problem(request):
  state_dict = _torch_model("resnet18", request).state_dict()
  with pytest.raises(ValueError, match=r"missing layer1\.2\.conv1\.weight"):
    interop.from_torch(state_dict, jresnet.ResNet34())
  with pytest.raises(ValueError, match=r"fc\.weight: the state dict has shape \(1000, 512\), "
                                       r"the model needs \(10, 512\)"):
    interop.from_torch(state_dict, jresnet.ResNet18(num_classes=10))


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar_parameter_counts_equal_reference(depth):
  expected = sum(p.numel() for p in ref.CifarResNet(depth).parameters())
  model = jresnet.ResNet(depth=depth, family="cifar", num_classes=10)
  assert jresnet.summary(model, (1, 32, 32, 3)).total_params == expected


def _assert_features_equal(got: dict, expected: dict, model: jresnet.ResNet, image_size: int):
  """Equal maps (NCHW torch tensors in `expected`) whose shapes agree with `feature_info`."""
  info = {f["name"]: f for f in model.feature_info()}
  for name, value in expected.items():
    value = value.numpy().transpose(0, 2, 3, 1)
    assert got[name].shape == value.shape, name
    assert value.shape[1] == image_size // info[name]["stride"], name
    assert value.shape[3] == info[name]["channels"], name
    # float32 rounding, relative to the feature scale (unpooled maps, not averaged logits)
    np.testing.assert_allclose(got[name], value, atol=1e-4 * np.abs(value).max(), rtol=1e-4)


@pytest.mark.parametrize("output_stride, dilate", [(32, (False, False, False)),
                                                   (16, (False, False, True)),
                                                   (8, (False, True, True))])
def test_backbone_features_at_output_stride_equal_torchvision_dilation(output_stride, dilate,
                                                                      torchvision):
  """Stem and stage outputs of jresnet's ResNet-50 at `output_stride` equal those of
  torchvision's `resnet50(replace_stride_with_dilation=...)` through torchvision's own
  feature extractor."""
  from torchvision.models.feature_extraction import create_feature_extractor  # noqa: PLC0415
  torch.manual_seed(0)
  shape = (1, 3, 64, 64)
  torch_model = ref.randomise_batchnorm(
      torchvision.models.resnet50(replace_stride_with_dilation=list(dilate)), shape)
  model = jresnet.ResNet50(output_stride=output_stride)
  variables = interop.from_torch(torch_model.state_dict(), model)
  extractor = create_feature_extractor(
      torch_model, {"relu": "act1", "maxpool": "stem",
                    **{f"layer{i}": f"layer{i}" for i in range(1, 5)}})
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
  with torch.no_grad():
    expected = extractor(torch.from_numpy(x))
  got = model.apply(variables, x.transpose(0, 2, 3, 1), return_features=True)
  assert got.keys() == expected.keys() == {f["name"] for f in model.feature_info()}
  _assert_features_equal(got, expected, model, 64)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnet_d_backbone_features_equal_timm_output_stride(output_stride, timm):
  """The same for ResNet-D against timm's `output_stride`: its dilated stages keep a 2x2 average
  pool at stride 1 in the shortcut (AvgPool2dSame)."""
  torch.manual_seed(0)
  shape = (1, 3, 64, 64)
  torch_model = ref.randomise_batchnorm(
      timm.create_model("resnet26d", output_stride=output_stride), shape)
  model = jresnet.ResNet26D(output_stride=output_stride)
  variables = interop.from_torch(torch_model.state_dict(), model)
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
  with torch.no_grad():
    stages = torch_model.forward_intermediates(torch.from_numpy(x), indices=[1, 2, 3, 4],
                                               intermediates_only=True)
  got = model.apply(variables, x.transpose(0, 2, 3, 1), return_features=True)
  _assert_features_equal(got, {f"layer{i + 1}": s for i, s in enumerate(stages)}, model, 64)


def test_features_and_feature_info_equal_timm_features_only(timm):
  """timm's `features_only` backbone (five levels, stride 2 to 32) and its `feature_info`:
  jresnet's maps of the same modules are equal, and described alike."""
  torch.manual_seed(0)
  shape = (1, 3, 64, 64)
  torch_model = ref.randomise_batchnorm(timm.create_model("resnet26d", features_only=True), shape)
  model = jresnet.ResNet26D(num_classes=None, data_format="NCHW")  # PyTorch's layout, as is
  variables = interop.from_torch(torch_model.state_dict(), model)
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x))
  timm_info = [{k: f[k] for k in ("num_chs", "reduction", "module")}
               for f in torch_model.feature_info.get_dicts()]
  ours = {f["module"]: f for f in model.feature_info()}
  assert [{k: ours[f["module"]][k] for k in f} for f in timm_info] == timm_info
  assert len(timm_info) == 5 and timm_info[0]["reduction"] == 2
  got = model.apply(variables, x, return_features=True)
  _assert_features_equal(got, {ours[f["module"]]["name"]: value
                               for f, value in zip(timm_info, expected)}, model, 64)


def _publisher(w: jresnet.weights.Weights) -> str:
  return "torchvision" if w.url.startswith(jresnet.weights.registry.TORCHVISION) else "timm"


def _publisher_model(weights: jresnet.weights.Weights, torchvision, timm):
  """The publisher's own PyTorch model for a registry entry, with random weights."""
  if _publisher(weights) == "torchvision":
    return torchvision.models.get_model(weights.name.split(".")[0])
  return timm.create_model(weights.name, pretrained=False)


# One entry per (publisher, architecture): the weights of one architecture differ only in values.
REGISTRY_MODELS = sorted({(_publisher(w), w.architecture.__name__): w
                          for w in jresnet.weights.REGISTRY.values()}.items())


@pytest.mark.parametrize("weights", [w for _, w in REGISTRY_MODELS],
                         ids=[f"{p}-{a}" for (p, a), _ in REGISTRY_MODELS])
def test_every_registry_architecture_equals_the_publishers_model(weights, torchvision, timm):
  """The publisher's model of a registry entry (torchvision's or timm's code) with random
  weights and randomised BatchNorm, converted, gives jresnet's eval logits; the export back to
  the PyTorch layout is exact and torch's strict load accepts it. 64x64 keeps it quick."""
  model = weights.model()
  torch.manual_seed(0)
  torch_model = ref.randomise_batchnorm(_publisher_model(weights, torchvision, timm),
                                        (2, 3, 64, 64))
  state_dict = torch_model.state_dict()
  variables = interop.from_torch(state_dict, model)
  x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x)).numpy()
  got = jax.jit(lambda v, x: model.apply(v, x))(variables, x.transpose(0, 2, 3, 1))
  # Random deep networks reach logits of 10^2-10^3, where PyTorch's own float32 and float64
  # results differ by ~1e-3: the 1e-4 tolerance is relative to the largest logit.
  scale = np.abs(expected).max()
  assert scale > 0.5
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4 * max(1.0, scale), rtol=0)
  back = interop.to_torch(variables, model, as_tensors=True)
  assert back.keys() == state_dict.keys()
  assert all(torch.equal(back[k], v) for k, v in state_dict.items()
             if not k.endswith("num_batches_tracked"))
  fresh = _publisher_model(weights, torchvision, timm)
  fresh.load_state_dict(back, strict=True)
