"""One training run per workdir: a kernel lock on `<workdir>/train.lock`.

The run holds `fcntl.flock` on the file for as long as it trains. The kernel releases the lock
when the process ends, however it ends (SIGKILL, a crash, a container torn down), so a dead run's
lock never needs a person, whatever PID namespace or host it ran in; and two runs racing for a
free lock cannot both get it. The file also records the holder's PID, host and start time, read
only for messages: a second run stops at once naming the holder, and a run that finds the record
of one that died says it took over. A clean exit removes the file.

In a multi-process job process 0 takes the lock for the whole job and tells the others whether it
got it. Only local paths are locked, and network file systems whose client supports flock (Linux
NFS maps it to NFS locks); not gs:// and the like.
"""

import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
import time

import jax
import numpy as np

LOCK_FILE = "train.lock"
# flock errors of a file system that has no such locks: the run goes on unlocked, with a warning.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


@dataclasses.dataclass
class Lock:
  """A held lock: `fd` is the open lock file, whose flock is the lock."""

  path: str
  fd: int


def _record(fd: int) -> dict:
  """The holder's record in the lock file ({} if empty or unreadable: it is just being written)."""
  try:
    return json.loads(os.pread(fd, 4096, 0) or b"{}")
  except (OSError, ValueError):
    return {}


def _is_file_at(fd: int, path: str) -> bool:
  """Whether `fd` is still the file at `path` (a releasing run removes it before unlocking)."""
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def acquire(workdir: str) -> Lock | None:
  """Takes `<workdir>/train.lock` for this process (creating the workdir). Raises
  WorkdirLockedError if a live process holds it; None where the file system has no flock."""
  import fcntl  # noqa: PLC0415 (POSIX only)

  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _record(fd)
      os.close(fd)
      who = (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} "
             f"(since {holder.get('since', '?')})" if holder else "a run that is starting")
      raise WorkdirLockedError(f"{workdir} is in use by {who}: one run per workdir. Wait for it "
                               "or stop it, or use another --workdir.") from None
    except OSError as e:
      os.close(fd)
      if e.errno not in _UNSUPPORTED:
        raise
      logging.warning("cannot lock %s (%s): this file system has no flock, so nothing stops a "
                      "second run on %s", path, os.strerror(e.errno), workdir)
      return None
    if _is_file_at(fd, path):
      break
    os.close(fd)  # locked a file its holder removed on release: lock the one at `path` now
  previous = _record(fd)
  if previous:
    logging.warning("took over %s from process %s on %s, which ended without releasing it",
                    path, previous.get("pid", "?"), previous.get("host", "?"))
  me = {"pid": os.getpid(), "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(me).encode(), 0)
  return Lock(path, fd)


def release(lock: Lock | None) -> None:
  """Removes the lock file, then unlocks it (in this order: a run that locks the removed file
  meanwhile sees that it is gone, and takes the next one)."""
  if lock is None:
    return
  if _is_file_at(lock.fd, lock.path):
    os.remove(lock.path)
  os.close(lock.fd)


@contextlib.contextmanager
def held(workdir: str):
  """The workdir's lock for the duration of the block (process 0 for the whole job)."""
  local = "://" not in workdir
  lock, error = None, None
  if local and jax.process_index() == 0:
    try:
      lock = acquire(workdir)
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
    release(lock)
