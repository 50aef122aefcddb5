"""SQLite schema migrations, applied in order; ``PRAGMA user_version`` records how far we got.

Times are integer milliseconds since the epoch (UTC); JSON columns hold text.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the durable core
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        payload_schema TEXT,
        queue TEXT,
        concurrency_limit INTEGER,
        updated_at INTEGER NOT NULL
    );

    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        status TEXT NOT NULL,
        payload TEXT NOT NULL,
        output TEXT,
        error TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        idempotency_key TEXT,
        idempotency_key_expires_at INTEGER,
        attempt_count INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER,
        recovery_count INTEGER NOT NULL DEFAULT 0,
        executing_ms INTEGER NOT NULL DEFAULT 0,
        max_duration_ms INTEGER,
        delayed_until INTEGER,
        ttl TEXT,
        expires_at INTEGER,
        metadata TEXT,
        queue TEXT,
        concurrency_key TEXT,
        parent_run_id TEXT,
        parent_key TEXT,
        depth INTEGER NOT NULL DEFAULT 0,
        available_at INTEGER NOT NULL,
        lease_owner TEXT,
        lease_epoch INTEGER NOT NULL DEFAULT 0,
        lease_expires_at INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX runs_queue ON runs (available_at, id) WHERE status = 'QUEUED';
    CREATE INDEX runs_delayed ON runs (available_at) WHERE status = 'DELAYED';
    CREATE INDEX runs_expiry ON runs (expires_at)
        WHERE status IN ('QUEUED', 'DELAYED') AND expires_at IS NOT NULL;
    CREATE INDEX runs_leases ON runs (lease_expires_at) WHERE status = 'EXECUTING';
    CREATE INDEX runs_executing_queue ON runs (queue, concurrency_key) WHERE status = 'EXECUTING';
    CREATE INDEX runs_status ON runs (status, id);
    CREATE UNIQUE INDEX runs_child ON runs (parent_run_id, parent_key)
        WHERE parent_key IS NOT NULL;
    CREATE UNIQUE INDEX runs_idempotency ON runs (task_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;

    -- one mechanism blocks runs: MANUAL waitpoints are tokens, DATETIME ones are durable
    -- sleeps, RUN ones close when their child run finishes
    CREATE TABLE waitpoints (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL DEFAULT 'MANUAL',
        status TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        idempotency_key TEXT,
        idempotency_key_expires_at INTEGER,
        ttl TEXT,
        timeout_at INTEGER,
        completed_at INTEGER,
        completed_via TEXT,
        created_at INTEGER NOT NULL,
        data TEXT,
        data_schema TEXT,
        created_by_run TEXT,
        created_by_key TEXT,
        child_run_id TEXT
    );
    CREATE UNIQUE INDEX waitpoints_made_by ON waitpoints (created_by_run, created_by_key)
        WHERE created_by_key IS NOT NULL;
    CREATE INDEX waitpoints_child ON waitpoints (child_run_id) WHERE child_run_id IS NOT NULL;
    CREATE INDEX waitpoints_timers ON waitpoints (timeout_at)
        WHERE status = 'WAITING' AND timeout_at IS NOT NULL;
    CREATE INDEX waitpoints_status ON waitpoints (kind, status, id);
    CREATE UNIQUE INDEX waitpoints_idempotency ON waitpoints (idempotency_key)
        WHERE idempotency_key IS NOT NULL;

    -- a run blocked on a waitpoint: the edge goes when the run journals the wait's outcome
    CREATE TABLE run_waits (
        run_id TEXT NOT NULL,
        waitpoint_id TEXT NOT NULL,
        journal_key TEXT NOT NULL,
        mode TEXT NOT NULL DEFAULT 'all',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, waitpoint_id)
    );
    CREATE INDEX run_waits_waitpoint ON run_waits (waitpoint_id);

    -- one row per durable call, never updated. A failed step may be recorded once per attempt.
    CREATE TABLE journal (
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        position INTEGER NOT NULL,
        is_error INTEGER NOT NULL DEFAULT 0,
        value TEXT,
        duration_ms INTEGER,
        seq INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (run_id, key, attempt)
    );
    CREATE UNIQUE INDEX journal_once ON journal (run_id, key) WHERE is_error = 0;

    -- what happened to a run besides its durable calls: created, attempts, waits, its end
    CREATE TABLE run_events (
        run_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        detail TEXT
    );
    CREATE INDEX run_events_run ON run_events (run_id, at, seq);

    -- completions refused because the token had already timed out or been cancelled
    CREATE TABLE late_completions (
        token_id TEXT NOT NULL,
        via TEXT NOT NULL,
        attempted_at INTEGER NOT NULL
    );
    CREATE INDEX late_completions_token ON late_completions (token_id);

    -- replies to API requests carrying x-trigger-request-idempotency-key, for retried calls
    CREATE TABLE request_replies (
        key TEXT PRIMARY KEY,
        route TEXT NOT NULL,
        reply TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX request_replies_age ON request_replies (created_at);
    """,
    # 2: a step error that failed its attempt is run again by the next one; the others (the
    # errors the task caught) are replayed. Errors of earlier attempts were all run again.
    """
    ALTER TABLE journal ADD COLUMN rerun INTEGER NOT NULL DEFAULT 0;
    UPDATE journal SET rerun = 1 WHERE is_error = 1
        AND attempt < (SELECT attempt_count FROM runs WHERE runs.id = journal.run_id);
    """,
    # 3: a token keeps the last 10 completions refused after it closed, and a count of all of
    # them (every refused POST used to add a row). ``n`` numbers a token's attempts from 1, so
    # the kept rows are those with n > count - 10; older rows are dropped here.
    """
    ALTER TABLE waitpoints ADD COLUMN late_completion_count INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE late_completions_kept (
        token_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        via TEXT NOT NULL,
        attempted_at INTEGER NOT NULL,
        PRIMARY KEY (token_id, n)
    );
    INSERT INTO late_completions_kept (token_id, n, via, attempted_at)
        SELECT token_id, n, via, attempted_at FROM (
            SELECT token_id, via, attempted_at,
                row_number() OVER (PARTITION BY token_id ORDER BY attempted_at, rowid) AS n,
                count(*) OVER (PARTITION BY token_id) AS total
            FROM late_completions)
        WHERE n > total - 10;
    UPDATE waitpoints SET late_completion_count =
        (SELECT count(*) FROM late_completions WHERE token_id = waitpoints.id)
        WHERE id IN (SELECT token_id FROM late_completions);
    DROP TABLE late_completions;
    ALTER TABLE late_completions_kept RENAME TO late_completions;
    """,
    # 4: the callback signing secret is no longer kept in the database (it is derived from the
    # secret key, outside it). A token made before keeps the SHA-256 of the signature its URL
    # carries, so that URL still verifies; the migration fills it in and deletes the secret
    # (``_forget_signing_secret``, in Python: the hash needs the secret).
    """
    ALTER TABLE waitpoints ADD COLUMN legacy_signature_hash TEXT;
    """,
    # 5: dashboard credentials that ended before their time: one-click sign-in links already
    # used and sessions signed out. Rows go a day after the credential would have expired.
    """
    CREATE TABLE spent_credentials (
        key TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX spent_credentials_expiry ON spent_credentials (expires_at);
    """,
    # 6 (7 on PostgreSQL, whose 6 is its notifications): what a token asks of its reviewer (a
    # title, a plain-text description, a JSON object of context); and the workers serving this
    # database, each with a heartbeat written with its lease renewals (``tasks`` is a JSON list
    # of task ids). A worker that stops cleanly sets ``stopped_at``; rows go a week after
    # their last heartbeat.
    """
    ALTER TABLE waitpoints ADD COLUMN title TEXT;
    ALTER TABLE waitpoints ADD COLUMN description TEXT;
    ALTER TABLE waitpoints ADD COLUMN context TEXT;
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        tasks TEXT NOT NULL,
        concurrency INTEGER NOT NULL,
        lease_ms INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL,
        stopped_at INTEGER
    );
    CREATE INDEX workers_heartbeat ON workers (heartbeat_at);
    """,
    # 7 (9 on PostgreSQL): operating runs. ``version``: the version of the code a run started
    # on (recorded by its first claim, from the worker's ``@task(version=)`` or ``--version``);
    # a worker claims runs of its own version and runs that recorded none. ``paused_at``: a
    # paused run (or, on ``tasks``, every run of a paused task) is not claimed until resumed.
    # ``attempt_base``: the attempts a run had before it was retried by hand (its retry policy
    # counts from there). ``origin_run_id`` and ``origin``: the run a replay or fork was made
    # from, and which of the two it is. ``versions`` on ``workers``: a JSON object of task id
    # to the version the worker serves it at (NULL: none). Retention deletes finished runs and
    # closed waitpoints by age, hence the two indexes.
    """
    ALTER TABLE runs ADD COLUMN version TEXT;
    ALTER TABLE runs ADD COLUMN paused_at INTEGER;
    ALTER TABLE runs ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN origin_run_id TEXT;
    ALTER TABLE runs ADD COLUMN origin TEXT;
    ALTER TABLE tasks ADD COLUMN paused_at INTEGER;
    ALTER TABLE workers ADD COLUMN versions TEXT;
    CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
    CREATE INDEX waitpoints_closed ON waitpoints (completed_at) WHERE status <> 'WAITING';
    """,
    # 8 (10 on PostgreSQL): schedules, flow control and messages. ``schedules``: cron
    # schedules, declared (``@task(cron=)``, ``declared``) or made at run time; a tick becomes
    # a run whose idempotency key is the schedule id and the tick's time, so a tick makes one
    # run however many workers fire it. ``priority`` (seconds, Trigger.dev's meaning): a run
    # is claimed as if it had been queued that much earlier, hence the index on that rank.
    # ``rate_limit``/``rate_period_ms`` on ``tasks``: a queue's rate limit, registered like its
    # concurrency limit; ``rate_limit_key`` on a run gives each key its own bucket
    # (``rate_buckets``: tokens left and when they were last refilled). ``debounce_key`` and
    # ``debounce_until``: triggers of a task with the same key within the delay collapse into
    # one run. ``run_messages``: data sent to a run on a topic, numbered per run and topic,
    # each delivered once (``delivered_at``) to a ``receive`` (a MESSAGE waitpoint, whose
    # ``topic`` says what it waits for).
    """
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        cron TEXT NOT NULL,
        timezone TEXT NOT NULL DEFAULT 'UTC',
        payload TEXT,
        external_id TEXT,
        deduplication_key TEXT,
        declared INTEGER NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 1,
        catch_up TEXT NOT NULL DEFAULT 'last',
        next_tick_at INTEGER,
        last_tick_at INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX schedules_deduplication ON schedules (deduplication_key)
        WHERE deduplication_key IS NOT NULL;
    CREATE INDEX schedules_due ON schedules (next_tick_at) WHERE active = 1;
    ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX runs_queue_rank ON runs ((available_at - priority * 1000), id)
        WHERE status = 'QUEUED';
    ALTER TABLE tasks ADD COLUMN rate_limit INTEGER;
    ALTER TABLE tasks ADD COLUMN rate_period_ms INTEGER;
    ALTER TABLE runs ADD COLUMN rate_limit_key TEXT;
    CREATE TABLE rate_buckets (
        queue TEXT NOT NULL,
        key TEXT NOT NULL DEFAULT '',
        tokens REAL NOT NULL,
        refilled_at INTEGER NOT NULL,
        PRIMARY KEY (queue, key)
    );
    ALTER TABLE runs ADD COLUMN debounce_key TEXT;
    ALTER TABLE runs ADD COLUMN debounce_until INTEGER;
    CREATE INDEX runs_debounce ON runs (task_id, debounce_key) WHERE debounce_key IS NOT NULL;
    CREATE TABLE run_messages (
        run_id TEXT NOT NULL,
        topic TEXT NOT NULL,
        n INTEGER NOT NULL,
        data TEXT,
        sent_at INTEGER NOT NULL,
        delivered_at INTEGER,
        PRIMARY KEY (run_id, topic, n)
    );
    ALTER TABLE waitpoints ADD COLUMN topic TEXT;
    """,
    # 9: approvals (``request_approval``). An approval is an APPROVAL waitpoint (its
    # title, description, context and data schema on the waitpoint row; the run blocks on it
    # as on a token) plus its rules in ``approvals``: ``quorum`` approvals close it approved,
    # the ``reject_on`` rule closes it rejected. ``approval_approvers``: who is asked (the
    # request's, then each escalation's). ``approval_votes``: every vote in order (``n``), a
    # changed vote being a newer row; ``late`` marks one that came after the approval closed
    # (refused, kept). Reminders and escalations are due times on the approval
    # (``next_remind_at``, ``next_escalation_at``), fired by workers like timers; what they
    # make is an outbox of notices (``approval_notices``) that workers deliver and record.
    """
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        quorum INTEGER NOT NULL,
        reject_on TEXT NOT NULL DEFAULT 'any',
        allow_change INTEGER NOT NULL DEFAULT 0,
        show_votes INTEGER NOT NULL DEFAULT 1,
        remind_every_ms INTEGER,
        next_remind_at INTEGER,
        escalations TEXT NOT NULL DEFAULT '[]',
        escalated INTEGER NOT NULL DEFAULT 0,
        next_escalation_at INTEGER,
        approved INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX approvals_run ON approvals (run_id);
    CREATE INDEX approvals_remind ON approvals (next_remind_at)
        WHERE next_remind_at IS NOT NULL;
    CREATE INDEX approvals_escalate ON approvals (next_escalation_at)
        WHERE next_escalation_at IS NOT NULL;
    CREATE TABLE approval_approvers (
        approval_id TEXT NOT NULL,
        approver TEXT NOT NULL,
        escalation INTEGER NOT NULL DEFAULT 0,
        added_at INTEGER NOT NULL,
        PRIMARY KEY (approval_id, approver)
    );
    CREATE INDEX approval_approvers_person ON approval_approvers (approver);
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        approver TEXT NOT NULL,
        approve INTEGER NOT NULL,
        data TEXT,
        reason TEXT,
        at INTEGER NOT NULL,
        via TEXT NOT NULL,
        link_id TEXT,
        late INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (approval_id, n)
    );
    CREATE TABLE approval_notices (
        approval_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        approver TEXT NOT NULL,
        reason TEXT NOT NULL,
        due_at INTEGER NOT NULL,
        claimed_until INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        delivered_at INTEGER,
        ok INTEGER,
        channel TEXT,
        error TEXT,
        PRIMARY KEY (approval_id, n)
    );
    CREATE INDEX approval_notices_due ON approval_notices (due_at) WHERE delivered_at IS NULL;
    """,
    # 10: traces (OpenTelemetry, ``engine.tracing``). ``runs.trace_context``: the W3C
    # ``traceparent`` a run was triggered in, which every attempt continues, on any worker,
    # days later; ``runs.trace_attempts``: each attempt's own (a JSON list), which the run's
    # span links to; ``waitpoints.completed_trace``: the one a token was completed in, which
    # the resumed attempt links to.
    """
    ALTER TABLE runs ADD COLUMN trace_context TEXT;
    ALTER TABLE runs ADD COLUMN trace_attempts TEXT;
    ALTER TABLE waitpoints ADD COLUMN completed_trace TEXT;
    """,
]
