"""The browser UI under ``/ui``: approval inbox, run dashboard and one-link approvals.

    mount_ui(app, secret_key=key)     # create_app does this; nothing to configure

Server-rendered pages (Jinja2 templates and a little vanilla JS and CSS shipped in this
package; no build step, nothing loaded from elsewhere). The dashboard needs a session made
by signing in with the secret key once (``sessions``); an approval link needs only itself
(``links``). The secret key never reaches the browser: the session cookie holds a
server-signed session and the links hold public access tokens scoped to one token.

    signin       /ui/login, /ui/logout
    token_pages  /ui/tokens (the inbox, with how many expire soon), /ui/tokens/{id}
                 (complete, cancel, share, receipt)
    run_pages    /ui/runs (a chart of runs finished per minute), /ui/runs/{id} (timeline
                 drawn as a waterfall above its table; cancel, pause, resume)
    waterfall    a run's timeline as positioned bars (pure; the template draws the SVG)
    charts       runs finished per minute by status; waiting tokens expiring soon
    schedule_pages  /ui/schedules (each schedule's next five ticks)
    approve      /ui/approve/{id}?t=... (standalone, no session)
    vote         /ui/vote/{approval_id}?t=... (an approver votes; standalone, no session)
    inbox        /ui/inbox?t=... (what one approver is asked; standalone, no session)
    links        POST /api/v1/waitpoints/tokens/{id}/approval-link (for remote engines)
"""

from __future__ import annotations

from fastapi import FastAPI

from ..api.auth import Auth
from ..client import Engine
from ..signing import login_link
from ..validation import check_schema
from . import (
    approve,
    assets,
    inbox,
    links,
    run_pages,
    schedule_pages,
    signin,
    token_pages,
    vote,
)
from .forms import validator_for
from .render import Renderer
from .routing import UI
from .sessions import Sessions

__all__ = ["login_link", "mount_ui"]


def mount_ui(app: FastAPI, *, secret_key: str) -> None:
    """Add the UI's routes to ``app`` (after the API's own state is set)."""
    auth: Auth = app.state.auth
    engine: Engine = app.state.engine
    app.state.ui = UI(
        renderer=Renderer(),
        sessions=Sessions(secret_key, storage=lambda: engine.storage),
        auth=auth,
        limiter=app.state.credential_limiter,
    )
    _warm_up()
    app.include_router(links.router)
    pages = (signin, token_pages, run_pages, schedule_pages, approve, vote, inbox, assets)
    for module in pages:  # assets last: catch-all
        app.include_router(module.router)


def _warm_up() -> None:
    """Build a validator now, so the first completion is not the slow one."""
    check_schema({"type": "object"})
    validator_for({"type": "object", "properties": {"approved": {"type": "boolean"}}})
