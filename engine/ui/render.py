"""Turning templates into responses: one Jinja2 environment, the headers every page carries.

Templates and the two static files ship inside the package and are compiled once, when the
app is built, so the first page a reviewer opens is as fast as the rest. Every page is sent
with a strict Content-Security-Policy (our own script and stylesheet, nothing inline) and
``Referrer-Policy: no-referrer``: approval links carry a capability in their query string,
and it must not leak to another site through the ``Referer`` header.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_MEDIA_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    """A static file kept in memory, addressed by a content hash so browsers may cache it."""

    body: bytes
    media_type: str
    version: str


def _load_assets() -> dict[str, Asset]:
    assets = {}
    for entry in resources.files("engine.ui").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in _MEDIA_TYPES:
            body = entry.read_bytes()
            version = hashlib.sha256(body).hexdigest()[:12]
            assets[entry.name] = Asset(body, _MEDIA_TYPES[suffix], version)
    return assets


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def compact_json(value: Any) -> str:
    """A JSON value on one line, as written (escaped by the template like any text)."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def iso(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def when(moment: datetime | None) -> str:
    """A UTC time people read at a glance (the page's script adds "in 3h 2m" next to it)."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def took(ms: int | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"


class Renderer:
    """The compiled templates and static files of the UI."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("engine.ui", "templates"),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.assets = _load_assets()
        self.env.filters.update(
            pretty_json=pretty_json, compact_json=compact_json, iso=iso, when=when, took=took
        )
        self.env.globals["asset"] = self.asset_url
        for name in self.env.list_templates(extensions=["html"]):
            self.env.get_template(name)  # compile now, not on the first request

    def asset_url(self, name: str) -> str:
        return f"/ui/static/{name}?v={self.assets[name].version}"

    def page(
        self,
        request: Request,
        template: str,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        context.setdefault("signed_in", bool(getattr(request.state, "signed_in", False)))
        context.setdefault("path", request.url.path)
        context.setdefault("standalone", False)
        context.setdefault("stream", None)
        context["status_code"] = status_code
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)

    def static(self, name: str) -> Response | None:
        asset = self.assets.get(name)
        if asset is None:
            return None
        return Response(
            asset.body,
            media_type=asset.media_type,
            headers={
                "Cache-Control": "public, max-age=31536000, immutable",
                "X-Content-Type-Options": "nosniff",
            },
        )
