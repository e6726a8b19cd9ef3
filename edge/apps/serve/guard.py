"""Who may use ``medge serve``, and what a browser may load: an ASGI layer around the whole app.

- **Bearer token** (``--token``): every request, API, page and the page's own calls,
  carries ``Authorization: Bearer TOKEN`` or the cookie the login form sets; anything
  else is answered 401 (a browser asking for a page gets the login form). The token
  is compared in constant time; a wrong one at the form costs a second.
- **Host check** when bound to a loopback address: only ``localhost``, ``127.0.0.1``
  and ``[::1]`` are accepted as Host, so that a web site cannot reach the local
  server through a DNS name that resolves to 127.0.0.1 (DNS rebinding).
- **Offline by construction**: a Content-Security-Policy lets the page load scripts,
  styles, fonts and images from this server only (and data:/blob: URLs it makes), so
  nothing on the page can reach the internet even by accident; API answers are not cached.

Pure ASGI (no framework import), so it also guards the Gradio app mounted inside.
"""
from __future__ import annotations

import asyncio
import hmac
import html
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from medge.edge.apps.serve.texts import TEXT, pick_language

TOKEN_COOKIE = "medge_token"
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
TOKEN_MIN_CHARS = 16
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
LOGIN_PATH = "/login"
LOGIN_BODY_MAX = 4096
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; media-src 'self' data: blob:; worker-src 'self' blob:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]


def host_name(host_header: str) -> str:
    """``host:port`` or ``[v6]:port`` -> the host name, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware: Host check, bearer token or login cookie, security headers."""

    def __init__(self, app, token: str | None = None, loopback_only: bool = False):
        self.app, self.token, self.loopback_only = app, token, loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        lang = pick_language(headers.get("accept-language"))
        if self.loopback_only and host_name(headers.get("host", "")) not in LOOPBACK_HOSTS:
            return await _answer(scope, send, 400, "text/plain; charset=utf-8",
                                 b"unexpected Host header: this server answers to localhost only")
        if self.token:
            if scope["type"] == "http" and scope["path"] == LOGIN_PATH:
                return await self._login(scope, receive, send, lang)
            if not self._authorized(headers):
                return await self._refuse(scope, send, headers, lang)
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = SECURITY_HEADERS + ([(b"cache-control", b"no-store")] if api else [])
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and self._matches(auth[7:].strip()):
            return True
        try:
            cookie = SimpleCookie(headers.get("cookie", ""))
        except CookieError:
            return False
        return TOKEN_COOKIE in cookie and self._matches(cookie[TOKEN_COOKIE].value)

    def _matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    async def _refuse(self, scope, send, headers, lang):
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        if scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
            return await _answer(scope, send, 401, "text/html; charset=utf-8", login_page(lang).encode())
        return await _answer(scope, send, 401, "application/json",
                             b'{"detail":"missing or wrong bearer token: send Authorization: Bearer TOKEN"}',
                             [(b"www-authenticate", b'Bearer realm="medge"')])

    async def _login(self, scope, receive, send, lang):
        if scope["method"] != "POST":
            return await _answer(scope, send, 200, "text/html; charset=utf-8", login_page(lang).encode())
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > LOGIN_BODY_MAX:
                return await _answer(scope, send, 413, "text/plain; charset=utf-8", b"login form too large")
            if not message.get("more_body", False):
                break
        given = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if not self._matches(given):
            await asyncio.sleep(1.0)  # slows down guessing; the token itself is long
            return await _answer(scope, send, 401, "text/html; charset=utf-8", login_page(lang, wrong=True).encode())
        cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
        return await _answer(scope, send, 303, "text/plain; charset=utf-8", b"signed in",
                             [(b"location", b"/"), (b"set-cookie", cookie.encode())])


async def _answer(scope, send, status: int, content_type: str, body: bytes, headers=()):
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 1008})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, *headers]})
    await send({"type": "http.response.body", "body": body})


def login_page(lang: str, wrong: bool = False) -> str:
    """A self-contained sign-in form (no script, no outside resource)."""
    t = TEXT[lang]
    e = html.escape
    note = f'<p style="color:#b00020">{e(t["login_wrong"])}</p>' if wrong else ""
    return (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>{e(t["login_title"])}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
            '<body style="font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto">'
            f'<h1>{e(t["login_title"])}</h1><p>{e(t["login_prompt"])}</p>{note}'
            f'<form method="post" action="{LOGIN_PATH}"><label>{e(t["login_token"])} '
            '<input type="password" name="token" autocomplete="current-password" autofocus required></label> '
            f'<button type="submit">{e(t["login_submit"])}</button></form></body></html>')


def check_token(token: str) -> str | None:
    """Why ``token`` is not acceptable, or None when it is."""
    if len(token) < TOKEN_MIN_CHARS:
        return f"the token must have at least {TOKEN_MIN_CHARS} characters"
    if not set(token) <= TOKEN_CHARS:
        return "the token may contain only letters, digits and - . _ ~"
    return None
