"""Checkpoints and exports as their readers meet them: readers that never write (beside a live
run), digests checked wherever a state is read (init_from, exports, predict), exports that heal,
garbled checkpoint metadata, a workdir deleted under a run, and damaged weights files."""

import functools
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import serialization
from tiny_config import build, initial_state, tiny_config

import jresnet
from jresnet import export, predict, weights
from jresnet.training import checkpoint as checkpoint_lib
from jresnet.training import evaluate, loop, pretrained
from jresnet.training.model import model_meta
from jresnet.training.state import TrainState
from jresnet.weights import registry

SMALL = functools.partial(jresnet.ResNet, stage_sizes=(1, 1), widths=(8, 16), family="cifar",
                          shortcut="B", num_classes=3)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished tiny run (checkpoints 3 and 6, evaluated at both, the export) and its final
  metrics; tests work on copies."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  metrics = loop.train_and_evaluate(tiny_config(), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  return workdir, metrics


def _copy(finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished[0], workdir)
  return workdir


def _files(directory):
  return {os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs}


def _flip_4_bytes(path, at=None):
  data = bytearray(open(path, "rb").read())
  at = len(data) // 2 if at is None else at
  for i in range(at, at + 4):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


# --- readers never write ----------------------------------------------------------------------

def test_readers_leave_a_save_in_progress_alone_and_read_the_newest_complete_step(
    finished, tmp_path, capsys):
  """What a live run's directory holds while it saves step 9: Orbax's temporary directory. Eval
  mode, init_from and saved_state read step 6 and change nothing, not even that directory."""
  workdir = _copy(finished, tmp_path)
  in_progress = workdir / "checkpoints" / "9.orbax-checkpoint-tmp"
  shutil.copytree(workdir / "checkpoints" / "6", in_progress)
  os.remove(in_progress / "state" / "manifest.ocdbt")  # half written
  before = _files(workdir)

  assert evaluate.evaluate_checkpoint(tiny_config(), str(workdir))["checkpoint"] == "6"
  assert before <= _files(workdir)  # the save in progress is still there
  assert f"evaluating checkpoint 6 of {workdir / 'checkpoints'}" in capsys.readouterr().out
  _, runner, _ = build(tiny_config())
  pretrained.initialise_from(str(workdir), runner.model, initial_state(tiny_config()),
                             runner.step_config.tx)
  assert before <= _files(workdir)
  reader = checkpoint_lib.Checkpoints(str(workdir / "checkpoints"), read_only=True)
  assert reader.all_steps() == [3, 6]
  reader.saved_state(6)
  with pytest.raises(PermissionError, match="read-only"):
    reader.save(initial_state(tiny_config()), {"model": model_meta(runner.model)})
  reader.close()
  assert _files(workdir) == before | {str(workdir / "eval_test_6.json")}  # eval mode's result


def test_a_reader_beside_a_run_that_deletes_its_old_checkpoints_reads_the_newest(tmp_path):
  """The reader listed steps 1 and 2; the run then saved 3 and 4 and deleted 1 and 2."""
  def state(step):
    rng = np.random.default_rng(step)
    return TrainState(step=jax.numpy.int32(step),
                      params={"w": jax.numpy.asarray(rng.standard_normal((8, 8), np.float32))},
                      batch_stats={}, opt_state={}, ema_params=None,
                      rng=jax.numpy.zeros(2, jax.numpy.uint32))
  meta = {"model": {"depth": 2}}
  writer = checkpoint_lib.Checkpoints(str(tmp_path / "checkpoints"), async_save=False)
  for step in (1, 2):
    writer.save(state(step), meta)
  reader = checkpoint_lib.Checkpoints(str(tmp_path / "checkpoints"), read_only=True)
  assert reader.all_steps() == [1, 2]
  for step in (3, 4):
    writer.save(state(step), meta)
  writer.close()
  step, restored = reader.restore_newest(state(0), meta)
  reader.close()
  assert step == 4
  np.testing.assert_array_equal(restored.params["w"], state(4).params["w"])
  assert not (tmp_path / "checkpoints.corrupt").exists()


def test_a_misspelled_init_from_creates_nothing(tmp_path):
  missing = tmp_path / "no_such_run"
  with pytest.raises(FileNotFoundError) as error:
    loop.train_and_evaluate(tiny_config(init_from=str(missing)), str(tmp_path / "run"))
  assert not missing.exists()
  assert str(error.value).startswith(f"init_from={missing}: no such directory; give a run's "
                                     "workdir, a weights file (.pth, .pt, .bin, .safetensors)")


# --- digests wherever a state is read ---------------------------------------------------------

def test_init_from_refuses_a_checkpoint_that_differs_from_its_digests_naming_its_step(
    finished, tmp_path):
  """One array of checkpoint 6 no longer has the sha256 recorded when it was saved (what flipped
  bytes in a stored array give; Orbax's own decoding catches flips in its compressed files)."""
  workdir = _copy(finished, tmp_path)
  meta_file = workdir / "checkpoints" / "6" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  kernel = "params/layer2/block0/conv2/kernel"
  meta["digests"][kernel] = hashlib.sha256(b"other bytes").hexdigest()
  meta_file.write_text(json.dumps(meta))
  _, runner, _ = build(tiny_config())
  with pytest.raises(checkpoint_lib.CorruptCheckpointError,
                     match=rf"^init_from: checkpoint {workdir}/checkpoints/6 does not read back: "
                           rf"ValueError: 1 array\(s\) differ from their sha256 at saving "
                           rf"\({kernel}\)\. Resume that run once"):
    pretrained.initialise_from(str(workdir), runner.model, initial_state(tiny_config()),
                               runner.step_config.tx)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]  # a reader moves nothing
  assert not (workdir / "checkpoints.corrupt").exists()


def test_an_export_with_flipped_bytes_is_refused_by_name(finished, tmp_path, caplog):
  good = (finished[0] / loop.EXPORT_FILE).read_bytes()
  variables = export.load(str(finished[0] / loop.EXPORT_FILE)).variables
  kernel = variables["params"]["layer2"]["block0"]["conv2"]["kernel"]
  path = tmp_path / "model.msgpack"
  path.write_bytes(good)
  _flip_4_bytes(path, at=good.find(kernel.tobytes()) + kernel.nbytes // 2)
  damaged = (rf"{path} is damaged: 1 part\(s\) differ from the sha256 recorded at export "
             r"\(params/layer2/block0/conv2/kernel\); export the model again")
  with pytest.raises(export.ExportError, match=damaged):
    export.load(str(path))
  with pytest.raises(export.ExportError, match=damaged):
    predict.main([str(path), str(tmp_path)])

  # An export written before digests were recorded: loaded, unchecked, with a warning.
  payload = serialization.msgpack_restore(good)
  del payload["sha256"]
  path.write_bytes(serialization.msgpack_serialize(payload))
  old = export.load(str(path))
  assert old.digests is None
  jax.tree.map(np.testing.assert_array_equal, old.variables, variables)
  assert [r.getMessage() for r in caplog.records if "records no sha256" in r.getMessage()] == [
      f"{path} records no sha256 (written by an older jresnet): loaded unchecked; export the "
      "model again (train.py rewrites model.msgpack from the final checkpoint when run again on "
      "its workdir; or jresnet.export.save) to have it checked"]


# --- exports heal -----------------------------------------------------------------------------

def test_a_finished_run_rewrites_a_missing_damaged_or_foreign_export(finished, tmp_path, capsys):
  workdir = _copy(finished, tmp_path)
  path = workdir / loop.EXPORT_FILE
  good = path.read_bytes()
  leftover = workdir / f"{loop.EXPORT_FILE}.tmp-4242"  # a save killed before its rename
  leftover.write_bytes(b"")
  other = export.load(str(path))
  damages = {
      "missing": lambda: os.remove(path),
      "damaged": lambda: _flip_4_bytes(path),
      "not the final checkpoint's model": lambda: export.save(
          str(path), other.model, jax.tree.map(lambda x: x + 1, other.variables)),
  }
  for problem, damage in damages.items():
    damage()
    assert loop.train_and_evaluate(tiny_config(), str(workdir)) == finished[1]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path} was {problem}: rewrote it from the final checkpoint (step 6)"
    assert out[1].startswith(f"already finished: {workdir} holds the final checkpoint (step 6)")
    assert path.read_bytes() == good, problem  # the export the run wrote, bitwise
    assert not leftover.exists()
  loop.train_and_evaluate(tiny_config(), str(workdir))  # intact: only "already finished"
  assert capsys.readouterr().out.startswith("already finished")


def test_a_workdir_deleted_during_training_stops_the_run_at_the_next_log_step(
    tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  check_finite = loop.check_finite

  def deleting_at_step_2(step, *args):
    if step == 2:
      shutil.rmtree(workdir)
    return check_finite(step, *args)
  monkeypatch.setattr(loop, "check_finite", deleting_at_step_2)
  with pytest.raises(RuntimeError, match=rf"^{workdir} was deleted or replaced during "
                     r"training \(noticed at step 2\): stopped"):
    loop.train_and_evaluate(tiny_config(), str(workdir))
  assert not workdir.exists()  # nothing written there after it went


# --- garbled checkpoint metadata --------------------------------------------------------------

def test_garbled_metadata_of_the_final_checkpoint_is_named_and_the_run_resumes_before_it(
    finished, tmp_path, caplog):
  """The reader skips it and leaves it; the lock holder moves it aside, resumes from step 3 and
  finishes as the first run did: the same final metrics and export, bitwise."""
  workdir = _copy(finished, tmp_path)
  (workdir / "checkpoints" / "6" / "meta" / "metadata").write_bytes(b'{"model": {"dep')
  named = f"checkpoint {workdir}/checkpoints/6 does not read back: JSONDecodeError"

  assert evaluate.evaluate_checkpoint(tiny_config(), str(workdir))["checkpoint"] == "3"
  assert any(named in r.getMessage() and "left in place" in r.getMessage()
             for r in caplog.records)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]

  caplog.clear()
  assert loop.train_and_evaluate(tiny_config(), str(workdir)) == finished[1]
  warnings = [r.getMessage() for r in caplog.records if "does not read back" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith(named)
  assert warnings[0].endswith(f"moved to {workdir}/checkpoints.corrupt/6, trying the checkpoint "
                              "before it")
  assert os.listdir(workdir / "checkpoints.corrupt") == ["6"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert (workdir / loop.EXPORT_FILE).read_bytes() == (finished[0] / loop.EXPORT_FILE).read_bytes()


# --- weights files ----------------------------------------------------------------------------

def test_init_from_a_garbage_safetensors_file_names_it_in_one_line(tmp_path):
  bad = tmp_path / "weights.safetensors"
  bad.write_bytes(b"not a safetensors file" * 8)
  with pytest.raises(ValueError, match=rf"^{bad} does not load \(SafetensorError: .*\): it "
                     "is truncated, damaged or not a weights file$"):
    pretrained.initialise_from(str(bad), SMALL(), None, None)


def _digest_less_entry():
  return registry.Weights("test.small", SMALL, "http://127.0.0.1:9/unused", None, "safetensors",
                          "test", registry.EvalTransform(8, 8), 50.0, "this test")


def test_a_digest_less_entry_never_pins_a_file_of_another_architecture(tmp_path):
  """An entry without a sha256 on record whose cached file loads but is another architecture's:
  moved aside, its digest not recorded (a later, right file is what gets pinned)."""
  entry = _digest_less_entry()
  cached = tmp_path / entry.file_name
  wider = SMALL(widths=(8, 24))
  weights.save_safetensors(str(cached), jresnet.init_variables(wider, 0), wider)
  with pytest.raises(weights.CorruptWeightsError,
                     match=rf"{cached} does not fit test.small's architecture \(\d+ tensor\(s\) "
                           rf"differ, first: .*\); moved to {cached}.corrupt"):
    weights.read_registered(entry, cache=str(tmp_path), progress=False)
  assert os.listdir(tmp_path) == [f"{entry.file_name}.corrupt"]  # no .sha256 recorded


def test_failed_retries_keep_one_aside_copy_per_file_the_newest(tmp_path):
  entry = _digest_less_entry()
  for attempt in (b"garbage 1", b"garbage 2", b"garbage 3"):
    (tmp_path / entry.file_name).write_bytes(attempt)
    with pytest.raises(weights.CorruptWeightsError, match=rf"{entry.file_name} does not load"):
      weights.read_registered(entry, cache=str(tmp_path), progress=False)
  assert os.listdir(tmp_path) == [f"{entry.file_name}.corrupt"]
  assert (tmp_path / f"{entry.file_name}.corrupt").read_bytes() == b"garbage 3"
