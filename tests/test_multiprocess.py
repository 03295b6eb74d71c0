"""Scale-out: train.py as 2 processes x 2 CPU devices (jax.distributed on 127.0.0.1, gloo
collectives) against 1 process x 4 devices on the same global batch, checkpoints crossing
between the two (with replicas too), and BatchNorm statistics over groups of devices (BN span)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import deadline

import jresnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = "--config.num_train_steps=9"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train(workdir, processes: int, devices_per_process: int, *flags) -> str:
  """Runs train.py on the tiny config as `processes` local processes; returns process 0's output
  once all have exited."""
  port = _free_port()
  procs = []
  for i in range(processes):
    env = {**os.environ,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, "train.py", "--config", "tests/tiny_config.py", "--workdir",
         str(workdir), TOTAL, "--config.checkpoint_every_steps=3", *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = []
  for p in procs:
    out, _ = p.communicate(timeout=deadline(100))
    assert p.returncode == 0, out
    outputs.append(out)
  return outputs[0]


def _losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_two_processes_match_one_process_and_checkpoints_cross(tmp_path):
  """Steps 1-6: 2 processes x 2 devices against 1 process x 4. Steps 7-9: each resumes the
  other's checkpoint, so both runs are one uninterrupted run only if restores cross exactly. The
  second run trains 2 replicas (seeds 0 and 1): its replica 0 is the first run, and process 0
  alone writes every replica's export."""
  losses = []
  for first, then, replicas in [((2, 2), (1, 4), 1), ((1, 4), (2, 2), 2)]:
    workdir = tmp_path / f"{first[0]}_then_{then[0]}"
    flag = f"--config.replicas={replicas}"
    _train(workdir, *first, flag, "--config.stop_after_steps=6")
    assert max(int(d) for d in os.listdir(workdir / "checkpoints")) == 6
    out = _train(workdir, *then, flag)
    assert f"resumed from {workdir}/checkpoints/6" in out and "from step 6 on 4 device(s)" in out
    with open(workdir / "metrics.jsonl") as f:
      rows = [r for r in map(json.loads, f) if r["split"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, 10))
    losses.append([[r[f"loss_r{i}"] for i in range(replicas)] if replicas > 1 else [r["loss"]]
                   for r in rows])
  # Equal up to the order of the cross-device sums: overlapping or missing shards would change
  # the global batch, and with it every loss; so would a restore that lost or moved anything.
  one, two = np.asarray(losses[0]), np.asarray(losses[1])
  assert one[0, 0] > 1.0 and two[0, 0] != two[0, 1]  # (replica 1 is another seed's run)
  np.testing.assert_allclose(one[:, 0], two[:, 0], rtol=1e-5)
  assert {"model.msgpack", "model.r0.msgpack", "model.r1.msgpack"} <= set(
      os.listdir(tmp_path / "1_then_2"))


def test_bn_span_normalises_over_groups_of_devices():
  assert jax.device_count() == 8
  groups = [[0, 1], [2, 3], [4, 5], [6, 7]]
  model = jresnet.ResNet(stage_sizes=(1,), widths=(8,), family="cifar", shortcut="B",
                         num_classes=4)
  x = jax.random.normal(jax.random.key(0), (8, 2, 8, 8, 3)) * jnp.arange(1, 9)[:, None, None,
                                                                                 None, None]
  variables = model.init(jax.random.key(1), x[0])
  spanned = model.clone(axis_name="batch", axis_index_groups=groups)
  out, stats = jax.pmap(lambda v, x: spanned.apply(v, x, train=True, mutable=["batch_stats"]),
                        axis_name="batch", in_axes=(None, 0))(variables, x)
  for a, b in groups:  # each group = one BatchNorm batch of its two shards
    group_out, group_stats = model.apply(variables, jnp.concatenate([x[a], x[b]]), train=True,
                                         mutable=["batch_stats"])
    np.testing.assert_allclose(jnp.concatenate([out[a], out[b]]), group_out, rtol=1e-4,
                               atol=1e-5)
    jax.tree.map(lambda s, r, a=a: np.testing.assert_allclose(s[a], r, rtol=1e-4, atol=1e-6),
                 stats, group_stats)
  # ...and not one batch of all eight: groups with different input scales differ.
  assert np.abs(stats["batch_stats"]["stem"]["bn1"]["var"][0]
                - stats["batch_stats"]["stem"]["bn1"]["var"][6]).max() > 1e-2


def test_bn_span_requires_pmap_and_a_divisor_of_the_devices():
  from jresnet.training import parallel  # noqa: PLC0415
  with pytest.raises(ValueError, match="needs parallel='pmap'"):
    parallel.create("jit", None, bn_span=2)
  with pytest.raises(ValueError, match="must divide the 8 devices"):
    parallel.bn_groups(3)


# --- faults surface in seconds, in words ------------------------------------------------------

def _spawn(workdir, process_id: int, port: int, *flags) -> subprocess.Popen:
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
         "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
         "JAX_PROCESS_ID": str(process_id)}
  return subprocess.Popen(
      [sys.executable, "train.py", "--config", "tests/tiny_config.py", "--workdir", str(workdir),
       *flags], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_process_whose_job_never_completes_says_whom_it_waits_for_and_gives_up_in_one_line(
    tmp_path):
  """Process 1 of 2, with no process 0: one line before it waits, one line when it gives up,
  exit 1, and no C++ abort (JAX's own deadline comes later)."""
  proc = _spawn(tmp_path / "run", 1, _free_port(),
                "--config.distributed.initialization_timeout_s=2")
  out, _ = proc.communicate(timeout=deadline(30))
  assert proc.returncode == 1, out
  assert "process 1 of 2: waiting up to 2 s for the coordinator at 127.0.0.1:" in out
  last = out.strip().splitlines()[-1]
  assert last.startswith("error: process 1 of 2: ") and "did not all join within 2 s" in last
  assert "Traceback" not in out and "Check failure" not in out
  assert not (tmp_path / "run").exists()  # nothing was written


def test_when_a_process_is_killed_the_other_names_it_and_exits_within_the_heartbeat_timeout(
    tmp_path):
  """SIGKILL of process 1 mid-run: process 0 exits with one line naming process 1, within about
  the heartbeat timeout (here 3 s), instead of hanging or aborting minutes later. (JAX's own error
  poller may still log the lost heartbeats and end the process first, after that line.)"""
  workdir = tmp_path / "run"
  port = _free_port()
  flags = ("--config.num_train_steps=100000", "--config.log_every_steps=1",
           "--config.checkpoint_every_steps=100000", "--config.distributed.heartbeat_timeout_s=3")
  procs = [_spawn(workdir, i, port, *flags) for i in range(2)]
  metrics = workdir / "metrics.jsonl"
  give_up = time.monotonic() + deadline(60)
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    assert time.monotonic() < give_up and all(p.poll() is None for p in procs), "no training"
    time.sleep(0.2)
  procs[1].kill()
  killed = time.monotonic()
  out, _ = procs[0].communicate(timeout=deadline(20))
  took = time.monotonic() - killed
  procs[1].communicate()
  assert procs[0].returncode != 0, out
  assert "\nerror: process 0 of 2: lost process 1 of this job (JaxRuntimeError); restart the " \
      "whole job, every process" in out, out[-3000:]
  assert "Traceback" not in out
  print(f"process 0 exited {took:.1f} s after process 1 was killed (heartbeat timeout 3 s)")
  assert took < deadline(3)


# --- one SIGTERM stops every process at the same step ---------------------------------------

AGREED = ("--config.num_train_steps=40", "--config.eval_every_steps=1000")


def _job(workdir, port: int, save_every: int = 1000) -> list[subprocess.Popen]:
  return [_spawn(workdir, i, port, *AGREED, f"--config.checkpoint_every_steps={save_every}")
          for i in range(2)]


def _finish(procs) -> list[str]:
  outputs = []
  for proc in procs:
    out, _ = proc.communicate(timeout=deadline(100))
    assert proc.returncode == 0, out
    outputs.append(out)
  return outputs


def _logged_steps(workdir) -> int:
  path = workdir / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted_losses(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _finish(_job(workdir, _free_port()))
  return _losses(workdir)


@pytest.mark.parametrize("signalled,save_every", [((1,), 1000), ((0, 1), 2)],
                         ids=["one-process", "both-skewed-while-saving"])
def test_sigterm_on_any_process_stops_the_job_at_one_step_and_resumes_exactly(
    tmp_path, signalled, save_every, uninterrupted_losses):
  """SIGTERM to process 1 alone, or to both 0.3 s apart while checkpoints are saved every 2
  steps: both processes stop at the same step, save its checkpoint together and exit 0; the
  restarted job's per-step losses equal an uninterrupted job's, bit for bit."""
  workdir = tmp_path / "stopped"
  procs = _job(workdir, _free_port(), save_every)
  give_up = time.monotonic() + deadline(60)
  while _logged_steps(workdir) < 3:
    assert time.monotonic() < give_up and all(p.poll() is None for p in procs), "no training"
    time.sleep(0.05)
  for i, process_id in enumerate(signalled):
    if i:
      time.sleep(0.3)
    procs[process_id].send_signal(signal.SIGTERM)
  out = _finish(procs)[0]
  last = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert last < 40 and f"stopped after {last} steps, at step {last} of 40 (SIGTERM)" in out, out
  _finish(_job(workdir, _free_port(), save_every))
  assert _losses(workdir) == uninterrupted_losses  # every step, bitwise (JSON keeps float64)


@pytest.mark.parametrize("flag,field", [
    ("--config.seed=1", "seed=1 (process 0: 0)"),
    ("--config.batch_size=32", "batch_size=32 (process 0: 16)")])
def test_processes_started_with_different_configs_are_refused_before_anything_is_written(
    tmp_path, flag, field):
  port = _free_port()
  procs = [_spawn(tmp_path / "run", 0, port), _spawn(tmp_path / "run", 1, port, flag)]
  for proc in procs:
    out, _ = proc.communicate(timeout=deadline(60))
    assert proc.returncode == 1, out
    assert f"the processes of this job were started differently: process 1 has {field}" in out
    assert "Traceback" not in out
  assert not (tmp_path / "run").exists()
