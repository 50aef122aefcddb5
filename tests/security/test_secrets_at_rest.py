"""Secrets at rest: what the engine leaves on disk and in the database.

The SQLite files and ``.waitpoint/`` are private to their owner whatever the umask. The
callback signing secret is derived from the secret key, never kept in the database; a key
rotation keeps the previous key's callback URLs and approval links working while
``WAITPOINT_PREVIOUS_SECRET_KEY`` is set; a database made before that keeps verifying the URLs
it issued; secret keys shorter than 32 characters are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from engine import Engine
from engine.api import create_app
from engine.api.auth import Auth, resolve_secret_key
from engine.cli import app as cli
from engine.client.local import verify_callback
from engine.errors import ConfigurationError
from engine.keys import derive_signing_secret
from engine.settings import Settings
from engine.signing import CallbackSigner
from engine.storage.sqlite import sqlite_path
from engine.ui.sessions import Sessions

from .raw_database import migrations_module, sql


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Files made inside are made under ``mask`` (by every thread of this process)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022])
async def test_the_sqlite_files_and_their_new_folders_are_private_whatever_the_umask(
    tmp_path: Path, mask: int
) -> None:
    database = tmp_path / "made" / "here" / "engine.db"
    before = mode(tmp_path)
    with umask(mask):
        async with Engine(f"sqlite:///{database}") as engine:
            await engine.tokens.create()  # a write: the -wal and -shm files exist now
            files = {p.name: mode(p) for p in database.parent.iterdir()}
    private = {"engine.db": 0o600, "engine.db-wal": 0o600, "engine.db-shm": 0o600}
    assert files == {**private, "secret_key": 0o600}  # the key generated for it lives beside it
    assert mode(tmp_path / "made") == 0o700 and mode(tmp_path / "made" / "here") == 0o700
    assert mode(tmp_path) == before  # a folder that existed is left as it was


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_the_generated_key_file_and_its_folder_are_private_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mask: int
) -> None:
    monkeypatch.chdir(tmp_path)
    with umask(mask):
        made = resolve_secret_key(Settings(secret_key=None))
    key, created = made.value, made.created
    assert created and len(key) >= 32
    assert mode(tmp_path / ".waitpoint") == 0o700
    assert mode(tmp_path / ".waitpoint" / "secret_key") == 0o600
    again = resolve_secret_key(Settings(secret_key=None))
    assert (again.value, again.created) == (key, False)
    assert os.listdir(tmp_path / ".waitpoint") == ["secret_key"]  # no scratch file left


def test_processes_racing_to_generate_the_key_all_get_the_same_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    start = threading.Barrier(8)
    results: list[tuple[str, bool]] = []

    def resolve() -> None:
        start.wait()
        found = resolve_secret_key(Settings(secret_key=None))
        results.append((found.value, found.created))

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({key for key, _ in results}) == 1
    assert [created for _, created in results].count(True) == 1


# the callback signing secret and the secret key ------------------------------------------------

KEY = "secrets-at-rest-tests-key-0123456789abcdef"
NEW_KEY = "secrets-at-rest-tests-new-key-0123456789abcdef"
PUBLIC_URL = "http://127.0.0.1:8030"
TOKENS = "/api/v1/waitpoints/tokens"


def keyed(key: str | None = KEY, **more: Any) -> Settings:
    return Settings(secret_key=key, public_url=PUBLIC_URL, api_url=None, **more)


def signature_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def hmac_hex(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


@contextlib.asynccontextmanager
async def api_on(engine: Engine, key: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine, secret_key=key)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def callback(api: httpx.AsyncClient, url: str, data: Any = None) -> int:
    answer = await api.post(urlsplit(url).path, json=data if data is not None else {"ok": True})
    return answer.status_code


async def test_a_secret_key_shorter_than_32_characters_is_refused(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = "k" * 31
    with pytest.raises(ConfigurationError, match="WAITPOINT_SECRET_KEY is 31 characters long"):
        await Engine(sqlite_url, settings=keyed(short)).open()
    with pytest.raises(ConfigurationError, match="WAITPOINT_SECRET_KEY is 31 characters long"):
        resolve_secret_key(keyed(short))
    async with Engine(sqlite_url, settings=keyed("k" * 32)):  # 32 is enough
        pass
    monkeypatch.chdir(tmp_path)  # a short key in the key file is refused too, naming the file
    (tmp_path / ".waitpoint").mkdir()
    (tmp_path / ".waitpoint" / "secret_key").write_text("short\n")
    with pytest.raises(ConfigurationError, match=r"\.waitpoint/secret_key is 5 characters long"):
        await Engine(sqlite_url, settings=keyed(None)).open()


def test_the_cli_refuses_a_short_secret_key_in_one_line(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAITPOINT_SECRET_KEY", "k" * 12)
    for command in (["serve"], ["worker", "--tasks", "tasks"], ["tokens", "list"]):
        result = CliRunner().invoke(cli, [*command, "--database", sqlite_url])
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: WAITPOINT_SECRET_KEY is 12 characters long")


async def test_the_database_keeps_no_signing_secret_urls_are_signed_with_one_derived_from_the_key(
    db_url: str, tmp_path: Path
) -> None:
    async with Engine(db_url, settings=keyed()) as engine:
        token = await engine.tokens.create()
    meta = {row["key"]: row["value"] for row in await sql(db_url, "SELECT key, value FROM meta")}
    derived = derive_signing_secret(KEY)
    assert derived == hmac_hex(KEY, "waitpoint callback URL signing v1")
    assert "signing_secret" not in meta and derived not in meta.values()
    assert signature_of(token.url) == hmac_hex(derived, token.id)
    # nothing in the database goes into it: another database, the same key, the same URL
    async with Engine(f"sqlite:///{tmp_path}/other.db", settings=keyed()) as other:
        assert other.signer.url(token.id) == token.url


async def test_processes_with_the_key_or_just_the_signing_secret_make_urls_the_api_accepts(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with Engine(db_url, settings=keyed()) as server, api_on(server, KEY) as api:
        first = await server.tokens.create()
        worker_settings = keyed(None, signing_secret=derive_signing_secret(KEY))
        async with Engine(db_url, settings=worker_settings) as worker:  # holds no API key
            assert worker.storage.signing_key_matches and worker.secret_key is None
            second = await worker.tokens.create()
        assert not (tmp_path / ".waitpoint").exists()  # it neither read nor made a key file
        with capture_logs() as logs:
            async with Engine(db_url, settings=keyed(NEW_KEY)) as stray:
                assert not stray.storage.signing_key_matches
                third = await stray.tokens.create()
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "storage.signing_key_mismatch"
        ]
        assert await callback(api, first.url) == 200
        assert await callback(api, second.url) == 200
        assert await callback(api, third.url) == 401  # signed with a key the server lacks


def test_waitpoint_signing_secret_prints_the_secret_derived_from_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WAITPOINT_SECRET_KEY", KEY)
    printed = CliRunner().invoke(cli, ["signing-secret"])
    assert printed.exit_code == 0 and printed.stdout == derive_signing_secret(KEY) + "\n"
    monkeypatch.delenv("WAITPOINT_SECRET_KEY")
    missing = CliRunner().invoke(cli, ["signing-secret"])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: no secret key")
    assert not (tmp_path / ".waitpoint").exists()  # it never makes one


async def test_a_rotation_keeps_callback_urls_and_approval_links_of_the_previous_key_working(
    db_url: str,
) -> None:
    async with Engine(db_url, settings=keyed()) as before:
        by_url, by_link, by_public, unused = [await before.tokens.create() for _ in range(4)]
        link = await before.tokens.approval_link(by_link.id)
        public = Auth(KEY).public_token([f"write:waitpoints:{by_public.id}"])
        old_session = Sessions(KEY).issue("session", 3600)

    rotating = keyed(NEW_KEY, previous_secret_key=KEY)
    with capture_logs() as logs:
        async with Engine(db_url, settings=rotating) as after, api_on(after, NEW_KEY) as api:
            assert after.storage.signing_key_matches
            assert await callback(api, by_url.url) == 200
            page = await api.get(f"{urlsplit(link).path}?{urlsplit(link).query}")
            assert page.status_code == 200, page.text
            done = await api.post(
                f"{TOKENS}/{by_public.id}/complete",
                json={"data": {"ok": True}},
                headers={"Authorization": f"Bearer {public}"},
            )
            assert done.status_code == 200, done.text
            fresh = await after.tokens.create()
            assert fresh.url == after.signer.url(fresh.id)
            assert signature_of(fresh.url) == hmac_hex(derive_signing_secret(NEW_KEY), fresh.id)
            assert await callback(api, fresh.url) == 200
            # what the previous key does not open: the API itself, and UI sessions
            assert (
                await api.get(TOKENS, headers={"Authorization": f"Bearer {KEY}"})
            ).status_code == 401
            api.cookies.set("waitpoint_session", old_session)
            assert (await api.get("/ui/tokens")).status_code == 401
    assert "storage.signing_key_rotated" in [e["event"] for e in logs]

    async with Engine(db_url, settings=keyed(NEW_KEY)) as done_rotating:  # grace period over
        async with api_on(done_rotating, NEW_KEY) as api:
            assert await callback(api, unused.url) == 401
            page = await api.get(f"{urlsplit(link).path}?{urlsplit(link).query}")
            assert page.status_code == 401
        assert done_rotating.storage.signing_key_matches
    with capture_logs() as logs:  # a process left on the old key is told so
        async with Engine(db_url, settings=keyed()) as stale:
            assert not stale.storage.signing_key_matches
    assert "storage.signing_key_mismatch" in [e["event"] for e in logs]


def test_the_signer_accepts_the_previous_secret_only_when_given_it() -> None:
    token_id = "waitpoint_01abcdefghjkmnpqrstvwxyz012"
    old = CallbackSigner(PUBLIC_URL, "old-secret").signature(token_id)
    assert CallbackSigner(PUBLIC_URL, "new-secret", previous="old-secret").verify(token_id, old)
    assert not CallbackSigner(PUBLIC_URL, "new-secret").verify(token_id, old)
    assert not CallbackSigner(PUBLIC_URL, "new-secret", previous="other").verify(token_id, old)


async def test_a_database_made_before_migration_4_keeps_verifying_its_urls_and_forgets_its_secret(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before migration 4 the signing secret was a ``meta`` row (migration 1 made it) and every
    token URL was signed with it; the URLs reviewers already hold must keep working."""
    legacy = "0f" * 32  # what migration 1 used to store: secrets.token_hex(32)
    module = migrations_module(db_url)
    migrations = __import__(module, fromlist=["MIGRATIONS"]).MIGRATIONS
    with monkeypatch.context() as patch:
        patch.setattr(f"{module}.MIGRATIONS", migrations[:3])
        async with Engine(db_url, settings=keyed()) as old:
            waiting, tampered, cancelled = [(await old.tokens.create()).id for _ in range(3)]
            await old.tokens.cancel(cancelled)
    await sql(db_url, "DELETE FROM meta")  # the old version kept this, and only this
    await sql(db_url, "INSERT INTO meta (key, value) VALUES ('signing_secret', ?)", legacy)
    issued = CallbackSigner(PUBLIC_URL, legacy)

    async with Engine(db_url, settings=keyed()) as new, api_on(new, KEY) as api:
        assert await new.storage.migrate() == len(migrations)
        meta = await sql(db_url, "SELECT key, value FROM meta")
        assert [row["key"] for row in meta] == ["signing_key_check"]
        assert legacy not in [row["value"] for row in meta]
        assert await verify_callback(new.signer, new.storage, waiting, issued.signature(waiting))
        assert not await verify_callback(
            new.signer, new.storage, waiting, issued.signature(tampered)
        )
        assert not await verify_callback(new.signer, new.storage, waiting, "0" * 64)
        assert await callback(api, issued.url(waiting)) == 200
        assert await callback(api, issued.url(cancelled)) == 410  # closed, not forged
        bad = issued.url(tampered)[:-1] + ("0" if issued.url(tampered)[-1] != "0" else "1")
        assert await callback(api, bad) == 401
        current = await new.tokens.retrieve(tampered)  # the URL it shows now works as well
        assert await callback(api, current.url) == 200
        later = await new.tokens.create()  # the old secret signs nothing made since
        assert not await verify_callback(
            new.signer, new.storage, later.id, issued.signature(later.id)
        )
    if db_url.startswith("sqlite"):  # not even a freed page still holds it
        folder = sqlite_path(db_url).parent
        for path in folder.iterdir():
            assert legacy.encode() not in path.read_bytes(), path.name
