"""`python -m benchmarks`: runs the chosen suites and prints their figures.

Every server setting is an option here too, as for `memoryd serve` (and an
environment variable `MEMORYD_<NAME>`); the suites start their servers with it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from benchmarks.auth import SUITES as AUTH_SUITES
from benchmarks.auth import run_auth
from benchmarks.conversations import run_conversations
from benchmarks.erasure import run_erasure
from benchmarks.first_pass import first_pass_suite
from benchmarks.knowledge import knowledge_suite
from benchmarks.mcp import mcp_suite
from benchmarks.memory import memory_suite
from benchmarks.scale import scale_suite
from benchmarks.watch import run_watch
from benchmarks.webhooks import run_webhooks
from benchmarks.writes import writes_suite
from memoryd.cli import add_settings_options, configure_logging, settings_from_args
from memoryd.config import ConfigError, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Start `memoryd serve` with the given settings on a free port and measure "
        "it from outside: health Check against authenticated calls (auth, auth-redis), a "
        "seeded memory workload (memory), BatchCreate against another checkout's server "
        "(writes), AddMessages operations (conversations), WatchMemories latency and writes "
        "with watchers attached (watch), signed webhook deliveries (webhooks). "
        "See docs/performance.md.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument(
        "--suite",
        default="auth,auth-redis,memory,conversations,watch,webhooks",
        help="comma-separated suites: auth (in-process limiter), auth-redis, memory, "
        "conversations, watch, webhooks, writes, mcp (MCP search_memories against gRPC "
        "SearchMemories), knowledge (ingest and SearchKnowledge), erasure, scale "
        "(client-vector search on a large store; --workers and --server-cpus apply), "
        "first-pass (each tenant's first search after the store in --data-dir opens, "
        "with its files out of the page cache; at most --tenants tenants) "
        "(default: all but "
        "writes, mcp, knowledge, erasure, scale and first-pass)",
    )
    parser.add_argument(
        "--server-cpus",
        default="",
        help="scale suite: pin the server to these cores (taskset -c list, e.g. 0 or 0,1)",
    )
    parser.add_argument(
        "--memories", type=int, default=100_000, help="memory and writes suites: corpus size"
    )
    parser.add_argument(
        "--tenants", type=int, default=1_000, help="memory and writes suites: tenants"
    )
    parser.add_argument(
        "--baseline-src",
        default="",
        help="writes suite: the src directory of another checkout (e.g. a git worktree of an "
        "older commit) whose server is loaded in turns with this one's",
    )
    parser.add_argument(
        "--operations",
        type=int,
        default=1_000,
        help="conversations suite: operations of the flooding tenant (fairness)",
    )
    parser.add_argument(
        "--encryption-ab",
        action="store_true",
        help="writes suite: compare this checkout with encryption at rest on and off "
        "(writes, then searches in alternating turns)",
    )
    parser.add_argument(
        "--write-rate", type=float, default=200.0, help="watch suite: writes/s for the latency"
    )
    parser.add_argument(
        "--watchers", type=int, default=10, help="watch suite: watchers attached to writes"
    )
    parser.add_argument(
        "--webhook-events",
        type=int,
        default=1_000,
        help="webhooks suite: memories written at once for the delivery throughput",
    )
    parser.add_argument(
        "--chunks", type=int, default=100_000, help="knowledge suite: chunks for the search"
    )
    parser.add_argument(
        "--environments", type=int, default=100, help="knowledge suite: environments"
    )
    parser.add_argument(
        "--erase-memories", type=int, default=10_000, help="erasure suite: the end user's memories"
    )
    parser.add_argument(
        "--erase-documents",
        type=int,
        default=100,
        help="erasure suite: the end user's knowledge documents (about ten chunks each)",
    )
    add_settings_options(parser)
    return parser


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Runs each suite of `args.suite` in turn; exit status 2 on an unknown one."""
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    print(
        f"benchmarks: suites {', '.join(suites)}; {args.seconds:.0f} s per measurement; "
        f"python client concurrency {args.concurrency}; cores {os.cpu_count()}",
        flush=True,
    )
    for suite in suites:
        if suite in AUTH_SUITES:
            await run_auth(settings, suite, args.seconds, args.concurrency)
        elif suite == "scale":
            lines = await scale_suite(
                settings, args.memories, args.tenants, args.seconds, args.server_cpus
            )
            print("\n".join(lines), flush=True)
        elif suite == "first-pass":
            await first_pass_suite(settings.data_dir, args.tenants)
        elif suite == "memory":
            for line in await memory_suite(settings, args.memories, args.tenants, args.seconds):
                print(line, flush=True)
        elif suite == "writes":
            lines = await writes_suite(
                settings,
                args.memories,
                args.tenants,
                args.baseline_src,
                args.encryption_ab,
                args.seconds,
            )
            for line in lines:
                print(line, flush=True)
        elif suite == "knowledge":
            lines = await knowledge_suite(
                settings, args.chunks, args.environments, args.seconds, args.concurrency
            )
            print("\n".join(lines), flush=True)
        elif suite == "mcp":
            for line in await mcp_suite(settings, args.memories, args.seconds, args.concurrency):
                print(line, flush=True)
        elif suite == "conversations":
            await run_conversations(settings, args.seconds, args.concurrency, args.operations)
        elif suite == "watch":
            await run_watch(
                settings, args.seconds, args.concurrency, args.write_rate, args.watchers
            )
        elif suite == "webhooks":
            await run_webhooks(settings, args.seconds, args.concurrency, args.webhook_events)
        elif suite == "erasure":
            await run_erasure(settings, args.erase_memories, args.erase_documents)
        else:
            print(f"unknown suite {suite!r}", file=sys.stderr)
            return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.baseline_src:
        args.baseline_src = os.path.abspath(args.baseline_src)
    try:
        settings = settings_from_args(args)
    except ConfigError as err:
        print(f"benchmarks: configuration error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings)
    return asyncio.run(run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
