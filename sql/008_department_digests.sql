-- orgsync schema, version 8: an unchanged department costs PostgreSQL almost nothing.
--
-- Why: a later sync of an unchanged directory still sent every member to
-- PostgreSQL, which parsed each as jsonb, probed the users key and locked the
-- row before finding nothing to change: about 7 CPU s for 400,000 members
-- against about 8 for the first sync (tests/bench/README.md, seventh pass).
--
-- Each department keeps a digest of the members its last user/list answer
-- listed (SHA-256 of their text as written, worker/sync/sync_batch.c) and
-- their userids. A later answer with the same digest writes no member row: its
-- checkpoint says "unchanged", and the run's deletions read that department's
-- userids from here (sql_corp_ok in worker/sync/directory_sync.c), so deletion
-- detection stays exact. A changed answer is written as before, and its digest
-- and userids replace these.
--
-- A digest is only trusted while the sync's own write is what users holds for
-- those members: any write that changes or deletes a member (the sync's own
-- through another department or an export, a change callback, a realtime
-- lookup, the roster's rows) sets digest to NULL for the departments the
-- member was or is in (common/digests_sql.h), so their next answer is written
-- in full. userids stay: a run in progress may still read them.
CREATE TABLE department_digests (
    corp_id    text NOT NULL,
    dept_id    bigint NOT NULL,
    digest     bytea CHECK (octet_length(digest) = 16),  -- NULL: write the next answer in full
    userids    text[] NOT NULL,                          -- the members the answer listed
    run_id     bigint,                                   -- the run that wrote them
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (corp_id, dept_id)
);

-- A run of an enterprise that finds every department unchanged needs no
-- deletion check when nothing but the sync has written its members since its
-- last complete one (sql_corp_ok): members_settled_run is the run whose
-- deletions last completed, and the writers that are not the sync (change
-- callbacks, realtime lookups) leave sync_run_id NULL, found by this index.
ALTER TABLE enterprises ADD COLUMN members_settled_run bigint;
CREATE INDEX users_unsynced ON users (corp_id) WHERE sync_run_id IS NULL AND deleted_at IS NULL;

-- A checkpoint of a department whose answer was unchanged: its userids are in
-- department_digests, and none of its members was sent.
ALTER TABLE sync_checkpoints ADD COLUMN unchanged boolean NOT NULL DEFAULT false;

-- Deleting (or truncating) enterprises deletes their digests too (sql/002).
CREATE OR REPLACE FUNCTION orgsync_enterprise_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM users;
        DELETE FROM departments;
        DELETE FROM department_digests;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM users WHERE corp_id = OLD.corp_id;
        DELETE FROM departments WHERE corp_id = OLD.corp_id;
        DELETE FROM department_digests WHERE corp_id = OLD.corp_id;
        RETURN OLD;
    END IF;
    IF NEW.corp_id IS DISTINCT FROM OLD.corp_id
       AND (EXISTS (SELECT 1 FROM users WHERE corp_id = OLD.corp_id)
            OR EXISTS (SELECT 1 FROM departments WHERE corp_id = OLD.corp_id)) THEN
        RAISE EXCEPTION 'enterprise % has synced users or departments: its corp_id cannot change',
            OLD.corp_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NEW.corp_id IS DISTINCT FROM OLD.corp_id THEN
        DELETE FROM department_digests WHERE corp_id = OLD.corp_id;
    END IF;
    RETURN NEW;
END
$$;
