"""PostgreSQL schema migrations, applied in order; ``migrations`` records how far we got.

The tables mirror the SQLite schema column for column (``records.py`` reads rows of both):
times are integer milliseconds since the epoch (UTC), JSON values are text, except ``tags``,
which is ``jsonb`` so that a tag filter can use ``?|``. Ids sort bytewise (``COLLATE "C"``),
so pages in id order are pages in creation order whatever the database's locale.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the durable core
    """
    CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);

    -- orders journal entries and events of one millisecond (the timeline merges the two)
    CREATE SEQUENCE timeline_seq;

    CREATE TABLE tasks (
        id text COLLATE "C" PRIMARY KEY,
        payload_schema text,
        queue text,
        concurrency_limit integer,
        updated_at bigint NOT NULL
    );

    CREATE TABLE runs (
        id text COLLATE "C" PRIMARY KEY,
        task_id text NOT NULL,
        status text NOT NULL,
        payload text NOT NULL,
        output text,
        error text,
        tags jsonb NOT NULL DEFAULT '[]',
        idempotency_key text,
        idempotency_key_expires_at bigint,
        attempt_count integer NOT NULL DEFAULT 0,
        max_attempts integer,
        recovery_count integer NOT NULL DEFAULT 0,
        executing_ms bigint NOT NULL DEFAULT 0,
        max_duration_ms bigint,
        delayed_until bigint,
        ttl text,
        expires_at bigint,
        metadata text,
        queue text,
        concurrency_key text,
        parent_run_id text COLLATE "C",
        parent_key text,
        depth integer NOT NULL DEFAULT 0,
        available_at bigint NOT NULL,
        lease_owner text,
        lease_epoch integer NOT NULL DEFAULT 0,
        lease_expires_at bigint,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        started_at bigint,
        finished_at bigint
    );
    CREATE INDEX runs_queue ON runs (available_at, id) WHERE status = 'QUEUED';
    CREATE INDEX runs_delayed ON runs (available_at) WHERE status = 'DELAYED';
    CREATE INDEX runs_expiry ON runs (expires_at)
        WHERE status IN ('QUEUED', 'DELAYED') AND expires_at IS NOT NULL;
    CREATE INDEX runs_leases ON runs (lease_expires_at) WHERE status = 'EXECUTING';
    CREATE INDEX runs_executing_queue ON runs (queue, concurrency_key) WHERE status = 'EXECUTING';
    CREATE INDEX runs_status ON runs (status, id);
    CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
    CREATE UNIQUE INDEX runs_child ON runs (parent_run_id, parent_key)
        WHERE parent_key IS NOT NULL;
    CREATE UNIQUE INDEX runs_idempotency ON runs (task_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;

    CREATE TABLE waitpoints (
        id text COLLATE "C" PRIMARY KEY,
        kind text NOT NULL DEFAULT 'MANUAL',
        status text NOT NULL,
        tags jsonb NOT NULL DEFAULT '[]',
        idempotency_key text,
        idempotency_key_expires_at bigint,
        ttl text,
        timeout_at bigint,
        completed_at bigint,
        completed_via text,
        created_at bigint NOT NULL,
        data text,
        data_schema text,
        created_by_run text COLLATE "C",
        created_by_key text,
        child_run_id text COLLATE "C"
    );
    CREATE UNIQUE INDEX waitpoints_made_by ON waitpoints (created_by_run, created_by_key)
        WHERE created_by_key IS NOT NULL;
    CREATE INDEX waitpoints_child ON waitpoints (child_run_id) WHERE child_run_id IS NOT NULL;
    CREATE INDEX waitpoints_timers ON waitpoints (timeout_at)
        WHERE status = 'WAITING' AND timeout_at IS NOT NULL;
    CREATE INDEX waitpoints_status ON waitpoints (kind, status, id);
    CREATE UNIQUE INDEX waitpoints_idempotency ON waitpoints (idempotency_key)
        WHERE idempotency_key IS NOT NULL;

    CREATE TABLE run_waits (
        run_id text COLLATE "C" NOT NULL,
        waitpoint_id text COLLATE "C" NOT NULL,
        journal_key text NOT NULL,
        mode text NOT NULL DEFAULT 'all',
        created_at bigint NOT NULL,
        PRIMARY KEY (run_id, waitpoint_id)
    );
    CREATE INDEX run_waits_waitpoint ON run_waits (waitpoint_id);

    CREATE TABLE journal (
        run_id text COLLATE "C" NOT NULL,
        key text NOT NULL,
        attempt integer NOT NULL,
        position integer NOT NULL,
        is_error boolean NOT NULL DEFAULT false,
        value text,
        duration_ms bigint,
        seq bigint NOT NULL DEFAULT nextval('timeline_seq'),
        created_at bigint NOT NULL,
        PRIMARY KEY (run_id, key, attempt)
    );
    CREATE UNIQUE INDEX journal_once ON journal (run_id, key) WHERE NOT is_error;

    CREATE TABLE run_events (
        run_id text COLLATE "C" NOT NULL,
        at bigint NOT NULL,
        seq bigint NOT NULL DEFAULT nextval('timeline_seq'),
        kind text NOT NULL,
        attempt integer NOT NULL,
        detail text
    );
    CREATE INDEX run_events_run ON run_events (run_id, at, seq);

    CREATE TABLE late_completions (
        token_id text COLLATE "C" NOT NULL,
        via text NOT NULL,
        attempted_at bigint NOT NULL
    );
    CREATE INDEX late_completions_token ON late_completions (token_id);

    CREATE TABLE request_replies (
        key text PRIMARY KEY,
        route text NOT NULL,
        reply text NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE INDEX request_replies_age ON request_replies (created_at);
    """,
    # 2: a step error that failed its attempt is run again by the next one; the others (the
    # errors the task caught) are replayed. Errors of earlier attempts were all run again.
    """
    ALTER TABLE journal ADD COLUMN rerun boolean NOT NULL DEFAULT false;
    UPDATE journal SET rerun = true FROM runs
        WHERE runs.id = journal.run_id AND journal.is_error
        AND journal.attempt < runs.attempt_count;
    """,
    # 3: a token keeps the last 10 completions refused after it closed, and a count of all of
    # them (every refused POST used to add a row). ``n`` numbers a token's attempts from 1, so
    # the kept rows are those with n > count - 10; older rows are dropped here.
    """
    ALTER TABLE waitpoints ADD COLUMN late_completion_count integer NOT NULL DEFAULT 0;
    CREATE TABLE late_completions_kept (
        token_id text COLLATE "C" NOT NULL,
        n integer NOT NULL,
        via text NOT NULL,
        attempted_at bigint NOT NULL,
        PRIMARY KEY (token_id, n)
    );
    INSERT INTO late_completions_kept (token_id, n, via, attempted_at)
        SELECT token_id, n, via, attempted_at FROM (
            SELECT token_id, via, attempted_at,
                row_number() OVER (PARTITION BY token_id ORDER BY attempted_at) AS n,
                count(*) OVER (PARTITION BY token_id) AS total
            FROM late_completions) AS numbered
        WHERE n > total - 10;
    UPDATE waitpoints SET late_completion_count = counted.total
        FROM (SELECT token_id, count(*) AS total FROM late_completions GROUP BY token_id)
            AS counted
        WHERE waitpoints.id = counted.token_id;
    DROP TABLE late_completions;
    ALTER TABLE late_completions_kept RENAME TO late_completions;
    """,
    # 4: the callback signing secret is no longer kept in the database (it is derived from the
    # secret key, outside it). A token made before keeps the SHA-256 of the signature its URL
    # carries, so that URL still verifies; the migration fills it in and deletes the secret
    # (``_forget_signing_secret``, in Python: the hash needs the secret).
    """
    ALTER TABLE waitpoints ADD COLUMN legacy_signature_hash text;
    """,
    # 5: dashboard credentials that ended before their time: one-click sign-in links already
    # used and sessions signed out. Rows go a day after the credential would have expired.
    """
    CREATE TABLE spent_credentials (
        key text COLLATE "C" PRIMARY KEY,
        expires_at bigint NOT NULL
    );
    CREATE INDEX spent_credentials_expiry ON spent_credentials (expires_at);
    """,
    # 6: notifications that say what changed, sent by the rows that change (so that no
    # operation spends a round trip on a NOTIFY, and every change is told, whoever made it).
    # Payloads: 'q:<task>' a run of the task became QUEUED (work may be claimable);
    # 't:<ms>' a deadline was set (a token's timeout, a delayed run's start, a time to live);
    # 'r:<run>' another change of the run's status (not a claim); 'w' a waitpoint closed; 'tasks'
    # the registry changed. PostgreSQL sends a payload once per transaction however many
    # rows repeat it. The channel is the schema's: one database may hold several engines.
    """
    CREATE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        channel text := 'waitpoint_' || TG_TABLE_SCHEMA;
    BEGIN
        IF TG_TABLE_NAME = 'runs' THEN
            IF NEW.status = 'QUEUED' THEN
                PERFORM pg_notify(channel, 'q:' || NEW.task_id);
            ELSIF NEW.status = 'DELAYED' THEN
                PERFORM pg_notify(channel, 't:' || NEW.available_at);
            ELSIF NEW.status <> 'EXECUTING' THEN
                PERFORM pg_notify(channel, 'r:' || NEW.id);
            END IF;
            IF NEW.expires_at IS NOT NULL AND NEW.status IN ('QUEUED', 'DELAYED') THEN
                PERFORM pg_notify(channel, 't:' || NEW.expires_at);
            END IF;
        ELSIF TG_TABLE_NAME = 'waitpoints' THEN
            IF NEW.status = 'WAITING' THEN
                IF NEW.timeout_at IS NOT NULL THEN
                    PERFORM pg_notify(channel, 't:' || NEW.timeout_at);
                END IF;
            ELSE
                PERFORM pg_notify(channel, 'w');
            END IF;
        ELSE
            PERFORM pg_notify(channel, 'tasks');
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER runs_inserted AFTER INSERT ON runs
        FOR EACH ROW EXECUTE FUNCTION notify_change();
    CREATE TRIGGER runs_changed AFTER UPDATE OF status ON runs
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION notify_change();
    CREATE TRIGGER waitpoints_inserted AFTER INSERT ON waitpoints
        FOR EACH ROW EXECUTE FUNCTION notify_change();
    CREATE TRIGGER waitpoints_changed AFTER UPDATE OF status ON waitpoints
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
        EXECUTE FUNCTION notify_change();
    CREATE TRIGGER tasks_changed AFTER INSERT OR UPDATE ON tasks
        FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
    """,
    # 7 (6 on SQLite): what a token asks of its reviewer (a title, a plain-text description,
    # a JSON object of context); and the workers serving this database, each with a heartbeat
    # written with its lease renewals (``tasks`` is a JSON list of task ids). A worker that
    # stops cleanly sets ``stopped_at``; rows go a week after their last heartbeat. No trigger
    # notifies of workers: a heartbeat is nobody's work.
    """
    ALTER TABLE waitpoints ADD COLUMN title text;
    ALTER TABLE waitpoints ADD COLUMN description text;
    ALTER TABLE waitpoints ADD COLUMN context text;
    CREATE TABLE workers (
        id text COLLATE "C" PRIMARY KEY,
        tasks text NOT NULL,
        concurrency integer NOT NULL,
        lease_ms bigint NOT NULL,
        started_at bigint NOT NULL,
        heartbeat_at bigint NOT NULL,
        stopped_at bigint
    );
    CREATE INDEX workers_heartbeat ON workers (heartbeat_at);
    """,
    # 8: a queued run's notification is numbered by a hash of the run's id ('q<n>:<task>',
    # one per run, no longer one per transaction and task), so that of the workers serving
    # the task, the one whose turn that number is claims it, instead of all of them at once
    # with all but one finding nothing (``Worker._takes``). Whose turn it is depends on who
    # serves the task: a worker that starts or stops says so ('workers'; a heartbeat does
    # not, it changes no one's turn).
    """
    CREATE OR REPLACE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        channel text := 'waitpoint_' || TG_TABLE_SCHEMA;
    BEGIN
        IF TG_TABLE_NAME = 'runs' THEN
            IF NEW.status = 'QUEUED' THEN
                PERFORM pg_notify(
                    channel, 'q' || (hashtext(NEW.id) & 2147483647) || ':' || NEW.task_id
                );
            ELSIF NEW.status = 'DELAYED' THEN
                PERFORM pg_notify(channel, 't:' || NEW.available_at);
            ELSIF NEW.status <> 'EXECUTING' THEN
                PERFORM pg_notify(channel, 'r:' || NEW.id);
            END IF;
            IF NEW.expires_at IS NOT NULL AND NEW.status IN ('QUEUED', 'DELAYED') THEN
                PERFORM pg_notify(channel, 't:' || NEW.expires_at);
            END IF;
        ELSIF TG_TABLE_NAME = 'waitpoints' THEN
            IF NEW.status = 'WAITING' THEN
                IF NEW.timeout_at IS NOT NULL THEN
                    PERFORM pg_notify(channel, 't:' || NEW.timeout_at);
                END IF;
            ELSE
                PERFORM pg_notify(channel, 'w');
            END IF;
        ELSIF TG_TABLE_NAME = 'workers' THEN
            PERFORM pg_notify(channel, 'workers');
        ELSE
            PERFORM pg_notify(channel, 'tasks');
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER workers_changed AFTER INSERT OR UPDATE OF stopped_at ON workers
        FOR EACH STATEMENT EXECUTE FUNCTION notify_change();
    """,
    # 9 (7 on SQLite): operating runs: a run's version, pauses of runs and tasks, the
    # attempts before a retry by hand, the run a replay or fork came from, the versions a
    # worker serves, and the indexes retention deletes by (see the SQLite migration). Pausing
    # and resuming change no status, so no trigger fires: ``resume`` notifies itself.
    """
    ALTER TABLE runs ADD COLUMN version text;
    ALTER TABLE runs ADD COLUMN paused_at bigint;
    ALTER TABLE runs ADD COLUMN attempt_base integer NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN origin_run_id text COLLATE "C";
    ALTER TABLE runs ADD COLUMN origin text;
    ALTER TABLE tasks ADD COLUMN paused_at bigint;
    ALTER TABLE workers ADD COLUMN versions text;
    CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX waitpoints_closed ON waitpoints (completed_at) WHERE status <> 'WAITING';
    """,
    # 10 (8 on SQLite): schedules, priority, rate limits, debounce and messages (see the
    # SQLite migration). A new rate bucket or message wakes no one by itself: the runs it
    # concerns are queued or re-queued by the statements that use them.
    """
    CREATE TABLE schedules (
        id text COLLATE "C" PRIMARY KEY,
        task_id text NOT NULL,
        cron text NOT NULL,
        timezone text NOT NULL DEFAULT 'UTC',
        payload text,
        external_id text,
        deduplication_key text,
        declared boolean NOT NULL DEFAULT false,
        active boolean NOT NULL DEFAULT true,
        catch_up text NOT NULL DEFAULT 'last',
        next_tick_at bigint,
        last_tick_at bigint,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    );
    CREATE UNIQUE INDEX schedules_deduplication ON schedules (deduplication_key)
        WHERE deduplication_key IS NOT NULL;
    CREATE INDEX schedules_due ON schedules (next_tick_at) WHERE active;
    ALTER TABLE runs ADD COLUMN priority integer NOT NULL DEFAULT 0;
    CREATE INDEX runs_queue_rank ON runs ((available_at - priority * 1000), id)
        WHERE status = 'QUEUED';
    ALTER TABLE tasks ADD COLUMN rate_limit integer;
    ALTER TABLE tasks ADD COLUMN rate_period_ms bigint;
    ALTER TABLE runs ADD COLUMN rate_limit_key text;
    CREATE TABLE rate_buckets (
        queue text NOT NULL,
        key text NOT NULL DEFAULT '',
        tokens double precision NOT NULL,
        refilled_at bigint NOT NULL,
        PRIMARY KEY (queue, key)
    );
    ALTER TABLE runs ADD COLUMN debounce_key text;
    ALTER TABLE runs ADD COLUMN debounce_until bigint;
    CREATE INDEX runs_debounce ON runs (task_id, debounce_key) WHERE debounce_key IS NOT NULL;
    CREATE TABLE run_messages (
        run_id text COLLATE "C" NOT NULL,
        topic text NOT NULL,
        n integer NOT NULL,
        data text,
        sent_at bigint NOT NULL,
        delivered_at bigint,
        PRIMARY KEY (run_id, topic, n)
    );
    ALTER TABLE waitpoints ADD COLUMN topic text;
    """,
    # 11 (9 on SQLite): approvals (``request_approval``). An approval is an APPROVAL waitpoint (its
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
        id text COLLATE "C" PRIMARY KEY,
        run_id text COLLATE "C" NOT NULL,
        quorum integer NOT NULL,
        reject_on text NOT NULL DEFAULT 'any',
        allow_change boolean NOT NULL DEFAULT false,
        show_votes boolean NOT NULL DEFAULT true,
        remind_every_ms bigint,
        next_remind_at bigint,
        escalations text NOT NULL DEFAULT '[]',
        escalated integer NOT NULL DEFAULT 0,
        next_escalation_at bigint,
        approved boolean,
        created_at bigint NOT NULL
    );
    CREATE INDEX approvals_run ON approvals (run_id);
    CREATE INDEX approvals_remind ON approvals (next_remind_at)
        WHERE next_remind_at IS NOT NULL;
    CREATE INDEX approvals_escalate ON approvals (next_escalation_at)
        WHERE next_escalation_at IS NOT NULL;
    CREATE TABLE approval_approvers (
        approval_id text COLLATE "C" NOT NULL,
        approver text NOT NULL,
        escalation integer NOT NULL DEFAULT 0,
        added_at bigint NOT NULL,
        PRIMARY KEY (approval_id, approver)
    );
    CREATE INDEX approval_approvers_person ON approval_approvers (approver);
    CREATE TABLE approval_votes (
        approval_id text COLLATE "C" NOT NULL,
        n integer NOT NULL,
        approver text NOT NULL,
        approve boolean NOT NULL,
        data text,
        reason text,
        at bigint NOT NULL,
        via text NOT NULL,
        link_id text,
        late boolean NOT NULL DEFAULT false,
        PRIMARY KEY (approval_id, n)
    );
    CREATE TABLE approval_notices (
        approval_id text COLLATE "C" NOT NULL,
        n integer NOT NULL,
        approver text NOT NULL,
        reason text NOT NULL,
        due_at bigint NOT NULL,
        claimed_until bigint,
        attempts integer NOT NULL DEFAULT 0,
        delivered_at bigint,
        ok boolean,
        channel text,
        error text,
        PRIMARY KEY (approval_id, n)
    );
    CREATE INDEX approval_notices_due ON approval_notices (due_at) WHERE delivered_at IS NULL;
    """,
    # 12 (10 on SQLite): traces (OpenTelemetry, ``engine.tracing``). ``runs.trace_context``:
    # the W3C ``traceparent`` a run was triggered in, which every attempt continues
    # (``trace_attempts``: each attempt's own, which the run's span links to);
    # ``waitpoints.completed_trace``: the one a token was completed in.
    """
    ALTER TABLE runs ADD COLUMN trace_context text;
    ALTER TABLE runs ADD COLUMN trace_attempts text;
    ALTER TABLE waitpoints ADD COLUMN completed_trace text;
    """,
    # 13: what the workers need apart from what readers need. Work and deadlines (a queued
    # run, a deadline, the task registry, who serves it) stay on 'waitpoint_<schema>', where
    # every engine process listens; a run's status and a closed waitpoint ('r:<id>', 'w')
    # go on 'waitpoint_<schema>_changes', where a process listens only once something in it
    # waits for a run or a change (``StorageCore.run_event``, ``change_event``): a worker
    # no longer takes three notifications a run (its park, its token's close, its end) that
    # nothing in it reads, once per worker. PostgreSQL still signals every listening
    # backend of the database at each notifying commit, whatever the channel, so this saves
    # the workers' CPU, not the server's. (An engine from before this migration, on this
    # schema, hears no status changes: its readers find them by polling.)
    """
    CREATE OR REPLACE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        channel text := 'waitpoint_' || TG_TABLE_SCHEMA;
    BEGIN
        IF TG_TABLE_NAME = 'runs' THEN
            IF NEW.status = 'QUEUED' THEN
                PERFORM pg_notify(
                    channel, 'q' || (hashtext(NEW.id) & 2147483647) || ':' || NEW.task_id
                );
            ELSIF NEW.status = 'DELAYED' THEN
                PERFORM pg_notify(channel, 't:' || NEW.available_at);
            ELSIF NEW.status <> 'EXECUTING' THEN
                PERFORM pg_notify(channel || '_changes', 'r:' || NEW.id);
            END IF;
            IF NEW.expires_at IS NOT NULL AND NEW.status IN ('QUEUED', 'DELAYED') THEN
                PERFORM pg_notify(channel, 't:' || NEW.expires_at);
            END IF;
        ELSIF TG_TABLE_NAME = 'waitpoints' THEN
            IF NEW.status = 'WAITING' THEN
                IF NEW.timeout_at IS NOT NULL THEN
                    PERFORM pg_notify(channel, 't:' || NEW.timeout_at);
                END IF;
            ELSE
                PERFORM pg_notify(channel || '_changes', 'w');
            END IF;
        ELSIF TG_TABLE_NAME = 'workers' THEN
            PERFORM pg_notify(channel, 'workers');
        ELSE
            PERFORM pg_notify(channel, 'tasks');
        END IF;
        RETURN NULL;
    END $$;
    """,
]
