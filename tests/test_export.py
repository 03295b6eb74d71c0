"""The inference export: class names and eval transform recorded, predict, the predict command,
atomic writes, and a damaged file refused by name."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

import jresnet
from jresnet import export, predict
from jresnet.weights import EvalTransform

MODEL = jresnet.ResNet(stage_sizes=(1, 1), widths=(8, 16), family="cifar", shortcut="B",
                       num_classes=3)
CLASSES = ("cat", "dog", "eel")
TRANSFORM = EvalTransform(resize=8, crop=8, keep_aspect=False, mean=(0.5, 0.4, 0.3),
                          std=(0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  variables = jresnet.init_variables(MODEL, 0)
  variables = jax.tree.map(lambda v: v + 0.05, variables)  # away from zero gamma: varied logits
  path = str(tmp_path_factory.mktemp("export") / "model.msgpack")
  export.save(path, MODEL, variables, class_names=CLASSES, transform=TRANSFORM)
  return path, variables


def test_export_carries_classes_and_transform_and_predicts(exported):
  path, variables = exported
  loaded = export.load(path)
  model, loaded_variables = loaded  # the old form still unpacks
  assert export.model_kwargs(model) == export.model_kwargs(MODEL)
  assert loaded.class_names == CLASSES and loaded.transform == TRANSFORM
  jax.tree.map(np.testing.assert_array_equal, loaded_variables, variables)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (10, 12, 3), np.uint8), rng.integers(0, 256, (8, 8, 3), np.uint8)]
  probabilities = loaded.predict(images)
  x = np.stack([TRANSFORM(image) for image in images])
  np.testing.assert_allclose(probabilities, jax.nn.softmax(MODEL.apply(variables, x)), rtol=1e-5)
  np.testing.assert_allclose(
      x[1], (images[1] / 255.0 - np.array(TRANSFORM.mean)) / np.array(TRANSFORM.std), atol=1e-6)
  best = loaded.top_k(images, k=2)
  assert [name for name, _ in best[0]] == [CLASSES[i] for i in np.argsort(-probabilities[0])[:2]]


def test_predict_command_prints_the_top_classes(exported, tmp_path, capsys):
  rng = np.random.default_rng(1)
  (tmp_path / "pics" / "sub").mkdir(parents=True)
  for name in ("a.png", "sub/b.jpg"):
    Image.fromarray(rng.integers(0, 256, (9, 7, 3), np.uint8)).save(tmp_path / "pics" / name)
  predict.main([exported[0], str(tmp_path / "pics")])
  lines = capsys.readouterr().out.strip().splitlines()
  assert [line.split(":")[0] for line in lines] == [
      str(tmp_path / "pics" / "a.png"), str(tmp_path / "pics" / "sub" / "b.jpg")]
  for line in lines:
    shown = line.split(": ", 1)[1].split(", ")
    assert sorted(s.split()[0] for s in shown) == sorted(CLASSES)  # 3 classes: all of them
    assert abs(sum(float(s.split()[1]) for s in shown) - 1) < 1e-3


def test_export_is_atomic_and_a_damaged_file_is_named(exported, tmp_path, monkeypatch):
  path, variables = exported
  good = open(path, "rb").read()
  target = tmp_path / "model.msgpack"
  target.write_bytes(good)

  def crash(payload):
    raise KeyboardInterrupt  # killed while serialising
  monkeypatch.setattr(export.serialization, "msgpack_serialize", crash)
  with pytest.raises(KeyboardInterrupt):
    export.save(str(target), MODEL, variables)
  assert target.read_bytes() == good  # the previous export is intact
  assert os.listdir(tmp_path) == ["model.msgpack"]
  monkeypatch.undo()

  target.write_bytes(good[:len(good) // 2])  # truncated
  with pytest.raises(export.ExportError, match=r"model\.msgpack is not a readable jresnet export"
                                               r".*export the model again"):
    export.load(str(target))
  assert os.listdir(tmp_path) == ["model.msgpack"]  # no temporary file left behind


def test_every_model_field_survives_the_export(tmp_path):
  """The architecture comes back equal, tuple fields included (JSON stores them as lists), and
  usable as jit's static argument: a backbone with `features_only` and `out_indices`, padded as
  flax's examples/imagenet pads."""
  model = MODEL.clone(num_classes=0, features_only=True, out_indices=(0, 2), padding="same")
  variables = jresnet.init_variables(model, 0)
  path = str(tmp_path / "backbone.msgpack")
  export.save(path, model, variables)
  loaded = export.load(path)
  assert export.model_kwargs(loaded.model) == export.model_kwargs(model)
  assert loaded.model.out_indices == (0, 2)
  x = np.ones((1, 8, 8, 3), np.float32)
  for got, want in zip(jax.jit(loaded.model.apply)(loaded.variables, x), model.apply(variables, x)):
    np.testing.assert_array_equal(got, want)
