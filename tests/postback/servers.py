"""``postback serve`` in child processes, for the tests that need real separate instances."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

import aiohttp

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


async def one_subscriber(http: aiohttp.ClientSession, base: str, clickid: str) -> dict[str, str]:
    """Through the API of the server at ``base``: an account, a spot and one subscriber
    (user 1) with ``clickid``; the account's authorization header."""
    async with http.post(
        f"{base}/api/v1/accounts",
        json={"name": f"Account of {clickid}"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as response:
        auth = {"Authorization": f"Bearer {(await response.json())['api_key']}"}
    async with http.post(f"{base}/api/v1/spots", json={"title": "bot"}, headers=auth) as response:
        token = (await response.json())["token"]
    async with http.post(
        f"{base}/api/v1/subscribers",
        json={"spot": token, "user_id": "1", "clickid": clickid},
        headers=auth,
    ) as response:
        assert response.status == 201
    return auth
