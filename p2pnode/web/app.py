"""The HTTP API's ASGI application (starlette): routes, static files, auth.

``build_app(node, token)`` is everything ``serve_http`` serves: the
``/api/v1`` endpoints (``p2pnode/web/api.py``), ``/healthz``, ``/metrics``
(``p2pnode/web/metrics.py``), the dashboard (``GET /`` is
``static/index.html``, ``/static`` its folder), all behind ``TokenAuth``.
Unknown paths and methods answer JSON errors like the endpoints do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from p2pnode.web.api import Api, json_response
from p2pnode.web.auth import TokenAuth, TokenFile

if TYPE_CHECKING:
    from p2pnode.node import Node

STATIC_DIR = Path(__file__).parent / "static"


def build_app(node: Node, token: str | TokenFile) -> Starlette:
    api = Api(node)
    job = "/api/v1/jobs/{job_id:str}"

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-store"})

    routes = [
        Route("/", index, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/api/v1/jobs", api.list_jobs, methods=["GET"]),
        Route("/api/v1/jobs", api.submit, methods=["POST"]),
        Route(job, api.describe, methods=["GET"]),
        Route(job + "/stop", api.stop, methods=["POST"]),
        Route(job + "/logs", api.logs, methods=["GET"]),
        Route(job + "/history", api.history, methods=["GET"]),
        Route(job + "/runs", api.runs, methods=["GET"]),
        Route("/api/v1/nodes", api.nodes, methods=["GET"]),
        Route("/api/v1/stats", api.stats, methods=["GET"]),
        Route("/api/v1/events", api.events, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TokenAuth, token=token)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.api = api  # tests count its open event streams
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "bad_request"}.get(exc.status_code, "bad_request")
    body = {"code": code, "error": f"{request.method} {request.url.path}: {exc.detail}"}
    return json_response(body, status=exc.status_code)


__all__ = ["STATIC_DIR", "build_app"]
