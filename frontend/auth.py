"""Who may use the server: Host names, the optional API token, browsers' cross-site writes.

Reads stay open. A request that changes something (new prompt, cancel, delete) must carry the
token when one is configured, and is refused when a browser says it comes from another site,
so a page elsewhere cannot drive the playground through its visitor's browser (CSRF). A
server bound to loopback answers only to loopback names, so a web page cannot reach it by
pointing its own domain name at 127.0.0.1 (DNS rebinding).
"""
from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def answered_hosts(bind_host: str, allowed: tuple[str, ...]) -> frozenset[str] | None:
    """The Host names a server bound to `bind_host` answers to; None means any."""
    if "*" in allowed:
        return None
    if allowed:
        return LOOPBACK_NAMES | set(allowed)
    return LOOPBACK_NAMES if _is_loopback(bind_host) else None


def host_name(host_header: str) -> str:
    """The name part of a Host header: `[::1]:8000` → `::1`, `Example.org.:80` → `example.org`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")


def _is_loopback(bind_host: str) -> bool:
    if bind_host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        return False


def has_valid_token(headers, token: str) -> bool:
    """True when `Authorization: Bearer <token>` or `X-API-Token: <token>` matches (in constant
    time), or when no token is configured."""
    if not token:
        return True
    expected = token.encode("utf-8")
    offered = []
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        offered.append(credentials.strip())
    offered.append(headers.get("X-API-Token", "").strip())
    # Header values arrive decoded as Latin-1: encoding back gives the bytes the client sent.
    # Evaluate both candidates every time so timing says nothing about which one was sent.
    matches = [hmac.compare_digest(value.encode("latin-1", "replace"), expected) for value in offered]
    return any(matches)


def is_cross_site(headers) -> bool:
    """True when a browser marks the request as coming from another origin than this server.

    Modern browsers say so in Sec-Fetch-Site, which stays right behind a proxy that rewrites
    Host; older ones only send Origin, compared with Host. Scripts and curl send neither
    header, so they are never refused here."""
    fetch_site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if fetch_site:
        # "same-site" is another port or subdomain: another application, so refused too.
        return fetch_site not in ("same-origin", "none")
    origin = headers.get("Origin")
    if origin is None:
        return False
    host = headers.get("Host", "").strip().lower()
    try:
        origin_host = urlsplit(origin.strip()).netloc.lower()
    except ValueError:
        return True
    # "null" (sandboxed frames, file:// pages) has no host and is refused as well.
    return not origin_host or origin_host != host
