-- orgsync schema, version 1 (SPEC §3). Applied by `orgsync migrate` in one transaction.

CREATE TABLE enterprises (
    corp_id     text PRIMARY KEY CHECK (corp_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    corp_secret text NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE departments (
    corp_id     text NOT NULL REFERENCES enterprises (corp_id) ON DELETE CASCADE,
    dept_id     bigint NOT NULL,
    name        text NOT NULL,
    parent_id   bigint,
    "order"     bigint,
    sync_run_id bigint,
    synced_at   timestamptz,
    deleted_at  timestamptz,
    PRIMARY KEY (corp_id, dept_id)
);

CREATE TABLE users (
    corp_id         text NOT NULL REFERENCES enterprises (corp_id) ON DELETE CASCADE,
    userid          text NOT NULL,
    name            text,
    mobile          text,
    email           text,
    position        text,
    status          integer,
    department      integer[] NOT NULL DEFAULT '{}',
    main_department integer,
    raw             jsonb,
    sync_run_id     bigint,
    synced_at       timestamptz,
    deleted_at      timestamptz,
    PRIMARY KEY (corp_id, userid)
);
CREATE INDEX users_mobile_idx ON users (mobile);

CREATE TABLE sync_runs (
    run_id          bigserial PRIMARY KEY,
    env             text NOT NULL,
    job             text NOT NULL,
    trigger         text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'cli')),
    scheduled_for   timestamptz NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'succeeded', 'partial', 'failed', 'abandoned')),
    leader_instance text,
    fencing_token   bigint,
    code_version    text,
    attempt         integer NOT NULL DEFAULT 0,
    corp_ids        text[],          -- NULL: every enabled enterprise; else only these (sync --corp)
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    heartbeat_at    timestamptz,
    finished_at     timestamptz,
    error           text,
    UNIQUE (env, job, scheduled_for)
);
-- At most one unfinished run per environment and job: a second request while one
-- is pending or running finds that one instead of starting another.
CREATE UNIQUE INDEX sync_runs_one_active ON sync_runs (env, job)
    WHERE state IN ('pending', 'running', 'abandoned');
CREATE INDEX sync_runs_latest ON sync_runs (env, job, run_id DESC);

CREATE TABLE sync_progress (
    run_id            bigint NOT NULL REFERENCES sync_runs (run_id) ON DELETE CASCADE,
    corp_id           text NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    departments_total integer NOT NULL DEFAULT 0,
    departments_done  integer NOT NULL DEFAULT 0,
    users_upserted    bigint NOT NULL DEFAULT 0,
    users_deleted     bigint NOT NULL DEFAULT 0,
    requests          bigint NOT NULL DEFAULT 0,
    retries           bigint NOT NULL DEFAULT 0,
    errors            bigint NOT NULL DEFAULT 0,
    last_error        text,
    started_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    PRIMARY KEY (run_id, corp_id)
);

CREATE TABLE sync_checkpoints (
    run_id  bigint NOT NULL REFERENCES sync_runs (run_id) ON DELETE CASCADE,
    corp_id text NOT NULL,
    dept_id bigint NOT NULL,
    users   integer NOT NULL DEFAULT 0,
    done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, corp_id, dept_id)
);

CREATE TABLE leader_fence (
    env         text NOT NULL,
    job         text NOT NULL,
    token       bigint NOT NULL,
    instance    text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (env, job)
);
