"""A run's own reliability: the workdir lock under races and across PID namespaces, records that
survive a torn line, a resume that is the same run, SIGTERM at every moment of start-up, and
nonsense config values refused before the workdir is touched."""

import builtins
import fcntl
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import deadline
from tiny_config import tiny_config

from jresnet.training import huge_pages, loop, run_config, workdir_lock
from jresnet.training.records import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# --- the workdir lock -----------------------------------------------------------------------

def _with_jitter(function):
  """`function`, called after a random pause of up to 2 ms: the racers' file operations
  interleave in many orders, not in the one a quiet machine favours."""
  def jittered(*args, **kwargs):
    time.sleep(random.uniform(0, 0.002))
    return function(*args, **kwargs)
  return jittered


def _race_for_the_lock(workdir, trials, start, tried, done, outcomes):
  """One racer: in each trial, tries to take the lock together with the others, holds it until
  every racer has tried, then gives it back. Every file-system call it makes pauses first."""
  for name in ("open", "link", "rename", "remove", "stat", "fstat", "kill", "close", "pread",
               "pwrite", "ftruncate"):
    setattr(os, name, _with_jitter(getattr(os, name)))
  builtins.open = _with_jitter(builtins.open)
  fcntl.flock = _with_jitter(fcntl.flock)
  for _ in range(trials):
    start.wait()
    lock = None
    try:
      lock = workdir_lock.acquire(workdir)
      outcome = "won"
    except workdir_lock.WorkdirLockedError:
      outcome = "refused"
    except Exception as e:  # noqa: BLE001 (reported to the test, which names it)
      outcome = f"{type(e).__name__}: {e}"
    outcomes.put(outcome)
    tried.wait()
    if lock:
      workdir_lock.release(lock)
    done.wait()


def test_racers_for_a_stale_lock_take_it_one_at_a_time(tmp_path):
  """4 processes start together on a lock left by a dead run, 60 times: each time exactly one
  takes it over and the others are refused."""
  racers, trials = 4, 60
  workdir = str(tmp_path)
  stale = json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "earlier"})
  context = multiprocessing.get_context("spawn")
  start, tried, done = (context.Barrier(racers + 1, timeout=deadline(30)) for _ in range(3))
  outcomes = context.Queue()
  procs = [context.Process(target=_race_for_the_lock,
                           args=(workdir, trials, start, tried, done, outcomes))
           for _ in range(racers)]
  for proc in procs:
    proc.start()
  try:
    for trial in range(trials):
      (tmp_path / workdir_lock.LOCK_FILE).write_text(stale)
      start.wait()
      tried.wait()
      got = sorted(outcomes.get(timeout=deadline(10)) for _ in range(racers))
      done.wait()
      assert got == ["refused"] * (racers - 1) + ["won"], f"trial {trial}: {got}"
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # the last winner removed it
  finally:
    for barrier in (start, tried, done):
      barrier.abort()  # (after a failure: the racers stop waiting)
    for proc in procs:
      proc.join(timeout=deadline(10))
      if proc.is_alive():
        proc.kill()


HOLD_AND_DIE = """
import os, sys
from jresnet.training import workdir_lock
workdir_lock.acquire(sys.argv[1])
print(os.getpid(), flush=True)
os._exit(0)  # no release: the record stays, as after a SIGKILL
"""


def _unshare_unavailable() -> str | None:
  if shutil.which("unshare") is None:
    return "no unshare command"
  out = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, text=True)
  return f"unshare --pid fails here: {out.stderr.strip()}" if out.returncode else None


def test_a_lock_held_in_another_pid_namespace_is_free_once_its_holder_died(tmp_path, caplog):
  """A container's run is PID 1 in its namespace; it dies, and its restart (PID 1 again, in a
  fresh namespace) and a run outside both take the lock over without a person."""
  if reason := _unshare_unavailable():
    pytest.skip(reason)
  for attempt in ("first container", "restarted container"):
    out = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", HOLD_AND_DIE,
                          str(tmp_path)], capture_output=True, text=True,
                         timeout=deadline(30))
    assert out.returncode == 0, f"{attempt}: {out.stderr}"
    assert out.stdout.split() == ["1"]
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == 1
  lock = workdir_lock.acquire(str(tmp_path))
  assert any("from process 1 on" in r.getMessage() and "without releasing" in r.getMessage()
             for r in caplog.records)
  workdir_lock.release(lock)
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


# --- a resumed run: its records and its config --------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
  """A tiny run stopped at step 2 of 6 (checkpoint 2, records of steps 1 and 2)."""
  workdir = tmp_path_factory.mktemp("stopped") / "run"
  loop.train_and_evaluate(tiny_config(stop_after_steps=2), str(workdir))
  return workdir


@pytest.fixture
def stopped(stopped_run, tmp_path):
  """A copy of `stopped_run` for one test to resume or damage."""
  return shutil.copytree(stopped_run, tmp_path / "run")


def _files(workdir) -> dict:
  return {str(path.relative_to(workdir)): path.read_bytes()
          for path in sorted(workdir.rglob("*")) if path.is_file()}


def test_a_torn_last_metrics_line_is_dropped_with_a_note_on_resume(stopped, capsys):
  metrics = stopped / "metrics.jsonl"
  with open(metrics, "a") as f:
    f.write('{"step": 3, "split": "train", "lo')  # a full disk's last write
  loop.train_and_evaluate(tiny_config(), str(stopped))
  notes = [line for line in capsys.readouterr().out.splitlines() if "dropped its torn" in line]
  assert notes == [f"{metrics}: dropped its torn last line ('{{\"step\": 3, \"split\": "
                   "\"train\", \"lo')"]
  assert [r["step"] for r in read_metrics(metrics) if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_damaged_metrics_line_before_the_last_is_named_and_nothing_is_touched(stopped):
  metrics = stopped / "metrics.jsonl"
  lines = metrics.read_text().splitlines(keepends=True)
  metrics.write_text(lines[0] + "\x00\x00garbage\n" + "".join(lines[1:]))
  before = _files(stopped)
  with pytest.raises(ValueError) as refused:
    loop.train_and_evaluate(tiny_config(), str(stopped))
  assert str(refused.value).startswith(f"{metrics}, line 2, holds no metrics record (")
  assert "\n" not in str(refused.value)
  assert _files(stopped) == before


@pytest.mark.parametrize("overrides, named", [
    ({"batch_size": 32}, ["batch_size: stored 16, given 32"]),
    ({"seed": 1}, ["seed: stored 0, given 1"]),
    ({"num_train_steps": 8}, ["num_train_steps: stored 6, given 8"]),
    ({"num_train_steps": None, "num_epochs": 2.0},
     ["num_epochs: stored 30.0, given 2.0", "num_train_steps: stored 6, given 8"]),
    ({"schedule.warmup_epochs": 1.0}, ["schedule.warmup_epochs: stored 0.0, given 1.0"]),
    ({"schedule.name": "constant"}, ["schedule.name: stored 'cosine', given 'constant'"]),
    ({"optimizer.learning_rate": 0.2}, ["learning_rate_resolved: stored 0.1, given 0.2",
                                        "optimizer.learning_rate: stored 0.1, given 0.2"]),
])
def test_a_resume_that_would_change_the_computation_is_refused(stopped, overrides, named):
  before = _files(stopped)
  with pytest.raises(ValueError) as refused:
    loop.train_and_evaluate(tiny_config(**overrides), str(stopped))
  message = str(refused.value)
  assert f"holds a run with other values ({'; '.join(named)}): a resumed run is the same run" \
      in message
  assert f"--config.init_from={stopped}" in message and "\n" not in message
  assert _files(stopped) == before  # config.json kept; nothing written, nothing compiled


def test_flags_that_change_no_computation_stay_free_and_config_json_is_kept(stopped):
  stored = (stopped / "config.json").read_bytes()
  free = {"log_every_steps": 2, "eval_every_steps": 2, "checkpoint_every_steps": 1,
          "keep_checkpoints": 3, "stop_after_steps": 1, "eval_batch_size": 8,
          "compilation_cache_dir": "", "data.threads": 2, "data.prefetch": 1,
          "distributed.heartbeat_timeout_s": 5}
  loop.train_and_evaluate(tiny_config(**free), str(stopped))
  assert (stopped / "checkpoints" / "3").is_dir()  # resumed: one more step, as asked
  assert (stopped / "config.json").read_bytes() == stored
  assert set(free) <= set(run_config.FREE_FIELDS)


# --- SIGTERM at every moment of start-up --------------------------------------------------------

def _catches_sigterm(pid: int) -> bool:
  """Whether process `pid` has a handler for SIGTERM installed (its SigCgt mask in /proc)."""
  with open(f"/proc/{pid}/status") as f:
    caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", f.read()).group(1), 16)
  return bool(caught >> (signal.SIGTERM - 1) & 1)


def _re_executed(pid: int) -> bool:
  """Whether process `pid` runs the program that the huge-pages exec started."""
  with open(f"/proc/{pid}/environ", "rb") as f:
    return f"{huge_pages.TUNABLE}=1".encode() in f.read()


def _when(condition, proc) -> None:
  until = time.time() + deadline(30)
  while not condition(proc.pid):
    assert proc.poll() is None and time.time() < until, proc.communicate()[0]
    time.sleep(0.001)


MOMENTS = {  # what to wait for before the SIGTERM
    "first line run": lambda proc: _when(_catches_sigterm, proc),
    "just after the re-exec": lambda proc: _when(_re_executed, proc),
    "imports after the re-exec": lambda proc: (
        _when(lambda pid: _re_executed(pid) and _catches_sigterm(pid), proc), time.sleep(0.3)),
}


@pytest.mark.parametrize("moment, resumed", [
    ("first line run", False), ("just after the re-exec", False),
    ("imports after the re-exec", True)])
def test_sigterm_at_any_moment_of_start_up_exits_0_saying_what_is_saved(
    stopped_run, tmp_path, moment, resumed):
  """As soon as train.py runs its first line, a SIGTERM stops it with exit 0 before a step is
  trained, whether it arrives before the huge-pages exec, in the instant after it (before the new
  program has a handler) or during its imports; and the last line says what the workdir holds.
  (Before Python runs train.py's first line, a SIGTERM kills the process: nothing has started.)"""
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JRESNET_HUGE_PAGES")}
  if moment != "first line run" and not huge_pages.needs_exec(env, huge_pages.glibc_version(),
                                                              huge_pages.thp_mode()):
    pytest.skip("train.py does not re-execute itself on this machine")
  workdir = shutil.copytree(stopped_run, tmp_path / "run") if resumed else tmp_path / "run"
  before = sorted(os.listdir(workdir / "checkpoints")) if resumed else []
  proc = subprocess.Popen([sys.executable, "train.py", "--config", "tests/tiny_config.py",
                           "--workdir", str(workdir)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  MOMENTS[moment](proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=deadline(60))
  assert proc.returncode == 0, out
  assert "SIGTERM during start-up: stopped before training" in out
  said = (f"checkpoint at step 2 in {workdir}: run the same command to resume" if resumed
          else f"no checkpoint saved in {workdir}")
  assert out.rstrip().endswith(said), out
  assert sorted(os.listdir(workdir / "checkpoints")) == before


# --- nonsense config values: one line naming the field and its range, nothing written -----------

@pytest.mark.parametrize("overrides, named", [
    ({"data.image_size": -4}, r"data.image_size=-4 must be positive, in \(0, inf\)"),
    ({"data.image_size": 0}, r"data.image_size=0 must be positive, in \(0, inf\)"),
    ({"model.width_multiplier": 0.0},
     r"model.width_multiplier=0.0 must be positive, in \(0, inf\)"),
    ({"model.widths": (8, 0)}, r"model.widths=\(8, 0\) must be positive, in \(0, inf\)"),
    ({"num_epochs": math.inf, "num_train_steps": None},
     r"num_epochs=inf must be positive, in \(0, inf\)"),
    ({"num_epochs": math.nan, "num_train_steps": None},
     r"num_epochs=nan must be positive, in \(0, inf\)"),
    ({"num_epochs": -1.0}, r"num_epochs=-1.0 must be in \[0, inf\)"),
    ({"optimizer.learning_rate": math.nan}, r"optimizer.learning_rate=nan must be in \[0, inf\)"),
    ({"schedule.warmup_epochs": math.inf}, r"schedule.warmup_epochs=inf must be in \[0, inf\)"),
    ({"optimizer.momentum": -0.5}, r"optimizer.momentum=-0.5 must be in \[0, 1\)"),
    ({"label_smoothing": 1.5}, r"label_smoothing=1.5 must be in \[0, 1\)"),
    ({"seed": 2**31}, r"seed=2147483648 must be in \[0, 2147483647\]"),
])
def test_nonsense_config_values_are_refused_in_one_line_before_the_workdir(
    tmp_path, overrides, named):
  with pytest.raises(ValueError, match=rf"^{named} \(config fields out of range\)$"):
    loop.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
