"""The ``postback`` process settings: applied by the command's entry point only."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from postback.cli import main
from postback.runtime import GC_THRESHOLDS


def test_the_command_tunes_its_process() -> None:
    code = (
        "import gc, postback.cli as c; c.main = lambda: print(gc.get_threshold()) or 0; c.entry()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(GC_THRESHOLDS)


def test_main_in_process_leaves_the_interpreter_alone(capsys: pytest.CaptureFixture[str]) -> None:
    before = gc.get_threshold()
    with pytest.raises(SystemExit):
        main(["--help"])
    capsys.readouterr()
    assert gc.get_threshold() == before != GC_THRESHOLDS
