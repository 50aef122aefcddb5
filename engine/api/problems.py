"""Errors as the API answers them: ``{"error": "<message>"}`` with the right 4xx.

No client mistake gets a 5xx: the Trigger.dev SDK retries every 5xx for about nine seconds,
which turns a typo into a long hang. Engine errors map to statuses here, in one place.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    ApprovalClosedError,
    AuthError,
    ConfigurationError,
    EngineError,
    NotFoundError,
    RunNotFoundError,
    RunStateError,
    ScheduleNotFoundError,
    StorageError,
    TaskNotFoundError,
    TokenNotFoundError,
    TokenNotWaitingError,
    ValidationError,
    VoteRefusedError,
)


class Problem(Exception):
    """An error answer: status, message, and any extra fields for the JSON body."""

    def __init__(self, http_status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = http_status
        self.message = message
        self.extra = extra


def query_error(message: str) -> Problem:
    """Trigger.dev's shape for a bad filter or page parameter."""
    return Problem(400, "Query Error", details=[{"message": message}])


def _answer(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _engine_error(exc: EngineError) -> Problem:
    if isinstance(exc, TokenNotFoundError):
        return Problem(404, "Waitpoint not found")
    if isinstance(exc, RunNotFoundError):
        return Problem(404, "Run not found")
    if isinstance(exc, TaskNotFoundError):
        return Problem(404, "Task not found", detail=str(exc), knownTasks=exc.known)
    if isinstance(exc, ScheduleNotFoundError):
        return Problem(404, "Schedule not found", detail=str(exc))
    if isinstance(exc, NotFoundError):
        return Problem(404, str(exc))
    if isinstance(exc, TokenNotWaitingError):
        closed = exc.closed_at.isoformat().replace("+00:00", "Z") if exc.closed_at else None
        return Problem(410, str(exc), status=exc.status, closedAt=closed)
    if isinstance(exc, ApprovalClosedError):
        return Problem(410, str(exc), status=exc.status, approved=exc.approved)
    if isinstance(exc, ValidationError):
        return Problem(422, str(exc))
    if isinstance(exc, RunStateError | VoteRefusedError):
        return Problem(409, str(exc))
    if isinstance(exc, StorageError | ConfigurationError):
        return Problem(503, f"the service cannot do this now: {exc}")
    return Problem(400, str(exc))


def _validation_message(exc: RequestValidationError) -> Problem:
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        where = ".".join(location) or "body"
        if error.get("type") == "extra_forbidden":
            hint = " (put the completion payload in 'data')" if where != "data" else ""
            problems.append(f"unknown field '{where}'{hint}")
        else:
            problems.append(f"{where}: {error.get('msg')}")
    return Problem(422, "; ".join(problems), details=problems)


def install_problem_handlers(app: FastAPI) -> None:
    async def problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return _answer(exc.status, {"error": exc.message, **exc.extra})

    async def engine_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EngineError)
        return await problem(request, _engine_error(exc))

    async def auth_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthError)
        return _answer(exc.status, {"error": exc.message})

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if request.method == "GET":
            return await problem(request, query_error(str(_validation_message(exc))))
        return await problem(request, _validation_message(exc))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(Problem, problem)
    app.add_exception_handler(EngineError, engine_error)
    app.add_exception_handler(AuthError, auth_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
