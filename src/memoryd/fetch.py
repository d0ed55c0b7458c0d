"""Downloading a document from a URL for URL ingest, through the outbound
address guard (`memoryd.outbound.AddressGuard`): the host is resolved once
and the connection goes to the address that was checked (the URL's host
name stays in the Host header and in TLS's SNI and certificate check), so a
DNS answer that changes between the check and the connection (rebinding)
cannot reach a private address. Every redirect is checked the same way;
the body is streamed into the spool with a size cap, under one deadline.
"""

from __future__ import annotations

import asyncio

import httpx

from memoryd.domain.errors import FailedPrecondition, InvalidArgument, Unavailable
from memoryd.domain.knowledge.service import SpoolFile
from memoryd.outbound import AddressGuard, Refused

# Content types never read as documents (the bytes decide among the rest).
_REFUSED_TYPES = ("image/", "video/", "audio/", "font/")


class UrlFetcher:
    def __init__(
        self,
        guard: AddressGuard,
        *,
        max_bytes: int,
        timeout_s: float = 30.0,
        max_redirects: int = 5,
        verify: bool = True,
    ) -> None:
        self._guard = guard
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._max_redirects = max_redirects
        self._verify = verify

    async def fetch(self, url: str, into: SpoolFile) -> str:
        try:
            async with (
                asyncio.timeout(self._timeout_s),
                httpx.AsyncClient(verify=self._verify, follow_redirects=False) as client,
            ):
                return await self._follow(client, url, into)
        except TimeoutError:
            raise Unavailable(
                f"the URL did not answer in full within {self._timeout_s:g} s",
                reason="URL_TIMEOUT",
            ) from None
        except httpx.HTTPError as err:
            raise Unavailable(
                f"the URL could not be read: {err}", reason="URL_UNREACHABLE"
            ) from None

    async def _follow(self, client: httpx.AsyncClient, url: str, into: SpoolFile) -> str:
        for _ in range(self._max_redirects + 1):
            try:
                target = await self._guard.target(url)
            except Refused as err:
                raise FailedPrecondition(
                    f"the URL {_shown(url)} {err}", reason="URL_REFUSED"
                ) from None
            address = target.addresses[0]
            host = f"[{address}]" if ":" in address else address
            request = client.build_request(
                "GET",
                target.url.copy_with(host=host),
                headers={"Host": target.host_header, "User-Agent": "memoryd-ingest"},
                extensions={"sni_hostname": target.host},
            )
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(target.url.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise FailedPrecondition(
                        f"the URL answered HTTP {response.status_code}", reason="URL_FETCH_FAILED"
                    )
                kind: str = response.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind.startswith(_REFUSED_TYPES):
                    raise InvalidArgument.field(
                        "source_uri", f"the URL serves {kind}, which is not a document"
                    )
                declared = int(response.headers.get("content-length") or 0)
                if declared > self._max_bytes:
                    raise self._too_large()
                async for piece in response.aiter_bytes():
                    into.write(piece)
                    if into.size > self._max_bytes:
                        raise self._too_large()
                return kind
            finally:
                await response.aclose()
        raise FailedPrecondition(
            f"the URL redirected more than {self._max_redirects} times", reason="URL_FETCH_FAILED"
        )

    def _too_large(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"the document at the URL is larger than {self._max_bytes} bytes, the server's "
            "limit (MEMORYD_KNOWLEDGE_MAX_UPLOAD_BYTES)",
            reason="DOCUMENT_TOO_LARGE",
        )


def _shown(url: str) -> str:
    return repr(url[:200])
