"""The `corecraft` command piped into a reader that stops early (`| head`): no traceback, the usual exit."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [["tasks", "list"], ["tasks", "stats"], ["tools", "list", "--json"]])
def test_output_piped_to_head_ends_quietly(argv):
    # A real pipe: `head -n 1` exits after one line, so the command's later writes meet a closed pipe (each
    # of these prints more than a pipe's 64 KiB buffer holds, or is still writing when head exits).
    cmd = f"{sys.executable} -m corecraft {' '.join(argv)} | head -n 1; echo \"status ${{PIPESTATUS[0]}}\" >&2"
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] in ("status 0", "status 141")
