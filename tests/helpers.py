"""Shared test helpers: run the CLI as a real process."""

import os
import subprocess
import sys

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args, cwd=None, timeout=600, check=None, env=None):
    proc = subprocess.run([sys.executable, "-m", "srsgd_train.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**ENV, **(env or {})})
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc
