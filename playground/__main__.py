"""`python -m playground`: run the whole playground locally (see playground/launcher.py)."""
from __future__ import annotations

import sys

from playground.launcher import run
from playground.settings import environment


def main() -> None:
    sys.exit(run(environment()))


if __name__ == "__main__":
    main()
