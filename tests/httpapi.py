"""Helpers for the HTTP API suites: every route kind, and an SSE reader.

``unguarded_routes`` is the auth checker: it asks every kind of route with
the given credentials and returns those that did not answer 401.  The suites
run it against a real ``serve`` (expecting none) and against an app whose
token check was planted away (expecting all: the checker fires).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

# (method, path): one of each kind of route (docs/http.md lists them all).
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/"),
    ("GET", "/static/index.html"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/j-0"),
    ("POST", "/api/v1/jobs/j-0/stop"),
    ("GET", "/api/v1/jobs/j-0/logs"),
    ("GET", "/api/v1/jobs/j-0/logs?follow=true"),
    ("GET", "/api/v1/jobs/j-0/history"),
    ("GET", "/api/v1/jobs/j-0/runs"),
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/events"),
    ("GET", "/no/such/path"),
)

SPEC_BODY = b'{"name": "x", "task": {"engine": {"type": "sim", "duration": "1ms"}}}'


def unguarded_routes(
    client: httpx.Client, headers: dict[str, str] | None = None, cookies: Any = None
) -> list[str]:
    """Routes that answered anything but a proper 401 to these credentials."""
    leaks = []
    for method, path in ROUTES:
        content = SPEC_BODY if method == "POST" else None
        with client.stream(
            method, path, headers=headers or {}, cookies=cookies, content=content
        ) as answer:
            if answer.status_code != 401 or answer.headers.get("www-authenticate") != "Bearer":
                leaks.append(f"{method} {path} -> {answer.status_code}")
                continue
            body = answer.read()
        if path == "/":
            if b"p2pnode http-token --url" not in body:
                leaks.append(f"{method} {path}: 401 page without the hint")
        elif httpx.Response(401, content=body).json() != {
            "error": "unauthorized",
            "code": "unauthorized",
        }:
            leaks.append(f"{method} {path}: 401 body {body[:80]!r}")
    return leaks


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of each event of a Server-Sent Events stream; comments
    come as ("", ": text")."""
    name, data = "", []
    for line in lines:
        if line.startswith(":"):
            yield "", line
        elif line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].removeprefix(" "))
        elif line == "":
            if name or data:
                yield name or "message", "\n".join(data)
            name, data = "", []
