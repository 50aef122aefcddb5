"""What only the PostgreSQL backend has: its URL, its driver, migrations, clock and row locks.

Everything else it shares with SQLite is covered by the suites that run on both (``db_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import pytest

from engine import Engine, Queue, RunStatus, Worker, create_token, task, wait_for_tokens
from engine.errors import ConfigurationError, StorageError
from engine.models import TaskInfo
from engine.storage import display_url, open_storage
from engine.storage.base import NewWorker, Storage
from engine.storage.postgres_schema import MIGRATIONS


def test_the_schema_comes_from_the_url_and_other_parameters_reach_the_server() -> None:
    pytest.importorskip("asyncpg")
    from engine.storage.postgres import postgres_dsn

    assert postgres_dsn("postgresql://u@h/db") == ("postgresql://u@h/db", "waitpoint")
    dsn, schema = postgres_dsn("postgres://u@h:5/db?schema=team_a&application_name=x")
    assert (dsn, schema) == ("postgres://u@h:5/db?application_name=x", "team_a")
    for bad in ("a-b", "1abc", "x" * 42, ""):
        with pytest.raises(ConfigurationError, match="must be letters"):
            postgres_dsn(f"postgresql://u@h/db?schema={bad}")


def test_without_the_driver_a_postgres_url_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m.startswith("engine.storage.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # what an absent package looks like
    with pytest.raises(ConfigurationError, match=r"pip install 'waitpoint\[postgres\]'"):
        open_storage("postgresql://postgres@127.0.0.1/test", signing_secret="s")


def test_banners_never_show_the_database_password() -> None:
    assert (
        display_url("postgresql://app:s3cret@db:5432/prod") == "postgresql://app:***@db:5432/prod"
    )
    assert display_url("sqlite:///.waitpoint/engine.db") == "sqlite:///.waitpoint/engine.db"


def test_an_unreachable_server_is_a_storage_error_naming_the_cause() -> None:
    pytest.importorskip("asyncpg")

    async def main() -> None:
        async with Engine("postgresql://postgres@127.0.0.1:1/test"):
            pass

    with pytest.raises(StorageError, match="cannot open PostgreSQL database"):
        asyncio.run(main())


async def test_processes_starting_at_once_migrate_once(postgres_url: str) -> None:
    engines = [Engine(postgres_url) for _ in range(6)]
    await asyncio.gather(*(engine.open() for engine in engines))
    try:
        versions = {await engine.storage.migrate() for engine in engines}
        assert versions == {len(MIGRATIONS)}
        pool = engines[0].storage._pool  # type: ignore[attr-defined]
        schema = engines[0].storage.schema  # type: ignore[attr-defined]
        count = await pool.fetchval(f'SELECT count(*) FROM "{schema}".migrations')
        assert count == len(MIGRATIONS)
        secrets = {engine.signer.url("t") for engine in engines}
        assert len(secrets) == 1  # every process signs callback URLs with the same secret
    finally:
        await asyncio.gather(*(engine.close() for engine in engines))


async def test_an_engine_makes_the_server_functions_it_calls_when_it_opens(
    postgres_url: str,
) -> None:
    """A token's close is one call of a function on the server (``ServerFunction``), named by
    a hash of its definition: an engine opening a database that lacks its version of the
    function (made by another engine version, or dropped) creates it, migrated or not."""
    async with Engine(postgres_url) as engine:
        storage = engine.storage
        name = storage.close_token_function.name  # type: ignore[attr-defined]
        schema = storage.schema  # type: ignore[attr-defined]
        pool = storage._pool  # type: ignore[attr-defined]
        find = (
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = $1 AND p.proname = $2"
        )
        assert await pool.fetchval(find, schema, name) == 1
        await pool.execute(f'DROP FUNCTION "{schema}".{name}')
    async with Engine(postgres_url) as engine:
        pool = engine.storage._pool  # type: ignore[attr-defined]
        assert await pool.fetchval(find, schema, name) == 1
        token = await engine.tokens.create()
        completed = await engine.tokens.complete(token.id, {"ok": True})
        assert completed.applied and completed.token.data == {"ok": True}


async def until_following(storage: Storage) -> None:
    """Wait (5 s at most) until ``storage``'s listener follows the other processes."""
    for _ in range(500):
        if storage._following:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the listener did not start within 5 s")


async def test_a_queued_run_is_told_with_its_number(postgres_url: str) -> None:
    """A queued run's notification is numbered by a hash of its id (migration 8), the same
    for every process following the task's work: the number decides whose turn it is."""
    async with Engine(postgres_url) as engine, Engine(postgres_url) as other:
        told: list[tuple[str | None, int | None]] = []
        heard: list[tuple[str | None, int | None]] = []
        for storage, into in ((engine.storage, told), (other.storage, heard)):
            storage.follow_work(["turns"], lambda task_id, n, into=into: into.append((task_id, n)))
            await until_following(storage)  # until then, every commit is told unnumbered
        await engine.storage.register_tasks([TaskInfo("turns")])
        told.clear()
        heard.clear()
        runs = [await engine.trigger("turns", {}) for _ in range(3)]
        for _ in range(500):
            if len(told) == len(heard) == 3:
                break
            await asyncio.sleep(0.01)
        assert told == heard  # every process hears the same numbers
        assert [task_id for task_id, _ in told] == ["turns"] * 3
        assert len({n for _, n in told}) == len(runs)  # one per run
        assert all(isinstance(n, int) and n >= 0 for _, n in told)


async def test_whose_turn_it_is_follows_workers_starting_and_stopping(postgres_url: str) -> None:
    """``serving()`` is read once and kept while notifications come; a worker that starts or
    stops tells every process (a 'workers' notification), a heartbeat does not."""
    async with Engine(postgres_url) as engine, Engine(postgres_url) as other:
        storage = engine.storage
        storage.change_event()  # starts the listener
        await until_following(storage)
        first = NewWorker("w-1", ["turns"], 10, 30_000)
        await other.storage.register_tasks([TaskInfo("turns")], first)
        for _ in range(200):  # 2 s: before the 5 s after which it is read again anyway
            if await storage.serving() == {"turns": ["w-1"]}:
                break
            await asyncio.sleep(0.01)
        assert await storage.serving() == {"turns": ["w-1"]}
        await other.storage.register_tasks(
            [TaskInfo("turns")], NewWorker("w-2", ["turns"], 10, 30_000)
        )
        await other.storage.stop_worker("w-1")
        for _ in range(200):  # 2 s: before the 5 s after which it is read again anyway
            if await storage.serving() == {"turns": ["w-2"]}:
                break
            await asyncio.sleep(0.01)
        assert await storage.serving() == {"turns": ["w-2"]}


def test_workers_take_turns_at_notifications_once_they_know_each_other() -> None:
    worker = Worker(Engine("sqlite:///unused.db"), {})
    assert worker._takes("t", 7)  # no heartbeat read yet: every notification
    worker._peers = {"t": sorted([worker.id, "~another"])}
    mine = [worker._takes("t", n) for n in range(6)]
    assert mine == [worker.id < "~another", worker.id > "~another"] * 3
    assert worker._takes("u", 1)  # a task whose workers it does not know


async def test_a_process_hears_status_changes_only_once_it_reads_them(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 13: a run's status and a closed waitpoint are told on a channel of their
    own. A process that only follows work (a worker) is not told them: three notifications
    a token-wait run that nothing in it reads, once per worker. Once it waits for a run, its
    listener takes that channel at once (not at its next probe, 5 s later), its readers look
    again, and the next change reaches them."""
    async with Engine(postgres_url) as engine, Engine(postgres_url) as other:
        storage = engine.storage
        heard: list[str] = []
        notified = storage._notified  # type: ignore[attr-defined]

        def recording(conn: Any, pid: int, channel: str, payload: object) -> None:
            heard.append(str(payload))
            notified(conn, pid, channel, payload)

        monkeypatch.setattr(storage, "_notified", recording)
        queued: list[str | None] = []
        storage.follow_work(["heard"], lambda task_id, _n: queued.append(task_id))
        await until_following(storage)
        queued.clear()  # the listener's first wake: whatever was committed before it
        await other.storage.register_tasks([TaskInfo("heard")])

        async def run_to_its_end() -> str:
            run = await other.trigger("heard", {})
            [claimed] = await other.storage.claim_runs("w", 1, 60_000, ["heard"])
            await other.storage.finish_run(claimed.id, claimed.epoch, RunStatus.COMPLETED, 1, None)
            return run.id

        first = await run_to_its_end()
        token = await other.tokens.create()
        await other.tokens.complete(token.id, {})
        for _ in range(200):
            if queued:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert queued == ["heard"]  # the work was told
        assert f"r:{first}" not in heard and "w" not in heard, heard

        second = await other.trigger("heard", {})
        reading = storage.run_event(second.id)
        await asyncio.wait_for(reading.wait(), 2)  # the listener took the channel: look again
        reading = storage.run_event(second.id)
        [claimed] = await other.storage.claim_runs("w", 1, 60_000, ["heard"])
        await other.storage.finish_run(claimed.id, claimed.epoch, RunStatus.COMPLETED, 1, None)
        await asyncio.wait_for(reading.wait(), 5)
        assert f"r:{second.id}" in heard


async def test_times_come_from_the_database_clock(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Engine(postgres_url) as engine:
        storage = engine.storage
        pool = storage._pool  # type: ignore[attr-defined]
        await storage.register_tasks([TaskInfo("clocked")])
        # this host's wall clock is set an hour back (say, by hand, after the engine opened)
        wall = time.time
        monkeypatch.setattr(time, "time", lambda: wall() - 3600)
        run = await engine.trigger("clocked", {})
        db_now = await pool.fetchval("SELECT (extract(epoch FROM now()) * 1000)::bigint")
        assert abs(run.created_at.timestamp() * 1000 - db_now) < 5_000
        assert abs(storage.now_ms() - db_now) < 5_000
        # a transaction reads the database's clock again once its last reading is old
        storage._clock_measured -= 60  # type: ignore[attr-defined]
        storage._clock_checked -= 60  # type: ignore[attr-defined]
        storage._db_ms_measured -= 3_600_000  # type: ignore[attr-defined]  # a wrong reading
        run = await engine.trigger("clocked", {})
        db_now = await pool.fetchval("SELECT (extract(epoch FROM now()) * 1000)::bigint")
        assert abs(run.created_at.timestamp() * 1000 - db_now) < 5_000


async def test_a_reading_of_the_database_clock_over_a_slow_link_does_not_move_now(
    postgres_url: str,
) -> None:
    """A request held up 600 ms on its way (the answer comes back at once): placed at the
    middle of its round trip, that reading is 300 ms ahead of the database's clock, and a
    timer would fire 300 ms early. Found by scripts/partitions.py under added latency."""

    class SlowLink:
        def __init__(self, conn: Any) -> None:
            self.conn = conn

        async def fetchval(self, query: str) -> Any:
            await asyncio.sleep(0.6)
            return await self.conn.fetchval(query)

    async def off_by_ms(pool: Any) -> float:
        before = storage.now_ms()
        db_now = await pool.fetchval("SELECT (extract(epoch FROM clock_timestamp()) * 1000)")
        after = storage.now_ms()
        return float(db_now) - (before + after) / 2

    async with Engine(postgres_url) as engine:
        storage = engine.storage
        pool = storage._pool  # type: ignore[attr-defined]
        assert abs(await off_by_ms(pool)) < 50
        async with pool.acquire() as conn:
            await storage._measure_clock(SlowLink(conn))  # type: ignore[attr-defined]
        assert abs(await off_by_ms(pool)) < 50
        # a reading over a fast link is taken again, as every _CLOCK_SECONDS
        storage._clock_measured -= 60  # type: ignore[attr-defined]
        storage._db_ms_measured -= 1_000  # type: ignore[attr-defined]
        async with pool.acquire() as conn:
            await storage._measure_clock(conn)  # type: ignore[attr-defined]
        assert abs(await off_by_ms(pool)) < 50


async def test_a_transaction_left_open_by_a_cut_off_worker_is_ended_by_the_server(
    postgres_url: str,
) -> None:
    """A worker cut off between BEGIN and COMMIT must not keep its row locks for hours (until
    the server's TCP keepalive gives up): the engine's sessions end a transaction that waits
    10 s for its next statement, unless the URL says otherwise."""
    import asyncpg

    async with Engine(postgres_url) as engine:
        pool = engine.storage._pool  # type: ignore[attr-defined]
        assert await pool.fetchval("SHOW idle_in_transaction_session_timeout") == "10s"

    async with Engine(f"{postgres_url}&idle_in_transaction_session_timeout=500ms") as engine:
        storage = engine.storage
        pool = storage._pool  # type: ignore[attr-defined]
        assert await pool.fetchval("SHOW idle_in_transaction_session_timeout") == "500ms"
        await storage.register_tasks([TaskInfo("locked")])
        run = await engine.trigger("locked", {})
        lock = f'SELECT 1 FROM "{storage.schema}".runs WHERE id = $1 FOR UPDATE NOWAIT'  # type: ignore[attr-defined]
        cut_off = await pool.acquire()
        await cut_off.execute("BEGIN")
        await cut_off.execute(lock, run.id)  # the worker locks the run, then is cut off
        with pytest.raises(asyncpg.LockNotAvailableError):
            await pool.fetchval(lock, run.id)
        await asyncio.sleep(1.5)
        assert await pool.fetchval(lock, run.id) == 1  # the server ended it: lock released
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
            await pool.release(cut_off)


async def test_concurrent_idempotent_triggers_make_one_run(postgres_url: str) -> None:
    async with Engine(postgres_url) as engine:
        await engine.storage.register_tasks([TaskInfo("once")])
        runs = await asyncio.gather(
            *(engine.trigger("once", {"n": n}, idempotency_key="same") for n in range(20))
        )
        assert len({run.id for run in runs}) == 1
        assert sum(not run.is_cached for run in runs) == 1


@task("pg-two-approvals")
async def two_approvals(payload: dict[str, int]) -> int:
    first = await create_token(idempotency_key=f"a-{payload['n']}")
    second = await create_token(idempotency_key=f"b-{payload['n']}")
    await wait_for_tokens([first, second], mode="all")
    return payload["n"]


async def test_two_completions_racing_never_leave_a_run_waiting(postgres_url: str) -> None:
    """Each completion alone sees the other token still WAITING; the run must still resume.

    Completions commit on different connections at the same moment: without the row lock a
    completion takes on the runs it may re-queue, both would decide "not yet" and the run
    would wait forever.
    """
    count = 40
    async with Engine(postgres_url) as engine:
        worker = Worker(engine, {two_approvals.id: two_approvals}, poll_seconds=0.1)
        running = asyncio.create_task(worker.run())
        try:
            runs = [await engine.trigger(two_approvals.id, {"n": n}) for n in range(count)]
            for n in range(count):
                keys = [f"a-{n}", f"b-{n}"]
                while True:  # the tokens exist once the run got to its wait
                    found = [await engine.tokens.list(idempotency_key=k) for k in keys]
                    if all(page.data for page in found):
                        break
                    await asyncio.sleep(0.01)
                await asyncio.gather(
                    *(engine.tokens.complete(page.data[0].id, {"ok": True}) for page in found)
                )
            for run in runs:
                done = await engine.wait_for_run(run.id, timeout=20)
                assert done.status is RunStatus.COMPLETED
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)


@task("pg-limited", queue=Queue("pg-limited", concurrency_limit=2))
async def limited(payload: dict[str, int]) -> int:
    token = await create_token(idempotency_key=f"limited-{payload['n']}")
    await wait_for_tokens([token], mode="all")
    return payload["n"]


async def test_pooled_connections_keep_no_session_state(postgres_url: str) -> None:
    """The pools reset nothing when a connection goes back (that reset was a round trip after
    every transaction), so nothing the engine does may leave state on a pooled connection:
    no LISTEN, no session-level advisory lock, no SET, no open cursor or temporary table,
    no transaction left open."""
    async with Engine(postgres_url) as engine:
        storage = engine.storage
        worker = Worker(engine, {limited.id: limited}, poll_seconds=0.05)
        running = asyncio.create_task(worker.run())
        try:
            runs = [await engine.trigger(limited.id, {"n": n}) for n in range(6)]
            canceled = await engine.trigger(limited.id, {"n": 99})
            await engine.runs.cancel(canceled.id)
            for n in range(6):
                page = await engine.tokens.list(idempotency_key=f"limited-{n}")
                while not page.data:  # the run has not made its token yet
                    await engine.storage.wait_for_change(0.05)
                    page = await engine.tokens.list(idempotency_key=f"limited-{n}")
                await engine.tokens.complete(page.data[0].id, {"n": n})
            for run in runs:
                assert (await engine.wait_for_run(run.id, timeout=20)).output == run.payload["n"]
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)

        for pool in (storage._pool, storage._control):  # type: ignore[attr-defined]
            # every connection of the pool at once: those the workload used among them
            conns = [await pool.acquire() for _ in range(pool.get_max_size())]
            try:
                for conn in conns:
                    assert not conn.is_in_transaction()
                    # (the unnamed cursor in pg_cursors is this query's own)
                    state = await conn.fetchrow(
                        "SELECT"
                        " (SELECT count(*) FROM pg_listening_channels()) AS listening,"
                        " (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()"
                        "   AND locktype = 'advisory') AS advisory,"
                        " (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors,"
                        " (SELECT count(*) FROM pg_class"
                        "   WHERE relnamespace = pg_my_temp_schema()) AS temporary,"
                        " (SELECT array_agg(name) FROM pg_settings WHERE source = 'session')"
                        "   AS settings"
                    )
                    assert dict(state) == {
                        "listening": 0,
                        "advisory": 0,
                        "cursors": 0,
                        "temporary": 0,
                        "settings": None,
                    }
            finally:
                for conn in conns:
                    await pool.release(conn)


async def test_every_table_of_the_schema_is_one_the_statements_qualify(postgres_url: str) -> None:
    """Statements name tables without a schema and ``sql.TABLES`` puts the schema in front
    (no ``search_path``, so PgBouncer works): a table missing from that list would be looked
    up in the wrong schema."""
    from engine.storage.sql import TABLES, rows

    async with Engine(postgres_url) as engine:
        storage: Any = engine.storage
        found = await storage._read(
            rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :schema",
                schema=storage.schema,
            )
        )
    assert {row["table_name"] for row in found} == set(TABLES)
