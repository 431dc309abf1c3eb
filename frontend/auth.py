"""Who may change things: the optional API token, and refusing browsers' cross-site writes.

Reads stay open. A request that changes something (new prompt, cancel, delete) must carry the
token when one is configured, and is refused when a browser says it comes from another site,
so a page elsewhere cannot drive the playground through its visitor's browser (CSRF).
"""
from __future__ import annotations

import hmac
from urllib.parse import urlsplit


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

    Scripts and curl send neither header, so they are never refused here."""
    if headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        return True
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
