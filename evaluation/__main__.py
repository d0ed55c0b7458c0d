"""`python -m evaluation`: asks the golden set of a fresh `memoryd serve` and
prints recall@1/@5, MRR, nDCG@10 and p50 latency per family and mode as a
markdown table. `--regenerate` rewrites the golden files instead.

Every server setting is an option here too, as for `memoryd serve` (and an
environment variable `MEMORYD_<NAME>`); the server is started with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from evaluation import golden
from evaluation.metrics import markdown_table
from evaluation.run import MODES, evaluate
from memoryd.cli import add_settings_options, configure_logging, settings_from_args
from memoryd.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Start `memoryd serve` on a temporary data dir, load the golden set, ask "
        "its questions and print the retrieval quality per family and search mode. See "
        "docs/quality.md.",
    )
    parser.add_argument(
        "--regenerate",
        action="store_true",
        help="rewrite the golden files from the generator (no server) and exit",
    )
    parser.add_argument(
        "--golden-dir", type=Path, default=golden.GOLDEN_DIR, help="where the golden files are"
    )
    parser.add_argument(
        "--families",
        default=",".join(golden.FAMILIES),
        help=f"comma-separated families to run (default: all of {', '.join(golden.FAMILIES)})",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated search modes to ask (default: all of {', '.join(MODES)})",
    )
    add_settings_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.regenerate:
        for path in golden.write(golden.generate(), args.golden_dir):
            print(f"wrote {path}")
        return 0
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    modes = [m.strip().upper() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(families) - set(golden.FAMILIES)) + sorted(set(modes) - set(MODES))
    if unknown:
        print(f"evaluation: unknown families or modes {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(args)
    except ConfigError as err:
        print(f"evaluation: configuration error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings)
    data = golden.read(args.golden_dir)
    parts = [data.of(f) for f in families]
    print(
        f"evaluation: {sum(len(p.memories) for p in parts)} memories, "
        f"{sum(len(p.questions) for p in parts)} questions from "
        f"{args.golden_dir}; families {', '.join(families)}; embedding "
        f"{settings.embedding_provider} {settings.embedding_model_dir}; cores {os.cpu_count()}",
        flush=True,
    )
    report = asyncio.run(evaluate(settings, data, families, modes))
    print()
    print(markdown_table(report.rows))
    if report.slices:
        print()
        print(markdown_table(sorted(report.slices, key=lambda r: r.family)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
