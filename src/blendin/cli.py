"""What every command-line entry point shares: logging to stderr, quiet transformers, and user
errors (BlendinError) printed as one clear line with exit code 2 instead of a traceback."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# The configs ship inside the package, so an installed wheel finds them (the checkout's conf/ links here).
CONF_DIR = Path(__file__).resolve().parent / "conf"


def setup_logging() -> None:
    import transformers

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def call(fn, *args):
    """Run fn(*args) as a command: set up logging, and turn a BlendinError into `error: ...`, exit 2."""
    from .errors import BlendinError

    setup_logging()
    try:
        return fn(*args)
    except BlendinError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
