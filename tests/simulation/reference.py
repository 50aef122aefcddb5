"""The reference: what every run of a scenario must return, from the contract alone.

It imports nothing from the engine. It is a discrete-event simulation of the durability
contract (the README's "Every way a run waits" and "The durability contract", plus the replay
rules of the issue) with no processes and no faults: each run executes once, at the instant it
is woken, in zero time. Each durable call is journaled by the reference's own keys, which is
all a retry needs (a retry replays every journaled call except the step error that escaped).

Instants are ``At(ms, exact)``: *exact* ones are set from outside (outside events, absolute
deadlines, root triggers); the others follow a run's execution and may, on the real engine,
come a little later (each fault delays a run by a few ms, always later, never earlier). Every
comparison whose answer such a delay could flip is recorded in ``fragile``; the generator
throws such scenarios away, so what the reference predicts cannot depend on the faults.

At one instant, in this order: outside events (in scenario order), then timers (token
timeouts, group deadlines, sleeps, retries), then the runs woken (in the order woken). The
executor reproduces that order by holding the workers while it applies outside events.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from . import grammar as g

Obs = list[Any]
Outcome = list[Any]  # ["ok", data] | ["timeout"] | ["cancelled"]


@dataclass(frozen=True)
class At:
    """An instant in ms after T0; not ``exact`` if a fault may make it come later."""

    ms: int
    exact: bool = False

    def plus(self, ms: int) -> At:
        return At(self.ms + ms, False)


@dataclass
class Token:
    n: int
    owner: tuple[str, str]
    key: str | None
    created: At
    expires: At | None
    status: str = "WAITING"
    data: Any = None
    closed: At | None = None
    waiters: set[str] = field(default_factory=set)

    def outcome(self) -> Outcome:
        if self.status == "COMPLETED":
            return ["ok", self.data]
        if self.status == "CANCELLED":
            return ["cancelled"]
        return ["timeout"]


@dataclass
class Entry:
    """A journaled call: a value, or a step's error (``escaped``: it failed its attempt)."""

    value: Any
    is_error: bool = False
    attempt: int = 1
    escaped: bool = False


@dataclass
class Run:
    ref: str
    program: dict[str, Any]
    parent: str | None
    created: At
    status: str = "QUEUED"  # QUEUED, RUNNING, WAITING, COMPLETED, FAILED, CANCELED
    attempt: int = 1
    journal: dict[str, Entry] = field(default_factory=dict)
    gen: Generator[Park, None, Obs] | None = None
    park: Park | None = None
    scheduled: bool = False
    output: Obs | None = None
    error: str | None = None
    error_message: str | None = None
    error_contains: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    finished: At | None = None
    activity: list[At] = field(default_factory=list)
    op_count: int = 0
    vars: dict[str, int] = field(default_factory=dict)
    woken_by: int | None = None
    """The outside event that woke the run for its next execution, if one did."""
    waiters: set[str] = field(default_factory=set)
    """Runs parked on this one as their child."""
    wait_started: dict[str, At] = field(default_factory=dict)
    """When each waiter began waiting on this run."""

    @property
    def attempts(self) -> int:
        return int(self.program["attempts"])

    @property
    def terminal(self) -> bool:
        return self.status in ("COMPLETED", "FAILED", "CANCELED")


@dataclass
class Park:
    """What a parked run waits for: ``token`` n, a ``group``, ``children`` refs, ``sleep``."""

    kind: str
    tokens: list[int] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    until: At | None = None


class Stuck(Exception):
    """The scenario is unusable: a run waits forever, or a timeout is in the past."""


class _Escape(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class _TaskFail(Exception):
    pass


class _Fatal(Exception):
    def __init__(self, error: str | None, contains: list[str]) -> None:
        super().__init__(error)
        self.error = error
        self.contains = contains


@dataclass
class RunPrediction:
    ref: str
    task: str
    parent: str | None
    status: str
    output: Obs | None
    error: str | None
    error_message: str | None
    error_contains: list[str]
    metadata: dict[str, Any]
    finished_ms: int | None
    op_count: int


@dataclass
class Prediction:
    runs: dict[str, RunPrediction]
    acks: dict[int, str]
    """Outside event index -> ``applied`` | ``not_applied`` | ``refused`` (token events), or
    ``canceled`` | ``finished`` (run cancellations: did it cancel, or was the run done)."""
    tokens: dict[tuple[str, str], str]
    """(creator ref, var) -> the token's final status."""
    activity: list[int]
    """Every instant (ms) at which some run executed, sorted."""
    fragile: list[str]
    end_ms: int


Hook = Callable[["Reference", str, Any], None]
LATE = 3
"""The phase of an outside event applied after the runs of its instant (generator what-if)."""


class Reference:
    """Simulates one scenario; ``hook(reference, what, obj)`` sees new tokens and runs (the
    generator uses it to schedule outside events for them as they appear)."""

    def __init__(
        self,
        scenario: g.Scenario,
        hook: Hook | None = None,
        outage: tuple[int, int] | None = None,
    ) -> None:
        self.scenario = scenario
        self.hook = hook
        self.outage = outage
        """For the generator only: no run executes from ``outage[0]`` until ``outage[1]``
        (they all resume then), to see whether a blackout that long changes any outcome."""
        self.now = At(0, True)
        self.queue: list[tuple[int, int, int, Callable[[], None]]] = []
        self.seq = 0
        self.runs: dict[str, Run] = {}
        self.tokens: list[Token] = []
        self.token_keys: dict[str, int] = {}
        self.owners: dict[tuple[str, str], int] = {}
        self.child_keys: dict[tuple[str, str], tuple[str, At | None]] = {}
        self.ready: list[str] = []
        self.acks: dict[int, str] = {}
        self.fragile: list[str] = []
        self.events: list[dict[str, Any]] = list(scenario.events)
        self.races: dict[tuple[str, str], list[dict[str, Any]]] = {}
        """Completions racing a token's deadline, until the token exists."""
        self.happenings: list[tuple[int, int | None]] = []
        """Instants (ms) at which something drifting happened (runs executing, timeouts), with
        the outside event that caused it, if one did."""
        self.cause: int | None = None
        """The outside event being applied now (the runs it wakes execute because of it)."""

    # --- the clock and the queue ---------------------------------------------------------

    def at(self, instant: At, phase: int, action: Callable[[], None]) -> None:
        """Do ``action`` at ``instant``: phase 0 outside events, 1 timers, then the runs woken,
        then ``LATE`` events (only in the generator's what-ifs)."""
        if instant.ms < self.now.ms:
            raise AssertionError(f"scheduled in the past: {instant} < {self.now}")
        self.seq += 1
        heapq.heappush(self.queue, (instant.ms, phase, self.seq, action))
        self._instants[(instant.ms, phase, self.seq)] = instant

    _instants: dict[tuple[int, int, int], At]

    def compare(self, a: At, b: At, what: str) -> int:
        """``a.ms - b.ms``, noting the comparison as fragile if a delay could flip its sign."""
        d = a.ms - b.ms
        w = g.WINDOW_MS
        if a.exact and b.exact:
            return d
        if a.exact:  # b may come later: a - b may fall by up to w
            risky = 0 <= d < w
        elif b.exact:  # a may come later: a - b may grow by up to w
            risky = -w < d <= 0
        else:
            risky = abs(d) < w
        if risky:
            self.fragile.append(f"{what}: {a} vs {b}")
        return d

    def add_event(self, event: dict[str, Any]) -> None:
        """An outside event drawn while the simulation runs (by the generator's hook)."""
        if event["at"] <= self.now.ms:
            raise AssertionError(f"event in the past: {event} at {self.now}")
        event["index"] = len(self.events)
        self.events.append(event)
        self._schedule_event(event)

    def run(self) -> Prediction:
        self._instants = {}
        for root in self.scenario.roots:
            self.at(At(root["at"], True), 0, self._trigger(root["program"]))
        for index, event in enumerate(self.events):
            event.setdefault("index", index)
            self._schedule_event(event)
        if self.outage is not None:
            self.at(At(self.outage[1], True), 1, lambda: None)  # the runs resume then
        while self.queue:
            ms, phase, seq, action = heapq.heappop(self.queue)
            self.now = self._instants.pop((ms, phase, seq))
            action()
            if self.outage is not None and self.outage[0] <= ms < self.outage[1]:
                continue  # no process alive: woken runs wait for the end of the outage
            if not self.queue or self.queue[0][0] > ms or self.queue[0][1] == LATE:
                self.now = At(ms)  # what runs do follows their execution: it may drift
                self._run_ready()
        for run in self.runs.values():
            if not run.terminal:
                raise Stuck(f"run {run.ref} never finishes ({run.status})")
        if self.races:
            raise Stuck(f"completions racing the deadlines of tokens never made: {self.races}")
        self._check_events_against_drift()
        return self._prediction()

    def _check_events_against_drift(self) -> None:
        """An outside event just after something that may come later than the reference says
        (a run executing, a token timing out) may in fact come before it: fragile.

        The reference only compares what has happened when it decides; this catches the
        decisions taken at a drifting instant a little before an outside event that would have
        changed them (a group's deadline at 9249, a completion at 9250).
        """
        happened = sorted(self.happenings, key=lambda h: h[0])
        times = [ms for ms, _ in happened]
        for event in self.events:
            at, index = event["at"], event["index"]
            if event.get("race") is None:  # exact: only what happened just before may cross
                low, high = at - g.WINDOW_MS, at
                near = happened[bisect.bisect_right(times, low) : bisect.bisect_left(times, high)]
            else:  # it drifts itself (with its token's deadline): both sides may cross
                low, high = at - g.WINDOW_MS, at + g.WINDOW_MS
                near = happened[bisect.bisect_right(times, low) : bisect.bisect_left(times, high)]
                near = [(ms, cause) for ms, cause in near if cause != index]
            if near:
                self.fragile.append(f"event {index} at {at} next to T0+{near[0][0]}")

    def _schedule_event(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if event.get("late"):  # the generator's what-if: after the runs of that instant
            self.at(At(event["at"], True), LATE, lambda: self._token_event(event))
            return
        if kind == "cancel_run":
            self.at(At(event["at"], True), 0, lambda: self._cancel_run_event(event))
            return
        if event.get("race") is not None:  # at the token's own deadline, once it has one
            owner = (event["token"][0], event["token"][1])
            self.races.setdefault(owner, []).append(event)
            if owner in self.owners:
                self._schedule_races(self.tokens[self.owners[owner]])
            return
        self.at(At(event["at"], True), 0, lambda: self._token_event(event))

    def _token_action(self, event: dict[str, Any]) -> Callable[[], None]:
        def action() -> None:
            self._token_event(event)

        return action

    def _schedule_races(self, token: Token) -> None:
        """Completions at the token's deadline (or 1 ms before): they drift with it."""
        for event in self.races.pop(token.owner, []):
            if token.expires is None or token.expires.exact:
                raise Stuck(f"a completion racing the deadline of {token.owner}, which has none")
            event["at"] = token.expires.ms + int(event["race"])
            self.at(token.expires.plus(int(event["race"])), 0, self._token_action(event))

    # --- runs ------------------------------------------------------------------------------

    def _trigger(self, program: dict[str, Any]) -> Callable[[], None]:
        def trigger() -> None:
            self._start(program, None)

        return trigger

    def _start(self, program: dict[str, Any], parent: str | None) -> Run:
        run = Run(program["ref"], program, parent, self.now)
        if run.ref in self.runs:
            raise AssertionError(f"two runs with ref {run.ref}")
        self.runs[run.ref] = run
        run.gen = _Attempt(self, run).body()
        self._wake(run)
        if self.hook is not None:
            self.hook(self, "run", run)
        return run

    def _wake(self, run: Run) -> None:
        if run.terminal or run.scheduled:
            return
        run.scheduled = True
        run.woken_by = self.cause
        self.ready.append(run.ref)

    def _run_ready(self) -> None:
        while self.ready:
            run = self.runs[self.ready.pop(0)]
            run.scheduled = False
            if run.terminal:
                continue
            self._execute(run)

    def _execute(self, run: Run) -> None:
        self._unpark(run)
        run.status = "RUNNING"
        run.activity.append(self.now)
        self.happenings.append((self.now.ms, run.woken_by))
        run.woken_by = None
        assert run.gen is not None
        try:
            park = next(run.gen)
        except StopIteration as done:
            self._finish(run, "COMPLETED", output=done.value)
            return
        except _Escape as escape:
            del run.journal[escape.key]  # the step that failed the attempt runs again
            self._attempt_failed(run, escape.message)
            return
        except _TaskFail:
            self._attempt_failed(run, g.FAIL_MESSAGE)
            return
        except _Fatal as fatal:
            self._finish(run, "FAILED", error=fatal.error, contains=fatal.contains)
            return
        self._park(run, park)

    def _attempt_failed(self, run: Run, message: str) -> None:
        if run.attempt < run.attempts:
            run.status = "QUEUED"
            retry_at = self.now.plus(1000)

            def retry() -> None:
                if run.status != "QUEUED":
                    return
                run.attempt += 1
                run.gen = _Attempt(self, run).body()
                self._wake(run)

            self.at(retry_at, 1, retry)
            return
        self._finish(run, "FAILED", error=g.SIM_ERROR, message=message)

    def _finish(
        self,
        run: Run,
        status: str,
        *,
        output: Obs | None = None,
        error: str | None = None,
        message: str | None = None,
        contains: list[str] | None = None,
    ) -> None:
        run.status = status
        run.output = output
        run.error = error
        run.error_message = message
        run.error_contains = contains or []
        run.finished = self.now if status == "CANCELED" else At(self.now.ms)
        run.gen = None
        for waiter in sorted(run.waiters):
            self._wake(self.runs[waiter])

    def _park(self, run: Run, park: Park) -> None:
        run.status = "WAITING"
        run.park = park
        for n in park.tokens:
            self.tokens[n].waiters.add(run.ref)
        for ref in park.children:
            child = self.runs[ref]
            child.waiters.add(run.ref)
            child.wait_started.setdefault(run.ref, self.now)
        if park.until is not None:
            self.at(park.until, 1, lambda: self._timer_wake(run, park))

    def _timer_wake(self, run: Run, park: Park) -> None:
        if run.park is park:
            self._wake(run)

    def _unpark(self, run: Run) -> None:
        park = run.park
        if park is None:
            return
        for n in park.tokens:
            self.tokens[n].waiters.discard(run.ref)
        for ref in park.children:
            self.runs[ref].waiters.discard(run.ref)
            self.runs[ref].wait_started.pop(run.ref, None)
        run.park = None

    def _cancel_run_event(self, event: dict[str, Any]) -> None:
        self.cause = event["index"]
        try:
            self._cancel_run_now(event)
        finally:
            self.cause = None

    def _cancel_run_now(self, event: dict[str, Any]) -> None:
        run = self.runs.get(event["run"])
        if run is None:
            raise AssertionError(f"cancel of run {event['run']} before it exists")
        if run.terminal:
            assert run.finished is not None
            self.compare(run.finished, self.now, f"run {run.ref} finishing vs its cancellation")
            self.acks[event["index"]] = "finished"
            return
        self.acks[event["index"]] = "canceled"
        self._cancel(run)

    def _cancel(self, run: Run) -> None:
        """Cancel ``run`` and, recursively, the children it waits on that no other live run
        waits on (the contract); its parents see it CANCELED."""
        for instant in run.activity:
            if instant.ms < self.now.ms:
                self.compare(instant, self.now, f"run {run.ref} executing vs its cancellation")
        park = run.park
        self._unpark(run)
        self._finish(run, "CANCELED")
        for ref in park.children if park else []:
            child = self.runs[ref]
            if child.terminal:
                continue
            for waiter, since in child.wait_started.items():
                self.compare(since, self.now, f"run {waiter} waiting on {ref} vs a cancellation")
            if any(not self.runs[w].terminal for w in child.waiters):
                continue
            self._cancel(child)

    # --- tokens ----------------------------------------------------------------------------

    def create_token(self, run: Run, op: dict[str, Any]) -> int:
        key = op.get("key")
        if key is not None and key in self.token_keys:
            found = self.tokens[self.token_keys[key]]
            self.compare(found.created, self.now, f"two runs creating token key {key}")
            return found.n
        timeout = op.get("timeout")
        expires: At | None = None
        if timeout is not None and "rel" in timeout:
            expires = self.now.plus(timeout["rel"] * 1000)
        elif timeout is not None:
            expires = At(timeout["abs"] * 1000, True)
            if expires.ms <= self.now.ms:  # the engine refuses it; not what we test here
                raise Stuck(f"token {op['var']} of {run.ref}: absolute timeout in the past")
            self.compare(expires, self.now, "an absolute token timeout vs its creation")
        token = Token(len(self.tokens), (run.ref, op["var"]), key, self.now, expires)
        self.tokens.append(token)
        self.owners[token.owner] = token.n
        if key is not None:
            self.token_keys[key] = token.n
        if expires is not None:
            self.at(expires, 1, lambda: self._expire(token))
        if self.hook is not None:
            self.hook(self, "token", token)
        self._schedule_races(token)
        return token.n

    def _expire(self, token: Token) -> None:
        if token.status == "WAITING":
            assert token.expires is not None
            if not token.expires.exact:
                self.happenings.append((token.expires.ms, None))
            self._close(token, "TIMED_OUT", None, token.expires)

    def _close(self, token: Token, status: str, data: Any, when: At) -> None:
        token.status, token.data, token.closed = status, data, when
        for ref in sorted(token.waiters):
            self._wake(self.runs[ref])

    def _token_event(self, event: dict[str, Any]) -> None:
        self.cause = event["index"]
        try:
            self._token_event_now(event)
        finally:
            self.cause = None

    def _token_event_now(self, event: dict[str, Any]) -> None:
        ref, var = event["token"]
        n = self.owners.get((ref, var))
        if n is None:
            raise AssertionError(f"event on token {var} of {ref} before it exists: {event}")
        token = self.tokens[n]
        self.compare(token.created, self.now, f"token {var} of {ref} created vs an event on it")
        racing = event.get("race") is not None
        if token.status == "WAITING" and token.expires is not None:
            if not racing:
                self.compare(self.now, token.expires, f"an event on {var} of {ref} vs its timeout")
            if self.now.ms >= token.expires.ms:  # timed out at its deadline, timer or not
                self._close(token, "TIMED_OUT", None, token.expires)
        index = event["index"]
        status = "COMPLETED" if event["kind"] == "complete" else "CANCELLED"
        if token.status == "WAITING":
            self._close(
                token, status, event.get("data") if status == "COMPLETED" else None, self.now
            )
            self.acks[index] = "applied"
        elif token.status == status:
            self.acks[index] = "not_applied"
        else:
            self.acks[index] = "refused"

    def group_outcome(self, ns: list[int], mode: str, deadline: At | None) -> list[Any] | None:
        """The group's result per the contract, or None if it is still open now.

        A token counts as answered if it closed before the deadline (a timed-out token closed
        at its expiresAt, whenever its timer fired; a token closed at the deadline's very
        millisecond is late, as a completion at a token's own deadline is refused); the
        snapshot is taken at the moment the group was satisfied (or at its deadline), so later
        closes are not in it.
        """
        tokens = [self.tokens[n] for n in ns]
        closes: list[At | None] = [t.closed if t.status != "WAITING" else None for t in tokens]
        in_time: list[bool] = []
        for token, closed in zip(tokens, closes, strict=True):
            if closed is None:
                in_time.append(False)
            elif deadline is None:
                in_time.append(True)
            else:
                d = self.compare(closed, deadline, f"token {token.owner} closing vs group deadline")
                in_time.append(d < 0)  # at the deadline's millisecond is late (README)
        satisfied: At | None = None
        if mode == "all" and all(in_time):
            satisfied = max((c for c in closes if c is not None), key=lambda c: c.ms)
        elif mode == "any" and any(in_time):
            satisfied = min(
                (c for c, ok in zip(closes, in_time, strict=True) if ok and c is not None),
                key=lambda c: c.ms,
            )
        if satisfied is None and (deadline is None or self.now.ms < deadline.ms):
            return None
        timed_out = satisfied is None
        snapshot = deadline if satisfied is None else satisfied
        assert snapshot is not None
        results: list[Outcome | None] = []
        answered: list[tuple[int, int]] = []
        timely = [c for c, ok in zip(closes, in_time, strict=True) if ok and c is not None]
        for i, a in enumerate(timely):  # which closed first (and, for "any", which are in)
            for b in timely[i + 1 :]:
                self.compare(a, b, "two tokens of a group closing")
        for index, (token, closed, ok) in enumerate(zip(tokens, closes, in_time, strict=True)):
            if ok and closed is not None and closed.ms <= snapshot.ms:
                results.append(token.outcome())
                answered.append((closed.ms, index))
            else:
                results.append(None)
        first = min(answered)[1] if answered else None
        if mode == "all":
            ok_all = not timed_out and all(r is not None and r[0] == "ok" for r in results)
        else:
            chosen = results[first] if first is not None else None
            ok_all = chosen is not None and chosen[0] == "ok"
        return ["group", ok_all, timed_out, results, first]

    # --- children --------------------------------------------------------------------------

    def child_for(self, parent: Run, op: dict[str, Any], program: dict[str, Any]) -> Run:
        """The child an op makes, or the run its idempotency key finds (while the key lives)."""
        key = op.get("key")
        task = g.task_id(program["attempts"])
        if key is not None and (task, key) in self.child_keys:
            ref, expires = self.child_keys[(task, key)]
            self.compare(self.runs[ref].created, self.now, f"two runs triggering child key {key}")
            alive = expires is None or self.compare(self.now, expires, f"child key {key} ttl") < 0
            if alive:
                return self.runs[ref]
        child = self._start(program, parent.ref)
        if key is not None:
            ttl = op.get("ttl")
            self.child_keys[(task, key)] = (
                child.ref,
                None if ttl is None else self.now.plus(ttl * 1000),
            )
        return child

    # --- the result --------------------------------------------------------------------------

    def _prediction(self) -> Prediction:
        runs = {
            ref: RunPrediction(
                ref=ref,
                task=g.task_id(run.attempts),
                parent=run.parent,
                status=run.status,
                output=run.output,
                error=run.error,
                error_message=run.error_message,
                error_contains=run.error_contains,
                metadata=dict(run.metadata),
                finished_ms=run.finished.ms if run.finished else None,
                op_count=run.op_count,
            )
            for ref, run in self.runs.items()
        }
        activity = sorted({a.ms for run in self.runs.values() for a in run.activity})
        return Prediction(
            runs=runs,
            acks=dict(self.acks),
            tokens={t.owner: t.status for t in self.tokens},
            activity=activity,
            fragile=list(self.fragile),
            end_ms=self.now.ms,
        )


def child_outcome(child: Run) -> list[Any]:
    if child.status == "COMPLETED":
        return [child.status, child.output]
    return [child.status, child.error]


class _Attempt:
    """One attempt of a run: walks its program against the run's journal."""

    def __init__(self, world: Reference, run: Run) -> None:
        self.world = world
        self.run = run
        self.occurrences: Counter[str] = Counter()
        self.obs: Obs = []

    def key(self, base: str) -> tuple[str, int]:
        n = self.occurrences[base]
        self.occurrences[base] += 1
        return f"{base}#{n}", n

    def body(self) -> Generator[Park, None, Obs]:
        yield from self.ops(self.run.program["ops"])
        return self.obs

    def ops(self, ops: list[dict[str, Any]]) -> Generator[Park, None, None]:
        for op in ops:
            yield from self.op(op)

    def op(self, op: dict[str, Any]) -> Generator[Park, None, None]:
        kind = op["op"]
        run = self.run
        if kind == "step":
            self.step_op(op)
        elif kind == "loop":
            for _ in range(op["n"]):
                yield from self.ops(op["body"])
        elif kind == "token":
            key, _ = self.key("token")
            entry = run.journal.get(key)
            if entry is None:
                run.op_count += 1
                entry = run.journal[key] = Entry(self.world.create_token(run, op))
            run.vars[op["var"]] = entry.value
        elif kind == "wait":
            outcome = yield from self.wait(op["var"])
            self.obs.append(["wait", op["var"], *outcome])
        elif kind == "group":
            self.obs.append((yield from self.group(op)))
        elif kind == "sleep":
            yield from self.sleep(op)
        elif kind == "trigger":
            key, _ = self.key("trigger")
            if key not in run.journal:
                run.op_count += 1
                child = self.world.child_for(run, op, op["child"])
                run.journal[key] = Entry(child.ref)
        elif kind == "call":
            [result] = yield from self.children(op, [op["child"]])
            self.obs.append(["child", *result])
        elif kind == "batch":
            results = yield from self.children(op, op["children"])
            self.obs.append(["batch", results])
        elif kind == "meta":
            run.op_count += 1
            run.metadata.update(op["set"])
        elif kind == "fail":
            if run.attempt <= op["k"]:
                raise _TaskFail()
        elif kind == "swallow":
            yield from self.op(op["inner"])  # what the task did with the suspension is moot
        elif kind == "concurrent":
            raise _Fatal("ConcurrentWaitError", [])
        elif kind == "nested":
            raise _Fatal(None, [op["name"], op["inner"]])
        elif kind == "race":
            slow = self.step(op["slow"], "ok", 0)
            fast = self.step(op["fast"], "ok", 0)
            self.obs.append(["race", op["fast"], fast[2].value])
            del slow
            self.step_op({"op": "step", "name": f"after-{op['fast']}", "mode": "ok"})
        else:
            raise AssertionError(f"unknown op {op}")

    def step(self, name: str, mode: str, k: int) -> tuple[str, int, Entry]:
        key, occurrence = self.key(f"step:{name}")
        run = self.run
        entry = run.journal.get(key)
        if entry is None:
            run.op_count += 1
            if mode in ("caught", "uncaught") and run.attempt <= k:
                message, code = g.step_error(name, occurrence)
                entry = Entry([message, code], True, run.attempt, escaped=mode == "uncaught")
            else:
                entry = Entry(g.step_value(run.program["salt"], name, occurrence))
            run.journal[key] = entry
        return key, occurrence, entry

    def step_op(self, op: dict[str, Any]) -> None:
        mode = op["mode"]
        key, occurrence, entry = self.step(op["name"], mode, op.get("k", 0))
        label = g.step_key(op["name"], occurrence)
        if not entry.is_error:
            self.obs.append(["step", label, entry.value])
            return
        message, code = entry.value
        if mode == "uncaught":
            raise _Escape(key, message)
        self.obs.append(["caught", label, g.SIM_ERROR, [message], code, g.ERROR_ATTRS])
        self.step_op({"op": "step", "name": op["fallback"], "mode": "ok"})

    def wait(self, var: str) -> Generator[Park, None, Outcome]:
        key, _ = self.key(f"wait:{var}")
        run = self.run
        entry = run.journal.get(key)
        if entry is not None:
            return list(entry.value)
        run.op_count += 1
        n = run.vars[var]
        token = self.world.tokens[n]
        while token.status == "WAITING":
            yield Park("token", tokens=[n])
        outcome = token.outcome()
        run.journal[key] = Entry(outcome)
        return outcome

    def group(self, op: dict[str, Any]) -> Generator[Park, None, list[Any]]:
        key, _ = self.key("group")
        run = self.run
        entry = run.journal.get(key)
        if entry is not None:
            return list(entry.value)
        run.op_count += 1
        world = self.world
        timeout = op["timeout"]
        deadline: At | None = None
        if timeout is not None and "rel" in timeout:
            deadline = world.now.plus(timeout["rel"] * 1000)
        elif timeout is not None:
            deadline = At(timeout["abs"] * 1000, True)
            if deadline.ms <= world.now.ms:
                world.fragile.append(f"group of {run.ref}: absolute deadline in the past")
            world.compare(deadline, world.now, "an absolute group deadline vs its first call")
        ns = [run.vars[v] for v in op["vars"]]
        while True:
            result = world.group_outcome(ns, op["mode"], deadline)
            if result is not None:
                break
            yield Park("group", tokens=ns, until=deadline)
        run.journal[key] = Entry(result)
        return result

    def sleep(self, op: dict[str, Any]) -> Generator[Park, None, None]:
        form = op["form"]
        key, _ = self.key("sleep")
        run = self.run
        if key in run.journal or form in ("zero_str", "zero_td"):
            return
        run.op_count += 1
        world = self.world
        if form == "str":
            until = world.now.plus(op["s"] * 1000)
        elif form == "sub_ms":
            until = world.now.plus(1)  # rounded up to a whole millisecond
        else:
            until = At(op["abs"] * 1000, True)
        while world.now.ms < until.ms:
            yield Park("sleep", until=until)
        run.journal[key] = Entry(None)

    def children(
        self, op: dict[str, Any], programs: list[dict[str, Any]]
    ) -> Generator[Park, None, list[list[Any]]]:
        key, _ = self.key("batch" if op["op"] == "batch" else "call")
        run = self.run
        entry = run.journal.get(key)
        if entry is not None:
            return list(entry.value)
        run.op_count += 1
        world = self.world
        kids = [world.child_for(run, op, program) for program in programs]
        while not all(k.terminal for k in kids):
            yield Park("children", children=[k.ref for k in kids if not k.terminal])
        results = [child_outcome(k) for k in kids]
        run.journal[key] = Entry(results)
        return results


def predict(scenario: g.Scenario) -> Prediction:
    return Reference(scenario).run()
