"""Who may use the HTTP API: whoever holds the token in ``<data dir>/http-token``.

The token is 43 url-safe random characters (256 bits), created on first need
(``serve --http-listen`` or ``p2pnode http-token``) in a 0600 file, and never
rotated silently: ``p2pnode http-token --rotate`` replaces it, and a running
node takes the file's current token at the next request (``TokenFile``: a
``stat`` per request, a read when the file changed), so the old token and the
cookies holding it stop working at once.  A token file that is gone or may
not be used while the node runs refuses every request (it fails closed).
A token file that group or others may read is refused, as ``node.key`` is:
it may have leaked, and quietly tightening the mode would hide that.

``TokenAuth`` is a plain ASGI middleware (no starlette import: the CLI's
``http-token`` reads the file through this module and must stay quick).  A
request carries the token as ``Authorization: Bearer <token>`` or as the
cookie ``p2pnode_token``, set by ``GET /?token=<token>`` (a 303 back to ``/``,
so the token leaves the address bar).  Every path needs it, ``/healthz`` and
the static files included; comparisons use ``hmac.compare_digest``.  Request
bodies are capped at ``MAX_BODY`` (413).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from p2pnode.control_request import BadRequest
from p2pnode.errors import P2PNodeError

log = logging.getLogger("p2pnode.web")

TOKEN_FILE = "http-token"
COOKIE = "p2pnode_token"
MIN_TOKEN = 43  # characters: secrets.token_urlsafe(32)
MAX_TOKEN_FILE = 1024  # bytes read at most
MAX_BODY = 1024 * 1024  # bytes of a request body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_URL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class TokenFileError(P2PNodeError, OSError):
    """The token file cannot be used (readable by others, corrupt, not a file)."""


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def load_or_create_token(data_dir: Path) -> str:
    """The API token of the node serving ``data_dir``; created (0600) if absent."""
    path = token_path(data_dir)
    try:
        return read_token(path)
    except FileNotFoundError:
        pass
    # Written aside, then linked into place: a reader never sees a half-written
    # token, and of two processes creating it at once one wins (link fails if
    # the name exists) and the other reads the winner's.
    token, tmp = _new_token_aside(data_dir)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return read_token(path)
    finally:
        tmp.unlink(missing_ok=True)
    return token


def rotate_token(data_dir: Path) -> str:
    """Replace the token of ``data_dir`` with a new one (0600, atomically: a
    reader sees the old token or the new one, never a part)."""
    token, tmp = _new_token_aside(data_dir)
    try:
        os.replace(tmp, token_path(data_dir))
    finally:
        tmp.unlink(missing_ok=True)
    return token


def _new_token_aside(data_dir: Path) -> tuple[str, Path]:
    """A new token, durably written (0600, whatever the umask) to a private
    temporary name beside the token file: the caller moves it into place."""
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    tmp = token_path(data_dir).with_name(f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{token}\n".encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return token, tmp


class TokenFile:
    """The token a running node accepts: the one in its token file now.

    ``current()`` costs a ``stat`` and re-reads the file only when its inode,
    size or mtime changed.  ``None`` (every request refused) while the file is
    missing or must not be used; the reason is logged once per change."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self._token: bytes | None = token.encode()
        self._signature = self._stat()

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)

    def current(self) -> bytes | None:
        signature = self._stat()
        if signature != self._signature:
            self._signature = signature
            try:
                self._token = read_token(self.path).encode()
            except OSError as exc:  # gone, or refused (TokenFileError)
                self._token = None
                log.warning("HTTP API refuses every request: cannot use its token: %s", exc)
        return self._token


def read_token(path: Path) -> str:
    """The token in ``path``; ``FileNotFoundError`` if absent, ``TokenFileError``
    if it must not be used."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise TokenFileError(f"{path} belongs to uid {st.st_uid}, not to this user")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise TokenFileError(
                f"{path} is readable or writable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); the token may have leaked: delete the file "
                "to make a new one"
            )
        data = os.read(fd, MAX_TOKEN_FILE)
    finally:
        os.close(fd)
    token = data.decode("ascii", "replace").strip()
    if len(token) < MIN_TOKEN or not set(token) <= _URL_SAFE:
        raise TokenFileError(f"{path} does not hold a token: delete it to make a new one")
    return token


def login_url(base_url: str, token: str) -> str:
    """The dashboard address that logs a browser in (``GET /?token=``)."""
    return f"{base_url.rstrip('/')}/?token={token}"


# --- the middleware ------------------------------------------------------------------

UNAUTHORIZED_JSON = json.dumps({"error": "unauthorized", "code": "unauthorized"}).encode()
UNAUTHORIZED_HTML = (
    b"<!doctype html><title>p2pnode: unauthorized</title>"
    b"<p>This p2pnode dashboard needs its token. On the node's host run "
    b"<code>p2pnode http-token --url</code> and open the address it prints.</p>\n"
)


class TokenAuth:
    """ASGI middleware: 401 without the token, the cookie login, the body cap."""

    def __init__(
        self, app: ASGIApp, token: str | TokenFile, *, max_body: int = MAX_BODY
    ) -> None:
        self.app = app
        # A fixed token (tests), or the node's token file, followed as it rotates.
        self._tokens = token if isinstance(token, TokenFile) else None
        self._token: bytes | None = token.encode() if isinstance(token, str) else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: hypercorn's start and stop
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        login = _query_token(scope) if path == "/" else None
        if login is not None:
            if self.allows(login):
                await _login(send, login)
            else:
                await _unauthorized(send, html=True)
            return
        if not self.allows(_bearer(scope)) and not self.allows(_cookie(scope)):
            await _unauthorized(send, html=path == "/")
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _too_large(send, self.max_body)
            return
        await self._capped(scope, receive, send)

    def allows(self, given: str | None) -> bool:
        token = self._tokens.current() if self._tokens is not None else self._token
        return (
            given is not None and token is not None and hmac.compare_digest(given.encode(), token)
        )

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, with a body over the cap (chunked, no length) refused."""
        received = 0
        started = refused = False

        async def counting_receive() -> Message:
            nonlocal received, started, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    if not started:  # answered here, whatever the app makes of the error
                        started = refused = True
                        await _too_large(send, self.max_body)
                    raise BodyTooLarge(f"request body over {self.max_body} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 was sent: the app's own answer to the error is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self.app(scope, counting_receive, tracking_send)


class BodyTooLarge(BadRequest):
    """Raised to the app reading a body over the cap (already answered 413)."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _cookie(scope: Scope) -> str | None:
    value = _header(scope, b"cookie")
    if value is None:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(value)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def _query_token(scope: Scope) -> str | None:
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    values = parse_qs(query).get("token")
    return values[0] if values else None


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _unauthorized(send: Send, *, html: bool) -> None:
    if html:
        body, kind = UNAUTHORIZED_HTML, b"text/html; charset=utf-8"
    else:
        body, kind = UNAUTHORIZED_JSON, b"application/json"
    await _respond(send, 401, body, kind, [(b"www-authenticate", b"Bearer")])


async def _login(send: Send, token: str) -> None:
    cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/".encode()
    await _respond(send, 303, b"", b"text/plain", [(b"location", b"/"), (b"set-cookie", cookie)])


async def _too_large(send: Send, limit: int) -> None:
    message = f"request body over the limit of {limit // 1024} KiB"
    body = json.dumps({"code": "too_large", "error": message}).encode()
    await _respond(send, 413, body, b"application/json", [(b"connection", b"close")])


__all__ = [
    "COOKIE",
    "MAX_BODY",
    "TOKEN_FILE",
    "TokenAuth",
    "TokenFile",
    "TokenFileError",
    "load_or_create_token",
    "login_url",
    "read_token",
    "rotate_token",
    "token_path",
]
