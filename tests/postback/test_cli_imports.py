"""The commands that never serve start without the web framework: a rebuild starts a
child process per group of projections, and each paid 0.2 s for aiohttp it never used."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_and_the_rebuild_import_no_web_framework() -> None:
    web = "('aiohttp', 'prometheus_client', 'postback.app', 'postback.outbox')"
    probe = (
        "import sys, postback.cli, postback.cli_rebuild, postback.cli_verify;"
        f" print(sorted(m for m in sys.modules if m.split('.')[0] in {web} or m in {web}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
