"""``postback serve`` in child processes, for the tests that need real separate instances."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

ADMIN = "admin-secret"


def start_server(
    log_args: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``postback serve <log_args> --port 0``; return it and its base URL once it listens."""
    environment = {**os.environ, "POSTBACK_ADMIN_TOKEN": ADMIN, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "postback", "serve", *log_args, "--port", "0"],
        env=environment,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # the server announces its address once it listens
        lines.append(line)
        if line.startswith("postback: serving"):
            # Keep draining stderr (access logs), or the server blocks on a full pipe.
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, line.split(" on ")[-1].strip()
    raise AssertionError(f"the server did not start (exit {process.wait()}): {''.join(lines)}")


def stop_server(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
    process.wait(timeout=30)
    if process.stderr is not None:
        process.stderr.close()
