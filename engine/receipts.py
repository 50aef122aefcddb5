"""Decision receipts: what a closed token decided, by whom and when, signed by the server.

    receipt = make_receipt(token, signer.secrets, now)   # a JSON object (a dict)
    verify_receipt(receipt, signer.secrets)              # None, or ValidationError saying why

A team that must prove a decision keeps its receipt: a JSON document such as

    {
      "type": "waitpoint.receipt", "version": 1,
      "tokenId": "waitpoint_...", "status": "COMPLETED",
      "completedAt": "2026-03-29T01:00:00.000Z", "completedVia": "ui",
      "answeredBy": null, "linkId": null,
      "dataSha256": "<hex SHA-256 of the completion data's canonical JSON>",
      "title": "Refund order 42",
      "issuedAt": "2026-03-29T01:02:00.000Z", "keyId": "<16 hex characters>",
      "signature": "<64 lowercase hex characters>"
    }

- ``status`` is how the token closed (COMPLETED, CANCELLED, TIMED_OUT); a WAITING token has
  no decision yet, and no receipt (``RunStateError``, 409 on the API).
- ``completedVia`` is the ``CompletionSource`` (python, cli, api, callback, public-token, ui,
  timeout); null only for a token closed before the engine recorded it.
- ``answeredBy`` and ``linkId``: who answered and through which link, when known (an
  approval's approver); null otherwise.
- ``dataSha256``: SHA-256, as hex, of ``canonical_json(data)``; the data itself is not in the
  receipt (it may be personal), so whoever holds it can show that it is what was decided.
- ``signature``: HMAC-SHA256, as 64 lowercase hex characters, of ``canonical_json`` of every
  other field, under the *receipt key*: HMAC-SHA256(signing secret, ``RECEIPT_LABEL``). The
  signing secret is the one callback URLs are signed with (``engine.keys``), but no receipt
  signature is ever a URL signature (another key, another message), nor the other way round.
- ``keyId`` names the receipt key without revealing it, so a receipt signed before a key
  rotation still verifies while the previous secret key is configured
  (``WAITPOINT_PREVIOUS_SECRET_KEY``), and fails with "unknown key" once it is gone.

``canonical_json(value)`` is ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8 (a lone surrogate, which UTF-8 cannot hold, as its
code unit: Python's ``surrogatepass``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .errors import RunStateError, ValidationError
from .keys import SigningSecrets
from .models import Approval, ApprovalVote, CompletionSource, Token, WaitpointStatus

RECEIPT_TYPE = "waitpoint.receipt"
RECEIPT_VERSION = 1
RECEIPT_LABEL = b"waitpoint receipt v1"
"""Label of the receipt key's derivation from the signing secret: changing it invalidates
every receipt."""
KEY_ID_LABEL = b"waitpoint receipt key id v1"

FIELDS = (
    "type",
    "version",
    "tokenId",
    "status",
    "completedAt",
    "completedVia",
    "answeredBy",
    "linkId",
    "dataSha256",
    "title",
    "issuedAt",
    "keyId",
    "signature",
)
"""Every field of a version 1 receipt, in the order it is written; all are required."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_CLOSED = {s.value for s in WaitpointStatus if s is not WaitpointStatus.WAITING}
_SOURCES = [s.value for s in CompletionSource]
_LONGEST_TEXT = 1000
"""Longest ``tokenId``, ``title``, ``answeredBy`` or ``linkId`` a receipt may carry."""


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value that receipts hash and sign."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def data_sha256(data: Any) -> str:
    """``dataSha256`` of completion data: hex SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(data)).hexdigest()


def receipt_key(signing_secret: str) -> bytes:
    """The key receipts are signed with, derived from a signing secret for receipts alone."""
    return hmac.new(signing_secret.encode(), RECEIPT_LABEL, hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """``keyId``: names a receipt key (16 hex characters) without revealing it."""
    return hmac.new(key, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def instant(moment: datetime) -> str:
    """A moment as receipts write it: UTC, to the millisecond (``2026-03-29T01:00:00.000Z``)."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def make_receipt(
    token: Token,
    secrets: SigningSecrets,
    now: datetime,
    *,
    answered_by: str | None = None,
    link_id: str | None = None,
) -> dict[str, Any]:
    """The signed receipt of a closed ``token``, issued at ``now``, signed with the current
    secret; ``RunStateError`` for a token still WAITING."""
    if token.is_waiting:
        raise RunStateError(
            f"token {token.id} is still WAITING: it has no decision yet, so no receipt"
        )
    key = receipt_key(secrets.current)
    unsigned: dict[str, Any] = {
        "type": RECEIPT_TYPE,
        "version": RECEIPT_VERSION,
        "tokenId": token.id,
        "status": token.status.value,
        "completedAt": None if token.completed_at is None else instant(token.completed_at),
        "completedVia": None if token.completed_via is None else token.completed_via.value,
        "answeredBy": answered_by,
        "linkId": link_id,
        "dataSha256": data_sha256(token.data),
        "title": token.title,
        "issuedAt": instant(now),
        "keyId": key_id(key),
    }
    return {**unsigned, "signature": _sign(key, unsigned)}


def verify_receipt(receipt: Any, secrets: SigningSecrets) -> None:
    """Return if ``receipt`` is a receipt signed with the current or the previous secret and
    unchanged since; else raise ``ValidationError`` saying what is wrong: a missing or
    malformed field, an unknown key, or a signature that does not match."""
    if not isinstance(receipt, Mapping):
        raise ValidationError(f"invalid receipt: a receipt is a JSON object, not {_kind(receipt)}")
    missing = [name for name in FIELDS if name not in receipt]
    if missing:
        raise ValidationError(f"invalid receipt: missing {_fields(missing)}")
    unknown = [str(name) for name in receipt if name not in FIELDS]
    if unknown:
        raise ValidationError(
            f"invalid receipt: unexpected {_fields(sorted(unknown))} (a version"
            f" {RECEIPT_VERSION} receipt has {', '.join(FIELDS)})"
        )
    _check_fields(receipt)
    keys = {key_id(key): key for key in _keys(secrets)}
    key = keys.get(receipt["keyId"])
    if key is None:
        raise ValidationError(
            f"invalid receipt: unknown key {receipt['keyId']!r}: it was not signed with this"
            " server's secret key, nor with the previous one it still accepts"
        )
    unsigned = {name: value for name, value in receipt.items() if name != "signature"}
    if not hmac.compare_digest(_sign(key, unsigned), receipt["signature"]):
        raise ValidationError(
            "invalid receipt: bad signature: the receipt was changed after it was signed"
        )


def _sign(key: bytes, unsigned: Mapping[str, Any]) -> str:
    return hmac.new(key, canonical_json(dict(unsigned)), hashlib.sha256).hexdigest()


def _keys(secrets: SigningSecrets) -> list[bytes]:
    found = [receipt_key(secrets.current)]
    if secrets.previous:
        found.append(receipt_key(secrets.previous))
    return found


def _check_fields(receipt: Mapping[Any, Any]) -> None:
    """Each field's type and form (values that cannot have been signed are named here, the
    rest is the signature's business)."""
    if receipt["type"] != RECEIPT_TYPE:
        raise ValidationError(
            f"invalid receipt: type is {_shown(receipt['type'])}, not {RECEIPT_TYPE!r}"
        )
    version = receipt["version"]
    if type(version) is not int or version != RECEIPT_VERSION:
        raise ValidationError(
            f"invalid receipt: version {_shown(version)} is not supported (this engine reads"
            f" version {RECEIPT_VERSION})"
        )
    _text(receipt, "tokenId", nullable=False)
    if not isinstance(receipt["status"], str) or receipt["status"] not in _CLOSED:
        raise ValidationError(
            f"invalid receipt: status is {_shown(receipt['status'])}, not one of"
            f" {', '.join(sorted(_CLOSED))}"
        )
    for name in ("completedAt", "issuedAt"):
        _moment(receipt, name, nullable=name == "completedAt")
    via = receipt["completedVia"]
    if via is not None and (not isinstance(via, str) or via not in _SOURCES):
        raise ValidationError(
            f"invalid receipt: completedVia is {_shown(via)}, not one of {', '.join(_SOURCES)}"
        )
    for name in ("answeredBy", "linkId", "title"):
        _text(receipt, name, nullable=True)
    _pattern(receipt, "dataSha256", _HEX64, "64 lowercase hex characters")
    _pattern(receipt, "keyId", _KEY_ID, "16 lowercase hex characters")
    _pattern(receipt, "signature", _HEX64, "64 lowercase hex characters")


def _text(receipt: Mapping[Any, Any], name: str, *, nullable: bool) -> None:
    value = receipt[name]
    if value is None and nullable:
        return
    if not isinstance(value, str) or not value or len(value) > _LONGEST_TEXT:
        wanted = "a string" + (" or null" if nullable else "")
        raise ValidationError(
            f"invalid receipt: {name} is {_shown(value)}, not {wanted} of 1 to"
            f" {_LONGEST_TEXT} characters"
        )


def _moment(receipt: Mapping[Any, Any], name: str, *, nullable: bool) -> None:
    value = receipt[name]
    if value is None and nullable:
        return
    if isinstance(value, str) and _INSTANT.match(value):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return
        except ValueError:
            pass
    raise ValidationError(
        f"invalid receipt: {name} is {_shown(value)}, not a UTC time such as"
        " 2026-03-29T01:00:00.000Z"
    )


def _pattern(receipt: Mapping[Any, Any], name: str, pattern: re.Pattern[str], form: str) -> None:
    value = receipt[name]
    if not isinstance(value, str) or not pattern.match(value):
        raise ValidationError(f"invalid receipt: {name} is {_shown(value)}, not {form}")


def _fields(names: list[str]) -> str:
    quoted = ", ".join(repr(_short(name)) for name in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"field{'s' if len(names) > 1 else ''} {quoted}{more}"


def _shown(value: Any) -> str:
    """A value in a message, cut short: a receipt may come from anyone."""
    return _short(json.dumps(value) if _is_json(value) else repr(value))


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


__all__ = [
    "FIELDS",
    "RECEIPT_LABEL",
    "RECEIPT_TYPE",
    "RECEIPT_VERSION",
    "canonical_json",
    "data_sha256",
    "instant",
    "key_id",
    "make_receipt",
    "receipt_key",
    "verify_receipt",
]


def approval_receipts(
    approval: Approval, secrets: SigningSecrets, now: datetime
) -> list[dict[str, Any]]:
    """The receipts of a closed approval: one for the decision (``dataSha256`` of how it
    closed: ``{"approved": ...}``), then one for each vote that counted, naming its approver
    (``answeredBy``) and the link it came through (``linkId``), its ``dataSha256`` over
    ``{"approve", "data", "reason"}``. ``RunStateError`` while it is open."""
    if approval.status is WaitpointStatus.WAITING:
        raise RunStateError(
            f"approval {approval.id} is still WAITING: it has no decision yet, so no receipt"
        )
    decided = Token(
        id=approval.id,
        status=approval.status,
        title=approval.title,
        created_at=approval.created_at,
        completed_at=approval.completed_at,
        completed_via=CompletionSource.TIMEOUT
        if approval.status is WaitpointStatus.TIMED_OUT
        else (approval.votes[-1].via if approval.votes else None),
        data={"approved": bool(approval.approved)},
    )
    receipts = [make_receipt(decided, secrets, now)]
    for vote in approval.votes:
        voted = decided.model_copy(
            update={
                "status": WaitpointStatus.COMPLETED,
                "completed_at": vote.at,
                "completed_via": vote.via,
                "data": vote_data(vote),
            }
        )
        receipts.append(
            make_receipt(voted, secrets, now, answered_by=vote.approver, link_id=vote.link_id)
        )
    return receipts


def vote_data(vote: ApprovalVote) -> dict[str, Any]:
    """What a vote's receipt hashes (``dataSha256``): its answer, data and reason."""
    return {"approve": vote.approve, "data": vote.data, "reason": vote.reason}
