"""A stand-in for the `ngrok` agent binary (see ngrok.py), for tests only.

`install(directory)` writes an executable named ``ngrok`` that runs the fake with this interpreter, so
pyngrok starts it exactly as it starts the real binary (``PyngrokConfig(ngrok_path=...)``).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

__all__ = ["install"]

SCRIPT = Path(__file__).with_name("ngrok.py")


def install(directory: Path) -> Path:
    """Write ``directory/ngrok`` (``exec``s the fake, so its pid is the agent's pid) and return its path."""
    path = directory / "ngrok"
    path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(SCRIPT))} \"$@\"\n")
    os.chmod(path, 0o755)
    return path
