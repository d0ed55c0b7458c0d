"""Outbound HTTP: the address guard, and the one guarded client that calls
URLs a tenant chose (webhooks now, URL ingest later).

A URL a tenant gives could point the server at itself, at the network it
runs in, or at a cloud's metadata service. The guard resolves the URL's
host once, refuses it when any address it resolves to is private,
loopback, link-local, unique-local, site-local, multicast, unspecified,
reserved or otherwise not public, or a cloud metadata address, unless a
network of the allow-list (`MEMORYD_OUTBOUND_ALLOW_NETWORKS`) holds the
address. IPv6 forms that carry an IPv4 address (IPv4-mapped and -compatible,
6to4, Teredo, NAT64) are judged by that IPv4 address.

The client then connects to the address it checked, not to the name: the
request goes to the IP with the URL's `Host` header, and for https the TLS
server name (SNI) and certificate check use the URL's host name. A DNS
answer that changes between the check and the connection (DNS rebinding)
cannot move the request elsewhere. Redirects are not followed, proxies from
the environment are not used (a proxy would make its own connection), and
each call has one deadline for everything (resolution included). An
answer's body is read and dropped up to 64 KiB (to keep the connection for
the next call); a longer one closes the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import h11
import httpx

from memoryd.domain.webhooks.model import Response

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) → the addresses it resolves to, in the resolver's order.
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud metadata and platform services: refused whatever their range says
# (168.63.129.16, Azure's platform address, is a public one).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS DNS
        "169.254.169.123",  # AWS time sync
        "fd00:ec2::254",  # AWS over IPv6
        "fd00:ec2::23",  # AWS DNS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure platform (wire server)
        "192.0.0.192",  # Oracle Cloud
    )
)
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
MAX_ERROR_CHARS = 500
# An answer's body up to this size is read (and dropped) to keep the
# connection for the next request; a longer one closes it.
MAX_DRAINED_BYTES = 64 * 1024
ALLOW_HELP = "MEMORYD_OUTBOUND_ALLOW_NETWORKS lists networks the server may call"


def parse_networks(text: str) -> list[IPNetwork]:
    """Comma-separated CIDRs (a bare address is one host). Raises ValueError
    naming the first bad one."""
    out: list[IPNetwork] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not a network (CIDR such as 10.0.0.0/8)") from None
    return out


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries, if it is one that does."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_class(ip: IPAddress) -> str:
    """What kind of non-public address `ip` is ("" for a public one)."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            kind = address_class(inner)
            # IPv4-compatible addresses are deprecated: none is a real target
            return kind or ("reserved" if ip in _IPV4_COMPATIBLE else "")
    for kind, holds in (
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unique-local", isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip in _SITE_LOCAL),
        ("NAT64 local-use", isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),
    ):
        if holds:
            return kind
    return ""


class AddressPolicy:
    """Which addresses the server may connect to: public ones, and those in
    the allow-list."""

    def __init__(self, allow: Iterable[IPNetwork] = ()) -> None:
        self._allow = tuple(allow)

    def allowed(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self._allow if c.version == net.version)

    def refusal(self, ip: IPAddress) -> str:
        """Why `ip` may not be called ("" when it may)."""
        if self.allowed(ip):
            return ""
        kind = address_class(ip)
        return f"a {kind} address" if kind else ""


class Refused(Exception):
    """The guard will not call a URL; the message says why, for the caller."""


@dataclass(frozen=True)
class Target:
    """A URL with the addresses it was checked to resolve to."""

    url: httpx.URL
    host: str  # as in the URL, without brackets
    port: int
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (getaddrinfo), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressGuard:
    """Parses a URL, resolves its host once, and checks every address."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver = system_resolver) -> None:
        self._policy = policy
        self._resolve = resolver

    async def target(self, url: str) -> Target:
        """The checked target of `url`; raises Refused saying why not."""
        parsed = _parse(url)
        host = parsed.host
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self._resolve(host, port)
            except (OSError, UnicodeError):
                addresses = []
            if not addresses:
                raise Refused(f"the host {host!r} does not resolve")
        for a in addresses:
            ip = ipaddress.ip_address(a.split("%", 1)[0])
            why = self._policy.refusal(ip)
            if why:
                where = "is" if literal is not None else "resolves to"
                raise Refused(
                    f"{host!r} {where} {why}; the server does not call private, loopback, "
                    f"link-local or metadata addresses ({ALLOW_HELP})"
                )
        return Target(parsed, host, port, tuple(addresses))

    async def refusal(self, url: str) -> str:
        """Why the server will not call `url` ("" when it will): the
        webhooks' `UrlGuard`."""
        try:
            await self.target(url)
        except Refused as err:
            return str(err)
        return ""


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise Refused("is not a URL") from None
    if parsed.scheme not in ("http", "https"):
        raise Refused("must be an http:// or https:// URL")
    if not parsed.host:
        raise Refused("has no host")
    if parsed.userinfo:
        raise Refused(
            "must not carry a user name or password; receivers check the signature instead"
        )
    return parsed


class GuardedClient:
    """POSTs to URLs through the guard (the webhooks' `Sender`), HTTP/1.1.

    Connections are pooled per (scheme, host name, checked address, port):
    at most `connections_per_target` each, kept open between calls (up to
    `IDLE_S` idle), at most `max_targets` pools (the least recently used
    closed first). A connection is never reused for another host name, nor
    for an address the guard did not just check.

    The protocol is h11's (a state machine, no I/O of its own) over
    asyncio streams: a general-purpose client's pool, which checks every
    pooled connection on every request, cost more CPU per delivery than
    the rest of the delivery together (measured; docs/performance.md)."""

    def __init__(
        self,
        guard: AddressGuard,
        *,
        timeout_s: float = 10.0,
        verify: ssl.SSLContext | bool = True,
        max_targets: int = 64,
        connections_per_target: int = 16,
        user_agent: str = "memoryd-webhooks",
    ) -> None:
        self._guard = guard
        self._timeout_s = timeout_s
        self._tls = _tls_context(verify)
        self._max_targets = max_targets
        self._connections = connections_per_target
        self._user_agent = user_agent.encode()
        self._pools: OrderedDict[tuple[str, str, str, int], _Pool] = OrderedDict()
        self._swept = time.monotonic()

    async def post(self, url: str, body: bytes, headers: Sequence[tuple[str, str]]) -> Response:
        started = time.perf_counter()

        def answer(status: int, error: str = "") -> Response:
            latency = int((time.perf_counter() - started) * 1000)
            return Response(status, latency, _clip(error))

        try:
            async with asyncio.timeout(self._timeout_s):
                target = await self._guard.target(url)
                status = await self._post(target, body, headers)
        except Refused as err:
            return answer(0, f"refused: {err}")
        except TimeoutError:
            return answer(0, f"no answer within {self._timeout_s:g} s")
        except ssl.SSLError as err:
            return answer(0, f"TLS: {err.reason or err}")
        except h11.ProtocolError as err:
            return answer(0, f"the answer is not valid HTTP/1.1: {err}")
        except OSError as err:
            return answer(0, f"{type(err).__name__}: {err.strerror or err}")
        if 200 <= status < 300:
            return answer(status)
        return answer(status, f"answered HTTP {status}")

    async def _post(self, target: Target, body: bytes, headers: Sequence[tuple[str, str]]) -> int:
        """The status from the first address that takes a connection."""
        request = h11.Request(
            method="POST",
            target=target.url.raw_path,
            headers=[
                (b"host", target.host_header.encode()),
                (b"user-agent", self._user_agent),
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in headers),
            ],
        )
        last: OSError | None = None
        for address in target.addresses:
            pool = self._pool(target, address)
            try:
                return await pool.exchange(request, body)
            except ConnectionRefusedError as err:  # nothing listens there: the next address
                last = err
        assert last is not None
        raise last

    def _pool(self, target: Target, address: str) -> _Pool:
        now = time.monotonic()
        if now - self._swept > IDLE_S:  # idle connections do not stay open for long
            self._swept = now
            for p in self._pools.values():
                p.close_idle()
        key = (target.url.scheme, target.host, address, target.port)
        pool = self._pools.get(key)
        if pool is not None:
            self._pools.move_to_end(key)
            return pool
        tls = self._tls if target.url.scheme == "https" else None
        pool = _Pool(address, target.port, tls, target.host, self._connections)
        self._pools[key] = pool
        while len(self._pools) > self._max_targets:
            _, old = self._pools.popitem(last=False)
            old.close()
        return pool

    async def close(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        for p in pools:
            p.close()


# A pooled connection idle longer than this is closed rather than reused
# (endpoints close idle keep-alive connections on their own, often at 60 s).
IDLE_S = 30.0


class _Connection:
    """One HTTP/1.1 connection (asyncio streams, h11 for the protocol)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < IDLE_S
        )

    async def exchange(self, request: h11.Request, body: bytes) -> tuple[int, bool]:
        """Sends the request, reads the answer (its body up to
        MAX_DRAINED_BYTES, dropped); answers (status, whether the connection
        can carry another request)."""
        conn = self.h11
        self.writer.write(
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        await self.writer.drain()
        status = 0
        read = 0
        answered = False  # any byte of an answer
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                if not data and not answered:
                    raise ConnectionResetError(
                        "the endpoint closed the connection without answering"
                    )
                answered = True
                conn.receive_data(data)  # b"": the end (h11 judges what came before)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                read += len(event.data)
                if read > MAX_DRAINED_BYTES:
                    return status, False
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.idle_since = time.monotonic()
            return status, True
        return status, False

    def close(self) -> None:
        self.writer.close()


class _Pool:
    """The connections to one (checked address, port) for one host name."""

    def __init__(
        self, address: str, port: int, tls: ssl.SSLContext | None, host: str, size: int
    ) -> None:
        self._address = address
        self._port = port
        self._tls = tls
        self._host = host
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def exchange(self, request: h11.Request, body: bytes) -> int:
        async with self._slots:
            conn = self._reuse()
            if conn is not None:
                try:
                    return await self._use(conn, request, body)
                except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
                    pass  # the endpoint closed it meanwhile: once more, on a new one
            return await self._use(await self._connect(), request, body)

    def _reuse(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self._address,
            self._port,
            ssl=self._tls,
            # TLS names and checks the URL's host, on the checked address
            server_hostname=self._host if self._tls is not None else None,
        )
        return _Connection(reader, writer)

    async def _use(self, conn: _Connection, request: h11.Request, body: bytes) -> int:
        keep = False
        try:
            status, keep = await conn.exchange(request, body)
            return status
        finally:
            if keep:
                self._idle.append(conn)
            else:
                conn.close()

    def close_idle(self) -> None:
        """Closes the idle connections that may not be reused any more."""
        keep = [c for c in self._idle if c.usable()]
        for c in self._idle:
            if c not in keep:
                c.close()
        self._idle = keep

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def _tls_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
