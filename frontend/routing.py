"""The route table: method + path template (OpenAPI style, `/jobs/{job_id}`) → handler.

Templates are the same strings as the paths in openapi.yaml, so a test can compare the two.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from frontend.responses import Response


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    params: Mapping[str, str]
    headers: Any  # http.client.HTTPMessage
    # None when the request carried no Content-Length (no body).
    body: bytes | None


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    # A request that changes something: needs the API token when one is set.
    changes_state: bool
    pattern: re.Pattern


class NoRoute(Exception):
    """No route matches; `allowed` lists the methods the path does have (empty: unknown path)."""

    def __init__(self, allowed: list[str]):
        super().__init__(", ".join(allowed))
        self.allowed = allowed


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler, *, changes_state: bool = False,
            params: Mapping[str, str] | None = None) -> None:
        """`params` gives a regex per `{name}` in the template (default: one path segment)."""
        params = params or {}
        regex = ""
        for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
            regex += re.escape(literal)
            if name:
                regex += f"(?P<{name}>{params.get(name, '[^/]+')})"
        self.routes.append(Route(method, template, handler, changes_state, re.compile(regex)))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for `method` and `path` (HEAD uses the GET route) and its parameters."""
        wanted = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for route in self.routes:
            found = route.pattern.fullmatch(path)
            if not found:
                continue
            if route.method == wanted:
                return route, found.groupdict()
            allowed.append(route.method)
        if "GET" in allowed:
            allowed.append("HEAD")
        raise NoRoute(allowed)
