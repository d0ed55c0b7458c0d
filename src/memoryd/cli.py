"""`memoryd serve | bootstrap | upgrade-vectors | compact-vectors` (the benchmarks
live in `benchmarks/`, outside the package).

Every setting is an option here and an environment variable `MEMORYD_<NAME>`
(the option wins). See `memoryd serve --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memoryd import __version__
from memoryd.config import ConfigError, Settings, env_name, setting_fields

if TYPE_CHECKING:
    from memoryd.storage.vectors.edge_backends import HeadStart

_BANNER = "=" * 72


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting, in a group of its own (also used by `benchmarks/`)."""
    group = parser.add_argument_group(
        "settings", "each option is also read from the environment variable shown"
    )
    for f in setting_fields():
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        default = f.default if not meta.get("secret") or not f.default else "***"
        # argparse formats help with %: a literal one is doubled
        help_text = f"{meta['help']} [env {env_name(f.name)}; default: {default!r}]"
        help_text = help_text.replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        group.add_argument(flag, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memoryd",
        description="memoryd: a self-hostable, multi-tenant memory server for AI agents (gRPC).",
    )
    parser.add_argument("--version", action="version", version=f"memoryd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. On first start with an empty control store it "
        "creates an organization and prints its owner key once.",
    )
    add_settings_options(serve)

    boot = sub.add_parser(
        "bootstrap",
        help="create an organization and print its owner key once",
        description="Create an organization with an owner key holding every scope ('*'), and "
        "print the key once. Run it once per organization; store the key in a secret manager.",
    )
    boot.add_argument("--org-name", default="default", help="name of the new organization")
    boot.add_argument(
        "--new-owner-key",
        metavar="ORG",
        default="",
        help="instead of creating an organization, mint a new owner key for the existing "
        "organization ORG (its id, or its name when unique), print it once and audit it: the "
        "repair when an owner key was never shown (e.g. a first start that failed)",
    )
    add_settings_options(boot)

    upgrade = sub.add_parser(
        "upgrade-vectors",
        help="bring a vector store made before keyword search to this version",
        description="Copy the memories of a vector store made before keyword search into one "
        "with keyword vectors. The embedded store does this by itself when it starts; a Qdrant "
        "server's collection must be upgraded with this command, once, with every replica "
        "stopped. Safe to run again after an interruption.",
    )
    add_settings_options(upgrade)

    compact = sub.add_parser(
        "compact-vectors",
        help="seal the embedded vector stores so that they open fast",
        description="Seal what was written to the embedded vector stores (memories and "
        "knowledge chunks) since their last compaction into immutable segments whose payload "
        "indexes are mapped from files, so that the next start opens them instead of "
        "rebuilding them: with 1M memories the store opens in ~1.5 s instead of ~9 s and holds "
        "about half the memory. Run it with the server stopped, after a large import or from "
        "time to time; it costs ~200 us per memory sealed (a few minutes at 1M) and room on "
        "disk for a copy of the store. Safe to stop at any point. A Qdrant server optimizes "
        "its collections by itself.",
    )
    add_settings_options(compact)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the options that
    `add_settings_options` added and the command line gave."""
    overrides = {f.name: getattr(args, f.name, None) for f in setting_fields()}
    return Settings.load(overrides=overrides)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={"fields": {...}}` adds fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _cannot_start(err: Exception) -> int:
    """One line on stderr naming the cause, exit status 1. Known causes (a
    busy port, an unwritable data dir, an unreachable or read-only database,
    a bad model) carry their own message; anything else is named by its type,
    with the traceback logged at DEBUG."""
    from memoryd.api.server import StartupError
    from memoryd.domain.errors import DomainError

    if isinstance(err, StartupError | DomainError | ValueError | OSError):
        message = str(err)
    else:
        logging.getLogger("memoryd").debug("start-up failed", exc_info=err)
        message = f"{type(err).__name__}: {err} (--log-level DEBUG shows where)"
    line = " ".join(message.split()) or type(err).__name__
    print(f"memoryd: cannot start: {line}", file=sys.stderr, flush=True)
    return 1


def settle_heap() -> None:
    """Moves what start-up made (modules, classes, protobuf descriptors,
    caches: ~140k objects, ~1M references) out of the garbage collector's
    sight, once, before serving. Left in the oldest generation, each full
    collection walked all of it: 100-160 ms every 3-4 s under a write load
    on a 2-core box, every call stalled meanwhile (docs/performance.md).
    Frozen objects are still freed by reference counting; only a cycle
    among them would stay, and start-up's objects live as long as the
    server anyway. No collection first: start-up's own full collections
    found nothing to free, and one more would add ~0.1 s to the start.

    Then gives back to the kernel the heap pages start-up freed (glibc's
    `malloc_trim`): loading the embedding model and the store frees ~100 MB
    in pieces that malloc keeps, and the server's RSS stays that much above
    what it uses (measured on an embedder alone: 426 → 310 MiB). Nothing
    where the C library has no such call."""
    gc.freeze()
    trim = getattr(_c_library(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _c_library() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the C library this process runs on
    except OSError:  # pragma: no cover - a platform without dlopen(NULL)
        return None


async def _serve(settings: Settings) -> int:
    head_start = await _engine_head_start(settings)
    from memoryd.app import build_app  # ~1.5 s, while the engine opens the store

    try:
        app = await build_app(
            settings, bootstrap_if_empty=settings.bootstrap, engine_head_start=head_start
        )
    except Exception as err:
        return _cannot_start(err)
    finally:
        if head_start is not None:
            await head_start.discard()  # nothing to do once the store adopted it
    if app.bootstrapped is not None:
        _print_owner_key(
            app.bootstrapped.org.name, app.bootstrapped.org.id, app.bootstrapped.plaintext
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settle_heap()
    await app.start()
    print(f"memoryd listening on {settings.host}:{app.port}", file=sys.stderr, flush=True)
    if app.mcp is not None:
        mcp_url = f"{app.mcp.scheme}://{settings.mcp_host}:{app.mcp.port}/mcp"
        print(f"memoryd MCP endpoint on {mcp_url}", file=sys.stderr, flush=True)
    await stop.wait()
    logging.getLogger("memoryd").info(
        "signal received: draining for up to %.0f s", settings.grace_period_s
    )
    await app.stop()
    return 0


async def _engine_head_start(settings: Settings) -> HeadStart | None:
    """The embedded memories' store's engine process, started and told to
    open the store before the server is imported (`HeadStart`), when there
    is an existing store to open; None otherwise, or when it cannot start
    (the build then opens the store as usual, and reports what is wrong)."""
    from memoryd.storage.vectors.embedded import (
        configured_identity,
        head_start_store,
        store_options,
    )

    path = head_start_store(settings)
    if path is None:
        return None
    from memoryd.storage.vectors.edge_backends import HeadStart, engine_options

    try:
        identity = configured_identity(settings)
        options = engine_options(path, **store_options(settings))
        return await HeadStart.begin(options, *identity)
    except Exception:
        logging.getLogger("memoryd").debug("no head start for the vector engine", exc_info=True)
        return None


async def _upgrade_vectors(settings: Settings) -> int:
    """Upgrades the configured vector store for keyword search (see the
    command's description); 0 when it is done or was not needed."""
    from memoryd.app import model_identity, open_vector_store, qdrant_client

    try:
        if settings.qdrant_url:
            from memoryd.storage.vectors.qdrant import collection_name, upgrade_collection

            model_id, _ = await model_identity(settings)
            client = qdrant_client(settings)
            try:
                await upgrade_collection(
                    client, collection_name(model_id), lambda line: print(line, flush=True)
                )
            finally:
                await client.close()
        else:
            # the embedded store upgrades itself when it opens
            store = await open_vector_store(settings)
            await store.close()
            print("the embedded vector store is up to date", flush=True)
    except Exception as err:  # one line naming the cause, like a failed start
        return _cannot_start(err)
    return 0


def _compact_vectors(settings: Settings) -> int:
    """Compacts the embedded vector stores of `settings.data_dir` (see the
    command's description); 0 when done or when there is nothing to do."""
    from memoryd.storage.vectors.edge_engine import compact_store
    from memoryd.storage.vectors.embedded import STORES, store_path

    if settings.qdrant_url:
        print("nothing to do: a Qdrant server optimizes its collections by itself", flush=True)
        return 0
    found = False
    for name in STORES:
        path = store_path(settings, name)

        def say(line: str, name: str = name) -> None:
            print(f"{name}: {line}", flush=True)

        try:
            done = compact_store(path, min_free_bytes=settings.min_free_bytes, say=say)
        except Exception as err:  # one line naming the cause, like a failed start
            return _cannot_start(err)
        if done is None:
            continue
        found = True
        say(
            f"{done.points} points in {done.segments_after} segments (were "
            f"{done.segments_before}), {done.indexes_rebuilt} payload indexes rebuilt, "
            f"{done.seconds:.1f} s"
        )
    if not found:
        print(f"nothing to do: no embedded vector store in {settings.data_dir}", flush=True)
    return 0


async def _bootstrap(settings: Settings, org_name: str, new_owner_key: str) -> int:
    from memoryd.auth.hashing import Argon2Hasher
    from memoryd.domain.bootstrap import Bootstrapped, bootstrap_org, mint_owner_key
    from memoryd.domain.clock import SystemClock
    from memoryd.storage.sql import SqlControlStore

    store = SqlControlStore(settings.resolved_database_url)
    hasher = Argon2Hasher()
    result: Bootstrapped | None = None
    try:
        await store.open()
        if new_owner_key:
            org_id = await _resolve_org(store, new_owner_key)
            if org_id:
                result = await mint_owner_key(store, hasher, SystemClock(), org_id)
        else:
            _advise_orgs_without_owner_key(await store.orgs_without_owner_key())
            result = await bootstrap_org(store, hasher, SystemClock(), org_name)
    except Exception as err:
        return _cannot_start(err)
    finally:
        hasher.close()
        await store.close()
    if result is None:
        return 1
    what = "has a new owner key" if new_owner_key else "created"
    _print_owner_key(result.org.name, result.org.id, result.plaintext, what)
    return 0


async def _resolve_org(store: Any, org: str) -> str:
    """The id of organization `org` (an id, or a unique name); "" after
    saying on stderr why there is none."""
    if await store.get_org(org) is not None:
        return org
    named = await store.orgs_named(org)
    if len(named) == 1:
        return str(named[0].id)
    why = "several organizations have that name; give its id" if named else "no such organization"
    print(f"memoryd: cannot mint an owner key for {org!r}: {why}", file=sys.stderr)
    return ""


def _advise_orgs_without_owner_key(orgs: Sequence[Any]) -> None:
    """What to do about a half-bootstrapped store (an organization that no
    owner key can manage), said before creating another organization."""
    for org in orgs:
        print(
            f"memoryd: note: organization '{org.name}' ({org.id}) has no usable owner key "
            f"(a first start stopped before showing it, or it was revoked); to mint one: "
            f"memoryd bootstrap --new-owner-key {org.id}",
            file=sys.stderr,
        )


def _print_owner_key(name: str, org_id: str, plaintext: str, what: str = "created") -> None:
    # Deliberately printed, never logged: this is the one time the key is shown.
    print(
        f"{_BANNER}\n"
        f"  memoryd: organization '{name}' ({org_id}) {what}.\n"
        f"  Its OWNER KEY (every scope) is shown ONCE; store it in a secret manager:\n\n"
        f"    {plaintext}\n\n"
        f"  Use it as: grpcurl -H 'x-api-key: <key>' ...\n"
        f"{_BANNER}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as err:
        print(f"memoryd: configuration error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if args.command == "serve":
        if settings.workers > 1:
            from memoryd.workers import serve_workers

            return asyncio.run(serve_workers(settings))
        return asyncio.run(_serve(settings))
    if args.command == "bootstrap":
        return asyncio.run(_bootstrap(settings, args.org_name, args.new_owner_key))
    if args.command == "upgrade-vectors":
        return asyncio.run(_upgrade_vectors(settings))
    if args.command == "compact-vectors":
        return _compact_vectors(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
