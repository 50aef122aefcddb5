"""What live-update streams share: one watcher per distinct query, and the open-stream caps.

Before, every open stream re-ran its own query and re-serialised its own page after each
commit, so N streams on the token list cost N queries per token created, on the event loop
and the database pool the API's writes need too (200 streams made 100 creations take minutes).
Now streams with the same query and the same view of it subscribe to one ``Watcher``: it reads
and serialises once per change and every stream sends the same bytes. A stream that falls
behind (a slow client) skips to the latest state instead of queueing old ones, so it holds
no more memory than one event and never slows the watcher or the other streams.

``StreamSlots`` caps the streams open at once, per client address and in all: each holds a
connection and a task for as long as the client likes, so without a cap one client could take
every connection the server has (``WAITPOINT_MAX_CONNECTIONS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

from ..client import FOLLOW_MIN_GAP_SECONDS, FOLLOW_RECHECK_SECONDS
from ..logs import get_logger
from ..storage import Storage

log = get_logger("engine.api.watchers")

RETRY_AFTER_SECONDS = 10
"""What a refused stream is told to wait before trying again (``Retry-After``)."""


def sse_event(event: str, text: str) -> bytes:
    """One server-sent event; JSON never contains a raw newline, so ``text`` is one line."""
    return f"event: {event}\ndata: {text}\n\n".encode()


class Watcher:
    """One query followed for every stream that shows it: read and serialised once per change.

    ``version`` counts the distinct states published; ``message`` is the latest as a ready
    server-sent event. ``ended`` is set with the last state of something that cannot change
    any more (a finished run); ``failed`` when a read raised, so streams close (the browser
    reconnects) rather than hang on a watcher that stopped.
    """

    def __init__(
        self,
        hub: StreamHub,
        key: Hashable,
        event: str,
        read: Callable[[], Awaitable[Any]],
        body: Callable[[Any], Any],
        done: Callable[[Any], bool],
    ) -> None:
        self.key = key
        self.version = 0
        self.message = b""
        self.ended = False
        self.failed: BaseException | None = None
        self.subscribers = 0
        self._hub = hub
        self._event = event
        self._read = read
        self._body = body
        self._done = done
        self._published = asyncio.Event()
        self._first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._follow(), name=f"waitpoint-stream-{event}")

    @property
    def published(self) -> asyncio.Event:
        """Set at the next publication (or failure); take it before comparing ``version``."""
        return self._published

    async def ready(self) -> None:
        """Wait for the first state; re-raise what the first read raised (an unknown run)."""
        await asyncio.shield(self._first)

    async def _follow(self) -> None:
        """Read now and after each commit (the storage's change event, taken before the read
        so nothing is missed), re-checking every few seconds; a burst of commits is one read."""
        storage: Storage = self._hub.storage
        last: str | None = None
        try:
            while True:
                changed = storage.change_event()
                value = await self._read()
                text = json.dumps(self._body(value), separators=(",", ":"))
                if text != last:
                    last = text
                    self._publish(sse_event(self._event, text), ended=self._done(value))
                    if self.ended:
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), FOLLOW_RECHECK_SECONDS)
                await asyncio.sleep(FOLLOW_MIN_GAP_SECONDS)
        except Exception as exc:
            self.failed = exc
            if not self._first.done():
                self._first.set_exception(exc)
            else:
                log.warning("stream.read_failed", stream=self._event, error=str(exc))
            self._wake()
        finally:
            self._hub.forget(self)

    def _publish(self, message: bytes, *, ended: bool) -> None:
        self.version += 1
        self.message = message
        self.ended = ended
        if not self._first.done():
            self._first.set_result(None)
        self._wake()

    def _wake(self) -> None:
        event, self._published = self._published, asyncio.Event()
        event.set()

    def stop(self) -> None:
        self._task.cancel()
        if not self._first.done():
            self._first.cancel()


class StreamHub:
    """The watchers of one app, by key: (view, kind, normalised query)."""

    def __init__(self, storage: Storage, slots: StreamSlots) -> None:
        self.storage = storage
        self.slots = slots
        self._watchers: dict[Hashable, Watcher] = {}

    @property
    def watchers(self) -> int:
        """Watchers running now (one per distinct query that has an open stream)."""
        return len(self._watchers)

    async def subscribe(
        self,
        key: Hashable,
        event: str,
        read: Callable[[], Awaitable[Any]],
        body: Callable[[Any], Any],
        done: Callable[[Any], bool] = lambda _: False,
    ) -> Watcher:
        """The watcher of ``key`` (started if none runs), once it has a first state.

        Raises what its first read raised (``RunNotFoundError``: a 404 before any stream
        starts). Every successful call needs one ``unsubscribe``.
        """
        watcher = self._watchers.get(key)
        if watcher is None:
            watcher = Watcher(self, key, event, read, body, done)
            self._watchers[key] = watcher
        watcher.subscribers += 1
        try:
            await watcher.ready()
        except BaseException:
            self.unsubscribe(watcher)
            raise
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        """One stream left; the last one to leave stops the watcher."""
        watcher.subscribers -= 1
        if watcher.subscribers <= 0:
            self.forget(watcher)
            watcher.stop()

    def forget(self, watcher: Watcher) -> None:
        """Hand out no more subscriptions to ``watcher`` (it stopped, ended or failed)."""
        if self._watchers.get(watcher.key) is watcher:
            del self._watchers[watcher.key]


@dataclass
class StreamSlots:
    """Open streams counted per client address and in all; past a cap, a clear refusal.

    Per address: 429 (that client should close one first). In all: 503 (the server is full,
    whoever asks). Both say which setting raises the cap and carry ``Retry-After``.
    """

    total: int
    per_client: int

    def __post_init__(self) -> None:
        self.open = 0
        self.by_client: Counter[str] = Counter()

    def take(self, client: str) -> None:
        """Count one more stream for ``client``, or raise the 429/503 that refuses it."""
        if self.by_client[client] >= self.per_client:
            raise HTTPException(
                429,
                f"too many live-update streams from {client}: {self.per_client} are open; close"
                " one (or raise WAITPOINT_MAX_STREAMS_PER_CLIENT)",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if self.open >= self.total:
            raise HTTPException(
                503,
                f"the server has {self.total} live-update streams open, its limit: try again"
                " later (or raise WAITPOINT_MAX_STREAMS)",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.open += 1
        self.by_client[client] += 1

    def give_back(self, client: str) -> None:
        self.open -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]
