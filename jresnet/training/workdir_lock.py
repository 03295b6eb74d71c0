"""One training run per workdir: `<workdir>/train.lock` names the process that holds it.

The lock file is created atomically (a hard link of a complete temporary file, which fails if the
lock exists), so two runs started together cannot both take it. A second run stops at once,
naming the PID and host that hold it. A lock left by a run that died (its PID is gone on this
host) is taken over with a note. In a multi-process job process 0 takes the lock for the whole
job and tells the others whether it got it. Only local paths are locked (not gs:// and the like).
"""

import contextlib
import json
import logging
import os
import socket
import time

import jax
import numpy as np

LOCK_FILE = "train.lock"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, another user's
    return True
  return True


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable: treated as held, the message says which file to check


def _create(tmp: str, path: str) -> None:
  """`path` with `tmp`'s content, atomically; FileExistsError if it exists."""
  try:
    os.link(tmp, path)
  except FileExistsError:
    raise
  except OSError:  # a file system without hard links: exclusive creation, then the content
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "w") as f, open(tmp) as src:
      f.write(src.read())


def acquire(workdir: str) -> str:
  """Takes `<workdir>/train.lock` for this process (creating the workdir); returns its path.
  Raises WorkdirLockedError if a live process holds it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  me = {"pid": os.getpid(), "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S")}
  tmp = f"{path}.{me['pid']}.tmp"
  with open(tmp, "w") as f:
    json.dump(me, f)
  try:
    while True:
      try:
        _create(tmp, path)
        return path
      except FileExistsError:
        pass
      holder = _read(path)
      if holder is None:  # released meanwhile
        continue
      stale = (holder.get("host") == me["host"] and isinstance(holder.get("pid"), int)
               and not _alive(holder["pid"]))
      if not stale:
        raise WorkdirLockedError(
            f"{workdir} is in use by process {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} (since {holder.get('since', '?')}): one run per workdir. "
            f"Wait for it or stop it, or use another --workdir; if no such process runs, delete "
            f"{path}.")
      with contextlib.suppress(FileNotFoundError):  # another process may take it over first
        os.rename(path, f"{path}.stale.{me['pid']}")
        os.remove(f"{path}.stale.{me['pid']}")
        logging.warning("took over %s from process %d on %s, which no longer runs", path,
                        holder["pid"], holder["host"])
  finally:
    os.remove(tmp)


def release(path: str) -> None:
  """Removes the lock if this process holds it."""
  if (_read(path) or {}).get("pid") == os.getpid():
    os.remove(path)


@contextlib.contextmanager
def held(workdir: str):
  """The workdir's lock for the duration of the block (process 0 for the whole job)."""
  local = "://" not in workdir
  path, error = None, None
  if local and jax.process_index() == 0:
    try:
      path = acquire(workdir)
    except WorkdirLockedError as e:
      error = e
  if local and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    taken = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not taken and error is None:
      error = WorkdirLockedError(f"{workdir} is in use by another run (see process 0's error)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if path:
      release(path)
