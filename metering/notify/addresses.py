"""Which addresses a webhook may be sent to (SSRF protection).

By default only globally routable unicast addresses: anything loopback, private (RFC 1918,
unique-local), link-local (which holds the cloud metadata service, 169.254.169.254),
carrier-grade NAT (100.64/10, Alibaba's metadata at 100.100.100.200), multicast,
unspecified or reserved is refused — also when it hides inside an IPv6 address
(IPv4-mapped, NAT64). Checked twice: when an owner registers the URL (the API answers
422), and when connecting, on the addresses DNS gives *then* — the notifier connects to
exactly the addresses it checked (aiohttp resolves through `GuardedResolver`), so a name
that re-resolves to an internal address after registration (DNS rebinding) is refused
too. METERING_WEBHOOK_ALLOW_PRIVATE=true lifts the check for local use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressNotAllowed(Exception):
    """The endpoint's host is, or resolves to, an address webhooks may not go to."""


def refusal(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refusal(address.ipv4_mapped)
        if address in _NAT64:
            return refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    for test, why in (
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local (cloud metadata)"),
        (address.is_private, "private"),
        (address.is_multicast, "multicast"),
        (address.is_unspecified, "unspecified"),
        (address.is_reserved, "reserved"),
    ):
        if test:
            return why
    return None if address.is_global else "not globally routable"


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_addresses(host: str, addresses: list[str]) -> None:
    for text in addresses:
        why = refusal(ipaddress.ip_address(text.split("%", 1)[0]))
        if why:
            raise AddressNotAllowed(f"{host} resolves to {text}, a {why} address")


async def check_url(url: str) -> None:
    """Resolve the URL's host now and refuse it if any address is not public (the check
    at registration; the notifier checks again on every connection)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = _literal(host)
    if literal is not None:
        check_addresses(host, [str(literal)])
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressNotAllowed(f"{host} does not resolve ({exc.strerror})") from None
    check_addresses(host, [str(info[4][0]) for info in infos])


def check_literal(url: str) -> None:
    """aiohttp does not resolve an IP-literal host, so the resolver never sees it: the
    notifier checks such a URL itself before connecting."""
    host = urlsplit(url).hostname or ""
    literal = _literal(host)
    if literal is not None:
        check_addresses(host, [str(literal)])


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to any non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        check_addresses(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:
        return f"GuardedResolver({self._inner!r})"
