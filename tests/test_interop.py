"""jresnet against PyTorch: parameter counts, eval logits, and exact weight round trips."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402

import jresnet  # noqa: E402
from jresnet import interop  # noqa: E402

CASES = {
    # name: (torch model factory, jresnet model, input shape NCHW)
    "resnet18": (lambda: ref.ResNet(ref.BasicBlock, [2, 2, 2, 2]), jresnet.ResNet18(),
                 (2, 3, 224, 224)),
    "resnet50": (lambda: ref.ResNet(ref.Bottleneck, [3, 4, 6, 3]), jresnet.ResNet50(),
                 (2, 3, 224, 224)),
    # An odd input size exercises the symmetric padding of every strided layer.
    "resnext50_32x4d": (lambda: ref.ResNet(ref.Bottleneck, [3, 4, 6, 3], groups=32,
                                           width_per_group=4),
                        jresnet.ResNeXt50_32x4d(), (2, 3, 97, 97)),
    "cifar_resnet20": (lambda: ref.CifarResNet(20), jresnet.CifarResNet20(), (4, 3, 32, 32)),
}


def _torch_model(name):
  torch.manual_seed(0)
  return ref.randomise_batchnorm(CASES[name][0](), CASES[name][2])


@pytest.mark.parametrize("name", CASES)
def test_eval_logits_equal_pytorch(name):
  torch_model, (_, model, shape) = _torch_model(name), CASES[name]
  variables = interop.from_torch(torch_model.state_dict(), model)
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x)).numpy()
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1))
  assert np.abs(expected).max() > 0.5  # the comparison is not between near-zero numbers
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["resnet18", "cifar_resnet20"])
def test_round_trips_are_exact(name, tmp_path):
  torch_model, model = _torch_model(name), CASES[name][1]
  state_dict = torch_model.state_dict()
  variables = interop.from_torch(state_dict, model)

  back = interop.to_torch(variables, model, as_tensors=True)
  assert back.keys() == state_dict.keys()
  for key, value in state_dict.items():
    if not key.endswith("num_batches_tracked"):
      assert torch.equal(back[key], value), key

  fresh = CASES[name][0]()
  fresh.load_state_dict(back, strict=True)  # torch accepts jresnet's export as it is
  again = interop.from_torch(fresh.state_dict(), model)
  jax.tree.map(np.testing.assert_array_equal, again, variables)

  torch.save(state_dict, tmp_path / "weights.pth")
  from_file = interop.load_torch_checkpoint(str(tmp_path / "weights.pth"), model)
  jax.tree.map(np.testing.assert_array_equal, from_file, variables)


def test_conversion_into_scanned_layout_gives_same_logits():
  torch_model, model = _torch_model("cifar_resnet20"), CASES["cifar_resnet20"][1]
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3), dtype=np.float32)
  unrolled = model.apply(interop.from_torch(torch_model.state_dict(), model), x)
  scanned_model = model.clone(scan_blocks=True)
  scanned = scanned_model.apply(interop.from_torch(torch_model.state_dict(), scanned_model), x)
  np.testing.assert_allclose(scanned, unrolled, atol=1e-5)


def test_mismatched_state_dict_names_the_problem():
  state_dict = _torch_model("resnet18").state_dict()
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


@pytest.mark.parametrize("output_stride, dilate", [(32, (False, False, False)),
                                                   (16, (False, False, True)),
                                                   (8, (False, True, True))])
def test_backbone_features_at_output_stride_equal_torchvision_dilation(output_stride, dilate):
  torch.manual_seed(0)
  shape = (1, 3, 64, 64)
  torch_model = ref.randomise_batchnorm(
      ref.ResNet(ref.Bottleneck, [3, 4, 6, 3], replace_stride_with_dilation=dilate), shape)
  model = jresnet.ResNet50(output_stride=output_stride)
  variables = interop.from_torch(torch_model.state_dict(), model)
  x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
  with torch.no_grad():
    expected = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in
                torch_model.features(torch.from_numpy(x)).items()}
  got = model.apply(variables, x.transpose(0, 2, 3, 1), return_features=True)
  info = {f["name"]: f for f in model.feature_info()}
  assert got.keys() == expected.keys() == info.keys()
  for name, value in expected.items():
    assert got[name].shape == value.shape
    assert value.shape[1] == 64 // info[name]["stride"] and value.shape[3] == info[name]["channels"]
    # float32 rounding, relative to the feature scale (unpooled maps, not averaged logits)
    np.testing.assert_allclose(got[name], value, atol=1e-4 * np.abs(value).max(), rtol=1e-4)


def _reference_for(model: jresnet.ResNet):
  """The PyTorch reference of the same architecture (torchvision's, or timm's for ResNet-D)."""
  arch = model.architecture
  block = ref.Bottleneck if arch.block == "bottleneck" else ref.BasicBlock
  return ref.ResNet(block, list(arch.stage_sizes), groups=model.groups,
                    width_per_group=model.width_per_group, deep_stem=arch.stem == "deep",
                    avg_down=arch.shortcut == "D")


REGISTRY_ARCHITECTURES = sorted({w.architecture.__name__: w.architecture
                                 for w in jresnet.weights.REGISTRY.values()}.items())


@pytest.mark.parametrize("name, architecture", REGISTRY_ARCHITECTURES,
                         ids=[n for n, _ in REGISTRY_ARCHITECTURES])
def test_every_registry_architecture_equals_pytorch(name, architecture):
  """Converted random weights (randomised BatchNorm) give PyTorch's eval logits; the export back
  to the PyTorch layout is exact and torch's strict load accepts it. 64x64 keeps it quick."""
  model = architecture()
  torch.manual_seed(0)
  torch_model = ref.randomise_batchnorm(_reference_for(model), (2, 3, 64, 64))
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
