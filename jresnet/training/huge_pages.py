"""Transparent huge pages for XLA:CPU's buffers: the entry points re-execute themselves once.

XLA:CPU takes its buffers from glibc's malloc. Backed by 4 KiB pages, a CPU train step spends a
good part of its time on TLB misses over ResNet's activations; 2 MiB pages make it faster
(BENCHMARKS.md). glibc (2.35+) asks the kernel for huge pages under its tunable
`glibc.malloc.hugetlb=1`, but reads tunables only when a process starts, and Linux grants them
only where transparent huge pages are in 'madvise' mode ('always' gives them anyway, 'never'
not at all). `exec_with_huge_pages()` therefore re-executes the same command line with the
tunable added, where that helps; `JRESNET_HUGE_PAGES=0` turns it off. Standard library only,
so that an entry point can call it before its heavy imports. The exec keeps the signal mask and
the pending signals: an entry point that blocks SIGTERM until this returns receives one sent in
between after the exec, when it unblocks it.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_ENABLED) -> str | None:
  """The kernel's transparent-huge-page mode, e.g. 'madvise' from "always [madvise] never"."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):  # not glibc, or no confstr
    return None
  major, minor = version.split(".")[:2]
  return (int(major), int(minor)) if name == "glibc" else None


def needs_exec(environ, glibc: tuple[int, int] | None, mode: str | None) -> bool:
  """Whether re-executing with the tunable set would turn huge pages on (and is allowed)."""
  return (environ.get("JRESNET_HUGE_PAGES", "1") != "0" and mode == "madvise"
          and glibc is not None and glibc >= (2, 35)
          and TUNABLE not in environ.get("GLIBC_TUNABLES", ""))


def exec_with_huge_pages() -> None:
  """Returns at once if there is nothing to do; otherwise replaces this process by the same
  command with `glibc.malloc.hugetlb=1` added to GLIBC_TUNABLES. Call it first thing in an
  entry point's `__main__`, before anything has been allocated or printed."""
  if not needs_exec(os.environ, glibc_version(), thp_mode()):
    return
  tunables = os.environ.get("GLIBC_TUNABLES")
  os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
