"""The entry points' re-execution with glibc's huge pages (jresnet.training.huge_pages)."""

import json
import os
import subprocess
import sys

import pytest

from jresnet.training import huge_pages

SCRIPT = """
import json, os, sys
from jresnet.training import huge_pages
print("started", flush=True)
huge_pages.exec_with_huge_pages()
print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "argv": sys.argv[1:]}))
"""


@pytest.mark.parametrize("environ, glibc, mode, expected", [
    ({}, (2, 36), "madvise", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 35), "madvise", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, (2, 36), "madvise", False),  # done already
    ({"JRESNET_HUGE_PAGES": "0"}, (2, 36), "madvise", False),                   # turned off
    ({}, (2, 36), "always", False),   # huge pages without asking
    ({}, (2, 36), "never", False),    # none to be had
    ({}, (2, 36), None, False),       # not Linux, or no THP
    ({}, (2, 34), "madvise", False),  # glibc without the tunable
    ({}, None, "madvise", False),     # musl and other C libraries
])
def test_re_executes_only_where_it_turns_huge_pages_on(environ, glibc, mode, expected):
  assert huge_pages.needs_exec(environ, glibc, mode) is expected


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert huge_pages.thp_mode(str(path)) == "madvise"
  path.write_text("[always] madvise never\n")
  assert huge_pages.thp_mode(str(path)) == "always"
  assert huge_pages.thp_mode(str(tmp_path / "missing")) is None


def _run(env: dict) -> tuple[list[str], dict]:
  out = subprocess.run([sys.executable, "-c", SCRIPT, "--flag", "a b"], capture_output=True,
                       text=True, check=True, env=env, cwd=os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__))))
  lines = out.stdout.splitlines()
  return lines[:-1], json.loads(lines[-1])


def test_exec_keeps_the_command_line_and_other_tunables():
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JRESNET_HUGE_PAGES")}
  env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"
  wanted = huge_pages.needs_exec(env, huge_pages.glibc_version(), huge_pages.thp_mode())
  before, result = _run(env)
  assert result["argv"] == ["--flag", "a b"]
  if wanted:  # this machine: Linux, glibc >= 2.35, THP 'madvise'
    assert before == ["started", "started"]  # ran once more, from the start
    assert result["tunables"] == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
  else:
    assert before == ["started"]
    assert result["tunables"] == "glibc.malloc.arena_max=4"


def test_opt_out_runs_the_command_once_unchanged():
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env["JRESNET_HUGE_PAGES"] = "0"
  before, result = _run(env)
  assert before == ["started"]
  assert result["tunables"] is None
