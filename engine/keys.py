"""The secret key, the keys derived from it, and the files that hold secrets on disk.

One secret key (``WAITPOINT_SECRET_KEY``, or the one kept in a file beside the database when
none is configured: ``key_file``) is the root of everything a caller can present: the API's
bearer key, public access tokens and approval links (HS256 JWTs signed with it), UI sessions
(signed with a key derived from it) and callback URLs (signed with the *signing secret*,
derived from it here). Deriving the signing secret instead of keeping one in the database
means that a copy of the database, or read access to it, is not enough to forge a callback
URL.

Every process that makes token URLs (API server, workers, the CLI, an ``Engine`` in a script)
must therefore hold the same secret key, or just the signing secret: a worker that should not
hold the API key gets ``WAITPOINT_SIGNING_SECRET`` set to the value ``waitpoint
signing-secret`` prints, which signs callback URLs and opens nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigurationError
from .private_files import refusal, write_once
from .settings import SECRET_KEY_FILE, SECRET_KEY_NAME, Settings, sqlite_path

MIN_SECRET_KEY_LENGTH = 32
"""Shorter keys are refused: 32 characters of a random key are well past guessing, and HS256
(public access tokens) wants a key at least as long as its 32-byte output."""

SIGNING_LABEL = b"waitpoint callback URL signing v1"
"""Fixed label of the signing secret's derivation: changing it invalidates every URL."""

CHECK_LABEL = b"waitpoint signing key check v1"
"""Label of the check value the database keeps to notice processes signing with another key."""


@dataclass(frozen=True)
class SecretKey:
    """A secret key and where it came from (for messages: never print ``value``)."""

    value: str = field(repr=False)
    origin: str
    """``WAITPOINT_SECRET_KEY`` or the path of the key file."""
    created: bool = False
    """True when this call generated the key file (the one time the key may be shown)."""


@dataclass(frozen=True)
class SigningSecrets:
    """What a process signs callback URLs with, and what else it still accepts."""

    current: str = field(repr=False)
    previous: str | None = field(default=None, repr=False)
    """Derived from ``WAITPOINT_PREVIOUS_SECRET_KEY`` during a key rotation's grace period."""


def check_length(value: str, origin: str) -> str:
    """``value`` if it is long enough to be a secret key; else a ConfigurationError."""
    if len(value) < MIN_SECRET_KEY_LENGTH:
        raise ConfigurationError(
            f"{origin} is {len(value)} characters long; a secret key needs at least"
            f" {MIN_SECRET_KEY_LENGTH} (make one with: python -c 'import secrets;"
            " print(secrets.token_urlsafe(32))')"
        )
    return value


def key_file(settings: Settings) -> Path:
    """Where the key generated for ``settings.database_url`` is kept: ``secret_key`` in the
    SQLite file's folder (``.waitpoint/secret_key`` for the default database), so that every
    process of the database finds it, from whatever directory; for PostgreSQL, which has no
    file to keep it beside, ``.waitpoint/secret_key`` in the working directory."""
    url = settings.database_url
    if url.startswith("sqlite:"):
        with contextlib.suppress(ConfigurationError):  # a bad URL: opening it says so
            return sqlite_path(url).parent / SECRET_KEY_NAME
    return SECRET_KEY_FILE


def secret_key(settings: Settings, *, create: bool) -> SecretKey | None:
    """The configured key, else the one kept for the database (``key_file``; made if
    ``create``).

    A SQLite database made before its key moved beside it was used with the key in
    ``.waitpoint/secret_key`` of the directory its processes ran in: when the file beside the
    database is missing but the database exists and that file does, that key is still the
    database's (its callback URLs and its API key stay valid), and ``create`` copies it
    beside the database, where processes running anywhere else find it from then on.

    Refuses (ConfigurationError) a key shorter than ``MIN_SECRET_KEY_LENGTH``, and a key file
    that cannot be read or made, naming the file and why. None only when there is no key and
    ``create`` is False.
    """
    if settings.secret_key:
        value = check_length(settings.secret_key, "WAITPOINT_SECRET_KEY")
        return SecretKey(value, "WAITPOINT_SECRET_KEY")
    path = key_file(settings)
    text = _read_key(path)
    if text is not None:
        return SecretKey(check_length(text, str(path)), str(path))
    legacy = _legacy_key(settings, path)
    if legacy is not None:
        legacy = check_length(legacy, str(SECRET_KEY_FILE))
        if not create:
            return SecretKey(legacy, str(SECRET_KEY_FILE))
        text, _ = _write_key(path, legacy + "\n")
        return SecretKey(check_length(text, str(path)), str(path))
    if not create:
        return None
    text, created = _write_key(path, "wp_dev_" + secrets.token_urlsafe(32) + "\n")
    return SecretKey(check_length(text, str(path)), str(path), created=created)


def _read_key(path: Path) -> str | None:
    """The key in ``path``, or None when there is no such file."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(refusal("read the secret key file", path, exc)) from exc


def _write_key(path: Path, text: str) -> tuple[str, bool]:
    """Write ``text`` to a new ``path`` (private), unless a racing process wrote it first:
    the key in the file, and whether this call wrote it."""
    try:
        written, created = write_once(path, text)
    except OSError as exc:
        raise ConfigurationError(
            refusal("create the secret key file", path, exc)
            + " (set WAITPOINT_SECRET_KEY, or make the folder writable)"
        ) from exc
    return written.strip(), created


def _legacy_key(settings: Settings, path: Path) -> str | None:
    """The key of ``.waitpoint/secret_key`` here, if it belongs to the existing SQLite
    database of ``settings`` whose own key file (``path``) is missing."""
    if path == SECRET_KEY_FILE or not settings.database_url.startswith("sqlite:"):
        return None
    if not sqlite_path(settings.database_url).exists():  # a new database: a key of its own
        return None
    return _read_key(SECRET_KEY_FILE)


def derive_signing_secret(key: str) -> str:
    """The callback signing secret of a secret key: HMAC-SHA256(key, fixed label), as hex."""
    return hmac.new(key.encode(), SIGNING_LABEL, hashlib.sha256).hexdigest()


def signing_check(signing_secret: str) -> str:
    """A value that identifies a signing secret without revealing it (kept in the database)."""
    return hmac.new(signing_secret.encode(), CHECK_LABEL, hashlib.sha256).hexdigest()


def signing_secrets(settings: Settings) -> tuple[SigningSecrets, SecretKey | None]:
    """The signing secrets of a process that opens the database, and the key they came from.

    ``WAITPOINT_SIGNING_SECRET`` wins when set (no secret key is read or created then);
    otherwise the secret is derived from the secret key, which is generated into its file
    beside the database (``key_file``) when none exists.
    """
    previous = settings.previous_secret_key
    old = derive_signing_secret(previous) if previous else None
    if settings.signing_secret:
        return SigningSecrets(settings.signing_secret, old), None
    key = secret_key(settings, create=True)
    assert key is not None  # create=True always gives one
    return SigningSecrets(derive_signing_secret(key.value), old), key


def legacy_signature_hash(legacy_secret: str, token_id: str) -> str:
    """SHA-256 of the signature a token's URL carried under a database-kept secret.

    Migration 4 keeps this instead of the secret: the URL still verifies, and the database
    no longer holds anything that signs a URL.
    """
    signature = hmac.new(legacy_secret.encode(), token_id.encode(), hashlib.sha256).hexdigest()
    return hash_signature(signature)


def hash_signature(signature: str) -> str:
    return hashlib.sha256(signature.encode()).hexdigest()


__all__ = [
    "MIN_SECRET_KEY_LENGTH",
    "SecretKey",
    "SigningSecrets",
    "check_length",
    "derive_signing_secret",
    "hash_signature",
    "key_file",
    "legacy_signature_hash",
    "secret_key",
    "signing_check",
    "signing_secrets",
]
