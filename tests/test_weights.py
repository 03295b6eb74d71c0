"""Pretrained weights: the registry, downloads from a server this test runs on 127.0.0.1
(complete, corrupt, interrupted, unreachable), and safetensors without torch."""

import functools
import http.server
import os
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
from conftest import deadline

import jresnet
from jresnet import interop, weights
from jresnet.imagenet_statistics import IMAGENET_MEAN, IMAGENET_STD
from jresnet.weights import registry

TORCHVISION_PARAMS = {  # torchvision's meta["num_params"]
    "ResNet18": 11_689_512, "ResNet34": 21_797_672, "ResNet50": 25_557_032,
    "ResNet101": 44_549_160, "ResNet152": 60_192_808, "ResNeXt50_32x4d": 25_028_904,
    "ResNeXt101_32x8d": 88_791_336, "ResNeXt101_64x4d": 83_455_272,
    "WideResNet50_2": 68_883_240, "WideResNet101_2": 126_886_696,
}


def test_registry_entries_are_complete():
  for name, entry in weights.REGISTRY.items():
    assert entry.url.startswith("https://") and entry.license and entry.source, name
    assert 50.0 < entry.top1 < 90.0, name
    assert entry.transform.crop <= entry.transform.resize, name
    if entry.file_format == "pth" and "download.pytorch.org" in entry.url:
      prefix = entry.url.rsplit("-", 1)[1].removesuffix(".pth")  # torchvision's hash prefix
      assert len(entry.sha256) in (8, 64) and entry.sha256.startswith(prefix), name
    elif entry.sha256 is not None:
      assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0, name


TIMM_PARAMS_M = {"ResNet26D": 16.01, "ResNet50D": 25.58, "ResNet101D": 44.57,
                 "ResNet152D": 60.21}  # timm's results-imagenet.csv param_count (millions)


def test_entries_have_their_publishers_parameter_counts():
  for entry in weights.REGISTRY.values():
    shapes = interop.variable_shapes(entry.model())["params"]
    count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    name = entry.architecture.__name__
    if name in TORCHVISION_PARAMS:
      assert count == TORCHVISION_PARAMS[name], entry.name
    else:
      assert round(count / 1e6, 2) == TIMM_PARAMS_M[name], entry.name


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(KeyError, match="resnet50.tv2_in1k"):
    jresnet.pretrained("resnet51.imagenet")


def test_eval_transform_resizes_crops_and_normalises():
  transform = registry.EvalTransform(resize=40, crop=32)
  image = np.full((60, 80, 3), 255, np.uint8)
  out = np.asarray(transform(image))
  assert out.shape == (32, 32, 3)
  np.testing.assert_allclose(out[5, 5], (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD),
                             rtol=1e-5)


def test_eval_transform_takes_a_batch_and_grayscale_images():
  """A batch gives each image's own transform; a grayscale image, 2-D or with one channel, gives
  what its RGB copy gives; another channel count is refused by shape."""
  transform = registry.EvalTransform(resize=40, crop=32)
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
  np.testing.assert_allclose(np.asarray(transform(batch)),
                             np.stack([np.asarray(transform(image)) for image in batch]),
                             rtol=1e-6, atol=1e-6)
  gray = rng.integers(0, 256, (50, 45), dtype=np.uint8)
  rgb = np.asarray(transform(np.repeat(gray[..., None], 3, axis=-1)))
  np.testing.assert_array_equal(np.asarray(transform(gray)), rgb)
  np.testing.assert_array_equal(np.asarray(transform(gray[..., None])), rgb)
  with pytest.raises(ValueError, match=r"not shape \(50, 45, 2\)"):
    transform(np.zeros((50, 45, 2), np.uint8))


def test_imagenet_class_names_ship_in_the_classifiers_label_order():
  names = weights.IMAGENET_CLASSES
  assert len(set(names)) == len(names) == 1000
  assert (names[0], names[1], names[207], names[655], names[999]) == (
      "tench", "goldfish", "golden retriever", "miniskirt", "toilet tissue")


def test_pretrained_names_the_classes_of_a_registry_entrys_own_head():
  entry = weights.REGISTRY["resnet18.tv_in1k"]
  model = entry.model()
  assert weights.Pretrained(model, {}, entry.transform, entry).class_names == \
      weights.IMAGENET_CLASSES
  assert weights.Pretrained(model, {}, entry.transform, entry, fresh=("params/fc/kernel",)) \
      .class_names is None  # a new head of the same size
  assert weights.Pretrained(model.clone(num_classes=10), {}, entry.transform, entry) \
      .class_names is None
  assert weights.Pretrained(model, {}, entry.transform, None).class_names is None  # a local file


# --- downloads -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  """A CIFAR ResNet-20 with random weights saved as .safetensors, its variables and sha256."""
  model = jresnet.CifarResNet20()
  variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  path = str(tmp_path_factory.mktemp("published") / "model.safetensors")
  weights.save_safetensors(path, variables, model)
  return path, variables, weights.sha256_of(path)


@pytest.fixture(scope="module")
def imagenet_head_file(tmp_path_factory):
  """A CIFAR ResNet-20 with a 1,000-class head (ImageNet's label space) as .safetensors."""
  model = jresnet.CifarResNet20(num_classes=1000)
  variables = model.init(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
  path = str(tmp_path_factory.mktemp("published") / "in1k.safetensors")
  weights.save_safetensors(path, variables, model)
  return path


@pytest.fixture(scope="module")
def server(weights_file, imagenet_head_file):
  """127.0.0.1 serving /model.safetensors whole, /cut.safetensors cut off half way,
  /short.safetensors, half the file as if it were all of it (the length it announces), and
  /in1k.safetensors, a model with ImageNet's 1,000 classes."""
  body = open(weights_file[0], "rb").read()
  bodies = {"/model.safetensors": body, "/cut.safetensors": body[:len(body) // 2],
            "/short.safetensors": body[:len(body) // 2],
            "/in1k.safetensors": open(imagenet_head_file, "rb").read()}

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
      if self.path not in bodies:
        self.send_error(404)
        return
      self.send_response(200)
      announced = body if self.path == "/cut.safetensors" else bodies[self.path]
      self.send_header("Content-Length", str(len(announced)))
      self.end_headers()
      self.wfile.write(bodies[self.path])

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()


def entry_at(url, sha256):
  return registry.Weights("test.r20", jresnet.CifarResNet20, url, sha256, "safetensors",
                          "test", registry.EvalTransform(36, 32), 91.0, "this test")


@pytest.fixture
def registered(monkeypatch):
  def register(url, sha256):
    entry = entry_at(url, sha256)
    monkeypatch.setitem(weights.REGISTRY, entry.name, entry)
    return entry.name
  return register


def test_download_verifies_and_loads(server, weights_file, registered, tmp_path, capfd):
  _, variables, digest = weights_file
  name = registered(f"{server}/model.safetensors", digest)
  net = jresnet.pretrained(name, cache=str(tmp_path))
  assert "100%" in capfd.readouterr().err  # the progress bar ran to the end
  assert os.listdir(tmp_path) == ["test.r20.safetensors"]
  jax.tree.map(np.testing.assert_array_equal, net.variables, variables)
  assert net.transform.resize == 36 and net.weights.name == name
  again = jresnet.pretrained(name, cache=str(tmp_path), progress=False)  # from the cache
  jax.tree.map(np.testing.assert_array_equal, again.variables, variables)


def test_wrong_checksum_keeps_nothing(server, registered, tmp_path):
  name = registered(f"{server}/model.safetensors", "0" * 64)
  with pytest.raises(weights.ChecksumError, match="expected 0000"):
    jresnet.pretrained(name, cache=str(tmp_path), progress=False)
  assert os.listdir(tmp_path) == []


def test_interrupted_transfer_keeps_nothing(server, weights_file, registered, tmp_path):
  name = registered(f"{server}/cut.safetensors", weights_file[2])
  with pytest.raises(weights.WeightsUnavailableError):
    jresnet.pretrained(name, cache=str(tmp_path), progress=False)
  assert os.listdir(tmp_path) == []


def test_corrupt_cached_file_is_refused(server, weights_file, registered, tmp_path):
  name = registered(f"{server}/model.safetensors", weights_file[2])
  jresnet.pretrained(name, cache=str(tmp_path), progress=False)
  with open(tmp_path / "test.r20.safetensors", "r+b") as f:
    f.seek(-8, os.SEEK_END)
    f.write(b"corrupt!")
  with pytest.raises(weights.ChecksumError, match="moved to .*corrupt, the next call downloads"):
    jresnet.pretrained(name, cache=str(tmp_path), progress=False)
  assert os.listdir(tmp_path) == ["test.r20.safetensors.corrupt"]


def test_without_a_digest_a_bad_file_is_set_aside_and_the_first_good_one_pinned(
    server, weights_file, registered, tmp_path):
  """An entry with sha256=None: a file that arrives whole by its length but does not load is
  moved aside, named in the error; the first one that loads has its digest recorded, and a later
  change to it is caught."""
  name = registered(f"{server}/short.safetensors", None)
  cached = tmp_path / "test.r20.safetensors"
  with pytest.raises(ValueError, match=rf"{cached} does not load .*moved to {cached}.corrupt"):
    jresnet.pretrained(name, cache=str(tmp_path), progress=False)
  assert os.listdir(tmp_path) == ["test.r20.safetensors.corrupt"]

  name = registered(f"{server}/model.safetensors", None)
  jresnet.pretrained(name, cache=str(tmp_path), progress=False)
  assert (tmp_path / "test.r20.safetensors.sha256").read_text().strip() == weights_file[2]
  jresnet.pretrained(name, cache=str(tmp_path), progress=False)  # checked, from the cache
  with open(cached, "r+b") as f:
    f.seek(-8, os.SEEK_END)
    f.write(b"corrupt!")
  with pytest.raises(weights.ChecksumError, match=rf"expected {weights_file[2]}"):
    jresnet.pretrained(name, cache=str(tmp_path), progress=False)
  assert not cached.exists()


def test_offline_error_names_the_url_and_the_cache_path(registered, tmp_path):
  with socket_closed_port() as port:
    url = f"http://127.0.0.1:{port}/model.safetensors"
    name = registered(url, "ab" * 32)
    start = time.perf_counter()
    with pytest.raises(weights.WeightsUnavailableError) as error:
      jresnet.pretrained(name, cache=str(tmp_path), progress=False)
  assert time.perf_counter() - start < 10
  assert url in str(error.value)
  assert str(tmp_path / "test.r20.safetensors") in str(error.value)


class socket_closed_port:  # noqa: N801 (a context manager used like a function)
  """A port on 127.0.0.1 that nothing listens on."""

  def __enter__(self):
    import socket  # noqa: PLC0415
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    self.port = s.getsockname()[1]
    s.close()
    return self.port

  def __exit__(self, *exc):
    return False


# --- local files -----------------------------------------------------------------------------

def test_safetensors_loads_without_torch(weights_file):
  path, variables, _ = weights_file
  code = textwrap.dedent(f"""
      import sys
      sys.modules["torch"] = None  # any import of torch now fails
      import numpy as np, jax, jresnet
      net = jresnet.pretrained({path!r}, model=jresnet.CifarResNet20())
      x = np.zeros((1, 32, 32, 3), np.float32)
      print(float(np.abs(net.model.apply(net.variables, x)).sum()))
      try:
        jresnet.weights.read_state_dict({path!r}.replace(".safetensors", ".pth"))
      except FileNotFoundError:
        pass
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=deadline(20))
  assert out.returncode == 0, out.stderr
  expected = jresnet.CifarResNet20().apply(variables, np.zeros((1, 32, 32, 3), np.float32))
  np.testing.assert_allclose(float(out.stdout.split()[-1]), float(np.abs(expected).sum()),
                             rtol=1e-5)


def test_pth_without_torch_says_which_extra(tmp_path):
  (tmp_path / "w.pth").write_bytes(b"not read")
  code = textwrap.dedent(f"""
      import sys
      sys.modules["torch"] = None
      import jresnet
      jresnet.weights.read_state_dict({str(tmp_path / "w.pth")!r})
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=deadline(20))
  assert out.returncode != 0 and "jresnet[torch]" in out.stderr


def test_local_file_needs_a_model(weights_file):
  with pytest.raises(ValueError, match="model="):
    jresnet.pretrained(weights_file[0])


# --- models and weights by name --------------------------------------------------------------

def test_list_models_by_pattern():
  assert jresnet.list_models("resnet5*") == ["resnet50", "resnet50d"]
  assert jresnet.list_models("resnet50", pretrained=True) == [
      "resnet50.a1_in1k", "resnet50.tv2_in1k", "resnet50.tv_in1k"]
  assert jresnet.list_models(["wide_*", "resnext50*"]) == [
      "resnext50_32x4d", "wide_resnet101_2", "wide_resnet50_2"]
  assert jresnet.list_models(pretrained=True) == sorted(weights.REGISTRY)
  for name, entry in weights.REGISTRY.items():  # every registry name's architecture is listed
    assert jresnet.create_model(name) == entry.model(), name
  assert jresnet.create_model("wide_resnet50_2", num_classes=10) == jresnet.WideResNet50_2(
      num_classes=10)
  assert jresnet.create_model("cifar_preact_resnet164").depth == 164
  assert jresnet.factory.default_weights("resnet50") == "resnet50.a1_in1k"  # best top-1
  with pytest.raises(KeyError, match=r"did you mean resnet50"):
    jresnet.create_model("resnet51")
  with pytest.raises(KeyError, match=r"resnet50 has resnet50.a1_in1k, resnet50.tv2_in1k"):
    jresnet.create_model("resnet50.in22k")


def test_create_model_pretrained_with_a_new_head(server, weights_file, monkeypatch, tmp_path,
                                                 caplog):
  _, published, digest = weights_file  # a 10-class CIFAR ResNet-20
  entry = registry.Weights("cifar_resnet20.test", jresnet.CifarResNet20,
                           f"{server}/model.safetensors", digest, "safetensors", "test",
                           registry.EvalTransform(36, 32), 91.0, "this test")
  monkeypatch.setitem(weights.REGISTRY, entry.name, entry)
  bound = jresnet.create_model("cifar_resnet20", pretrained=True, num_classes=3,
                               cache=str(tmp_path), progress=False, key=7)
  assert isinstance(bound, jresnet.ResNet)  # the one type create_model returns
  model, variables = bound.unbind()
  assert model == jresnet.CifarResNet20(num_classes=3)
  assert "loaded all but the classifier" in caplog.text and "params/fc/kernel" in caplog.text
  assert "freshly initialised for 3 classes (the file's head has 10)" in caplog.text
  fresh_head = jresnet.init_variables(model, 7)["params"]["fc"]
  jax.tree.map(np.testing.assert_array_equal, variables["params"]["fc"], fresh_head)
  for collection in ("params", "batch_stats"):
    for stage in ("stem", "layer1", "layer3"):
      jax.tree.map(np.testing.assert_array_equal, variables[collection][stage],
                   published[collection][stage])
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
  np.testing.assert_array_equal(bound(x), model.apply(variables, x))  # evaluates
  for no_head in (0, None):
    backbone = jresnet.create_model("cifar_resnet20.test", pretrained=True, num_classes=no_head,
                                    cache=str(tmp_path))
    assert backbone.num_classes == 0 and "fc" not in backbone.variables["params"]
    net = jresnet.pretrained(weights_file[0], model=jresnet.CifarResNet20(), num_classes=no_head)
    assert net.model.num_classes == 0 and not net.fresh
    jax.tree.map(np.testing.assert_array_equal, net.variables,
                 {**published, "params": {k: v for k, v in published["params"].items()
                                          if k != "fc"}})


def test_head_mismatch_lists_each_tensor_once(weights_file):
  state_dict = weights.read_state_dict(weights_file[0])
  with pytest.raises(ValueError) as error:
    interop.from_torch(state_dict, jresnet.CifarResNet20(num_classes=3))
  message = str(error.value)
  assert message.count("fc.weight") == 1 and message.count("fc.bias") == 1
  assert "fc.weight: the state dict has shape (10, 64), the model needs (3, 64)" in message


def test_predict_takes_a_registry_name_and_prints_imagenet_class_names(
    server, imagenet_head_file, monkeypatch, tmp_path, capsys):
  """`python -m jresnet.predict <weights name> <images>`: the entry's weights, its transform, and
  the ImageNet-1k names of its classifier's top classes, as the probabilities rank them."""
  from PIL import Image  # noqa: PLC0415

  from jresnet import predict  # noqa: PLC0415

  entry = registry.Weights(
      "test.in1k", functools.partial(jresnet.CifarResNet20, num_classes=1000),
      f"{server}/in1k.safetensors", weights.sha256_of(imagenet_head_file), "safetensors", "test",
      registry.EvalTransform(36, 32), 91.0, "this test")
  monkeypatch.setitem(weights.REGISTRY, entry.name, entry)
  monkeypatch.setenv("JRESNET_CACHE", str(tmp_path / "cache"))
  image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  Image.fromarray(image).save(tmp_path / "cat.png")
  predict.main([entry.name, str(tmp_path / "cat.png"), "--top", "3"])
  printed = capsys.readouterr().out.strip()
  net = jresnet.pretrained(entry.name, progress=False)
  logits = net.model.apply(net.variables, net.transform(image)[None])
  probabilities = np.asarray(jax.nn.softmax(logits))[0]
  best = np.argsort(-probabilities)[:3]
  assert printed == f"{tmp_path / 'cat.png'}: " + ", ".join(
      f"{weights.IMAGENET_CLASSES[i]} {probabilities[i]:.4f}" for i in best)
