"""The outbound address guard and the guarded client (`memoryd.outbound`).

Addresses are judged by kind; a URL's host is resolved once and every
address it resolves to must pass; the client connects to the address it
checked (a resolver that maps a name nobody's DNS knows proves it: the
request still arrives, with the name in `Host`), does not follow
redirects, verifies TLS against the URL's host name while connecting to
the checked address, and refuses at every call what the guard refuses.
The endpoints are real HTTP servers on loopback.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path

import pytest
from helpers.certs import issue, make_ca
from helpers.webhook_receiver import Receiver

from memoryd.outbound import (
    AddressGuard,
    AddressPolicy,
    GuardedClient,
    Refused,
    address_class,
    parse_networks,
)

LOOPBACK = parse_networks("127.0.0.0/8")


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("168.63.129.16", "cloud metadata"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd12:3456::1", "unique-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        # IPv6 forms that carry an IPv4 address are judged by it
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", "cloud metadata"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:3f57:fefe", "private"),  # Teredo of 192.168.1.1
    ],
)
def test_refused_addresses_by_kind(address: str, kind: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_class(ip) == kind
    assert AddressPolicy().refusal(ip) == f"a {kind} address"


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_public_addresses_pass(address: str) -> None:
    assert AddressPolicy().refusal(ipaddress.ip_address(address)) == ""


def test_the_allow_list_lets_listed_networks_through_and_nothing_else() -> None:
    policy = AddressPolicy(parse_networks("127.0.0.0/8, 10.20.0.0/16,fd00::/8"))
    for allowed in ("127.0.0.1", "10.20.3.4", "::ffff:127.0.0.1", "fd00::5"):
        assert policy.refusal(ipaddress.ip_address(allowed)) == "", allowed
    for refused in ("10.21.0.1", "::1", "169.254.169.254", "192.168.0.1"):
        assert policy.refusal(ipaddress.ip_address(refused)) != "", refused


def test_parse_networks_names_the_bad_one() -> None:
    assert parse_networks("") == []
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33'")):
        parse_networks("127.0.0.0/8,10.0.0.0/33")


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """A resolver that answers from `table` (a name it lacks resolves to nothing)."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return list(table.get(host, []))

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("not a url", "http:// or https://"),
        ("https://user:pw@example.com/", "user name or password"),
        ("http://127.0.0.1:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://10.0.0.8/hook", "private"),
        ("http://0.0.0.0:80/", "unspecified"),
        ("http://internal.test/", "private"),  # a name resolving to a private address
        ("http://mixed.test/", "loopback"),  # one bad address among good ones
        ("http://nowhere.test/", "does not resolve"),
    ],
)
async def test_the_guard_refuses(url: str, why: str) -> None:
    guard = AddressGuard(
        AddressPolicy(),
        resolver(
            {
                "internal.test": ["10.1.1.1"],
                "mixed.test": ["93.184.215.14", "127.0.0.1"],
            }
        ),
    )
    with pytest.raises(Refused, match=why):
        await guard.target(url)
    assert why in await guard.refusal(url)


async def test_a_real_name_resolving_to_loopback_is_refused() -> None:
    # `localhost` through the system resolver
    refusal = await AddressGuard(AddressPolicy()).refusal("http://localhost:9/hook")
    assert "loopback" in refusal
    # and numeric forms the resolver turns into 127.0.0.1
    assert "loopback" in await AddressGuard(AddressPolicy()).refusal("http://2130706433/")
    assert "loopback" in await AddressGuard(AddressPolicy()).refusal("http://0x7f.1/")
    # allowed once listed
    assert await AddressGuard(AddressPolicy(LOOPBACK)).refusal("http://localhost:9/hook") == ""


async def test_the_refusal_does_not_say_the_internal_address() -> None:
    guard = AddressGuard(AddressPolicy(), resolver({"db.internal.test": ["10.9.8.7"]}))
    refusal = await guard.refusal("http://db.internal.test/")
    assert "private" in refusal
    assert "10.9.8.7" not in refusal


async def test_the_client_connects_to_the_address_it_checked() -> None:
    # nobody's DNS knows `hooks.test`: the request can only arrive through
    # the address the guard resolved and checked
    names = resolver({"hooks.test": ["127.0.0.1"]})
    client = GuardedClient(AddressGuard(AddressPolicy(LOOPBACK), names))
    with Receiver() as hook:
        answer = await client.post(
            f"http://hooks.test:{hook.port}/in?x=1", b"{}", [("content-type", "application/json")]
        )
        assert answer.status == 200 and answer.error == ""
        [got] = hook.requests
        assert got.path == "/in?x=1"
        assert got.headers["host"] == f"hooks.test:{hook.port}"
    assert names.calls == ["hooks.test"]  # type: ignore[attr-defined]
    await client.close()


async def test_the_address_is_checked_again_at_every_call() -> None:
    # the name now resolves somewhere refused (a rebinding DNS server would
    # answer so between a webhook's creation and its delivery)
    table = {"hooks.test": ["127.0.0.1"]}
    client = GuardedClient(
        AddressGuard(AddressPolicy(parse_networks("127.0.0.2/32")), resolver(table))
    )
    with Receiver() as hook:
        answer = await client.post(f"http://hooks.test:{hook.port}/", b"{}", [])
        assert answer.status == 0
        assert answer.error.startswith("refused:") and "loopback" in answer.error
        assert hook.requests == []
    await client.close()


async def test_redirects_are_not_followed() -> None:
    client = GuardedClient(AddressGuard(AddressPolicy(LOOPBACK)))
    with Receiver() as target, Receiver(302, headers={"location": "PLACEHOLDER"}) as hook:
        hook.extra_headers["location"] = target.url
        answer = await client.post(hook.url, b"{}", [])
        assert answer.status == 302
        assert answer.error == "answered HTTP 302"
        assert len(hook.requests) == 1
        assert target.requests == []
    await client.close()


async def test_an_endpoint_that_does_not_answer_in_time_is_a_failed_attempt() -> None:
    client = GuardedClient(AddressGuard(AddressPolicy(LOOPBACK)), timeout_s=0.3)
    with Receiver(delay_s=2.0) as hook:
        answer = await client.post(hook.url, b"{}", [])
    assert answer.status == 0
    assert "no answer within 0.3 s" in answer.error
    await client.close()


async def test_a_closed_port_is_a_failed_attempt_saying_so() -> None:
    client = GuardedClient(AddressGuard(AddressPolicy(LOOPBACK)))
    with Receiver() as hook:
        url = hook.url
    answer = await client.post(url, b"{}", [])  # the receiver is gone
    assert answer.status == 0
    assert "ConnectionRefusedError" in answer.error
    await client.close()


async def test_connections_are_kept_between_calls_and_replaced_when_closed() -> None:
    client = GuardedClient(AddressGuard(AddressPolicy(LOOPBACK)))
    with Receiver(keep_alive=True) as kept, Receiver() as closing:
        for _ in range(5):
            assert (await client.post(kept.url, b"{}", [])).status == 200
            assert (await client.post(closing.url, b"{}", [])).status == 200
        assert len({r.client_port for r in kept.requests}) == 1  # one connection, reused
        assert len({r.client_port for r in closing.requests}) == 5  # HTTP/1.0: one each
    await client.close()


async def test_a_large_answer_is_not_read_whole() -> None:
    client = GuardedClient(AddressGuard(AddressPolicy(LOOPBACK)))
    with Receiver(keep_alive=True, body=b"x" * (1 << 20)) as hook:
        for _ in range(3):
            answer = await client.post(hook.url, b"{}", [])
            assert (answer.status, answer.error) == (200, "")
        # each connection was dropped after 64 KiB of the answer
        assert len({r.client_port for r in hook.requests}) == 3
    await client.close()


async def test_an_endpoint_that_answers_no_http_is_a_failed_attempt() -> None:
    import socket as socket_

    server = socket_.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        conn.close()

    import threading

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = GuardedClient(AddressGuard(AddressPolicy(LOOPBACK)))
    answer = await client.post(f"http://127.0.0.1:{port}/", b"{}", [])
    assert answer.status == 0
    assert "not valid HTTP/1.1" in answer.error
    t.join(5)
    server.close()
    await client.close()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A CA, a server certificate for `hooks.test` only, and a client
    context trusting the CA."""
    ca = make_ca(tmp_path)
    cert, key = issue(tmp_path, "ca", "hooks", "DNS:hooks.test")
    return cert, key, ssl.create_default_context(cafile=str(ca))


async def test_https_verifies_the_url_host_name_while_connecting_to_the_checked_address(
    tls: tuple[Path, Path, ssl.SSLContext],
) -> None:
    cert, key, trust = tls
    names = resolver({"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    client = GuardedClient(AddressGuard(AddressPolicy(LOOPBACK), names), verify=trust)
    with Receiver(https=(cert, key)) as hook:
        ok = await client.post(f"https://hooks.test:{hook.port}/h", b"{}", [])
        assert ok.status == 200, ok.error
        assert hook.requests[0].headers["host"] == f"hooks.test:{hook.port}"
        # the same address under a name the certificate does not hold: refused by TLS
        bad = await client.post(f"https://other.test:{hook.port}/h", b"{}", [])
        assert bad.status == 0
        assert "certificate" in bad.error.lower() or "ssl" in bad.error.lower(), bad.error
        assert len(hook.requests) == 1
    await client.close()
