"""Completing a token on a storage, with a typed token's data checked against its schema.

One owner for the local completion path: ``engine.tokens.complete`` on a database and
``complete_token`` inside a run both come here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import tracing
from .errors import StorageError
from .logs import get_logger
from .models import CompletionResult, CompletionSource
from .signing import CallbackSigner
from .storage import DataToCheck, Storage
from .validation import validate_against_schema

log = get_logger("engine.completion")


async def complete(
    storage: Storage,
    signer: CallbackSigner,
    token_id: str,
    data: Any,
    source: CompletionSource,
) -> CompletionResult:
    """Complete a WAITING token; ``applied`` says whether this call was the one that won.

    A typed token's data is checked outside the storage's transaction (``DataToCheck``: a
    schema check can take long), then completed with the schema it was checked against. The
    token comes back presented by ``signer`` (storage makes no callback URL).
    """
    trace = tracing.traceparent()
    result = await storage.complete_token(token_id, data, source, trace=trace)
    if isinstance(result, DataToCheck):
        what = f"completion data for {token_id}"
        data = await validate_against_schema(result.json_schema, data, what)
        result = await storage.complete_token(
            token_id, data, source, checked=result.schema, trace=trace
        )
        if isinstance(result, DataToCheck):  # pragma: no cover - a schema never changes
            raise StorageError(f"the data schema of {token_id} changed while checked")
    log.info("token.completed", token_id=token_id, applied=result.applied, via=source.value)
    return replace(result, token=signer.present(result.token))
