"""Tasks never read the terminal of a foreground endpoint, nor a managed user endpoint's
control pipe: fd 0 is /dev/null once the endpoint runs, and the control pipe moves to a
descriptor workers do not inherit."""

from __future__ import annotations

import subprocess
import sys

MOVED = """
import os
r, w = os.pipe()
os.dup2(r, 0)
os.close(r)
from endpoint.runtime.managed import _private_control
fd = _private_control(0)
os.write(w, b"x")
print(os.read(fd, 1), os.read(0, 1), os.get_inheritable(fd), os.get_inheritable(0))
"""


def test_a_managed_endpoints_control_pipe_leaves_fd_0_which_then_reads_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-c", MOVED], capture_output=True, text=True, timeout=60, check=True
    )
    # The pipe still carries the manager's messages on its new, non-inheritable descriptor;
    # fd 0 (inheritable, as workers expect a stdin) is at end of file at once.
    assert out.stdout.split() == ["b'x'", "b''", "False", "True"]


RELEASED = """
import os
from endpoint.host.daemon import release_stdin
release_stdin()
print(os.readlink("/proc/self/fd/0"))
"""


def test_release_stdin_points_fd_0_at_dev_null_even_from_a_terminal_like_pipe() -> None:
    out = subprocess.run(
        [sys.executable, "-c", RELEASED],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "/dev/null"
