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
each call has one deadline for everything (resolution included). Answers'
bodies are not read.
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

    def at(self, address: str) -> httpx.URL:
        """The URL with its host replaced by `address`."""
        return self.url.copy_with(host=address)

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
    """POSTs to URLs through the guard (the webhooks' `Sender`).

    Connections are pooled per (scheme, host name, checked address, port),
    at most `max_targets` pools, the least recently used closed first: a
    connection is never reused for another host name, nor for an address
    the guard did not just check."""

    def __init__(
        self,
        guard: AddressGuard,
        *,
        timeout_s: float = 10.0,
        verify: ssl.SSLContext | bool = True,
        max_targets: int = 64,
        user_agent: str = "memoryd-webhooks",
    ) -> None:
        self._guard = guard
        self._timeout_s = timeout_s
        self._verify = verify
        self._max_targets = max_targets
        self._user_agent = user_agent
        self._clients: OrderedDict[tuple[str, str, str, int], httpx.AsyncClient] = OrderedDict()

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
        except httpx.HTTPError as err:
            return answer(0, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
        except OSError as err:
            return answer(0, f"{type(err).__name__}: {err.strerror or err}")
        if 200 <= status < 300:
            return answer(status)
        return answer(status, f"answered HTTP {status}")

    async def _post(self, target: Target, body: bytes, headers: Sequence[tuple[str, str]]) -> int:
        """The status of the first address that takes a connection."""
        last: Exception | None = None
        for address in target.addresses:
            client = self._client(target, address)
            request = client.build_request(
                "POST",
                target.at(address),
                content=body,
                headers=[
                    ("host", target.host_header),
                    ("user-agent", self._user_agent),
                    *headers,
                ],
                extensions=_sni(target),
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError as err:
                last = err
                continue
            await response.aclose()  # the body is not read
            return response.status_code
        assert last is not None
        raise last

    def _client(self, target: Target, address: str) -> httpx.AsyncClient:
        key = (target.url.scheme, target.host, address, target.port)
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        client = httpx.AsyncClient(
            verify=self._verify,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(self._timeout_s),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
        )
        self._clients[key] = client
        while len(self._clients) > self._max_targets:
            _, old = self._clients.popitem(last=False)
            asyncio.get_running_loop().create_task(old.aclose())
        return client

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for c in clients:
            await c.aclose()


def _sni(target: Target) -> dict[str, str]:
    """For https to a host name: the TLS server name and certificate check
    use the name, while the connection goes to the checked address."""
    if target.url.scheme != "https":
        return {}
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        return {"sni_hostname": target.host}
    return {}


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
