"""The `model-registry` entry point: the command, with a Ctrl-C that comes while it is still
being imported (most of its first second) reported like one during a command, not as a
traceback. It imports nothing itself, so that the window it cannot cover stays minimal."""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from cli.main import main

        main(prog_name="model-registry")
    except KeyboardInterrupt:
        # Commands catch their own (cli.ui.handle_errors); this is one before any began.
        sys.stderr.write("interrupted: nothing was committed\n")
        sys.exit(130)
