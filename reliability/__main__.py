"""`python -m reliability [--soak] [--report docs/reliability-report.md] [--only NAME ...] [--seed N]`

Starts a fresh local stack (Redis, backend with the tiny model, scheduler, frontend), runs the
fault, load and hostile-input scenarios against it, and rewrites the report. Exits 1 when a
check failed (the report says which), 0 when every check passed.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from reliability.chaos import DEFAULT_SEED
from reliability.cluster import REPO_ROOT
from reliability.report import render
from reliability.suite import ALL_NAMES, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__.split("\n\n")[1])
    parser.add_argument("--soak", action="store_true", help="the long version: 1,000 prompts from 50 clients, "
                        "20,000 fuzzed requests, 200 slow clients, 1,000 chaos jobs")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "docs" / "reliability-report.md",
                        help="where to write the report (default: docs/reliability-report.md); '-' for stdout")
    parser.add_argument("--only", nargs="+", choices=ALL_NAMES, metavar="NAME",
                        help=f"run only these: {', '.join(ALL_NAMES)} (connection-cap with --soak)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("MODEL_CACHE_DIR", REPO_ROOT / "cache")),
                        help="model cache (the tiny model is written there once); default MODEL_CACHE_DIR or ./cache")
    parser.add_argument("--workdir", type=Path, help="where the stack keeps its library, Redis data and logs "
                        "(default: a new temporary folder, removed afterwards unless --keep)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"the chaos scenario's seed (default {DEFAULT_SEED}); the report gives it, "
                        "so a failure can be replayed")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="reliability-"))
    try:
        run = run_suite(workdir, args.cache_dir, mode="soak" if args.soak else "short", only=args.only,
                        seed=args.seed)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            print(f"logs kept in {workdir / 'logs'}")
    text = render(run)
    if str(args.report) == "-":
        sys.stdout.write(text)
    else:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
        print(f"report written to {args.report}")
    return 0 if all(r.ok or r.skipped for r in run.results) else 1


if __name__ == "__main__":
    sys.exit(main())
