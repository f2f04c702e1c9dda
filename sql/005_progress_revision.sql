-- orgsync schema, version 5: a revision for progress answers.
--
-- Why: each worker caches progress answers for up to 250 ms, so a client
-- polling GET /v1/runs/{id} through a load balancer could be answered by one
-- instance, then by another with an older answer: its percent went 4.2 -> 3.3,
-- departments_done 3 -> 2 (issue 19). Every progress answer now says which
-- revision of the runs it shows, and a client that sends the highest revision
-- it has seen (?min_revision=N) is never answered with an older one
-- (docs/API.md, "Caching").
--
-- The revision of an environment's runs (env, job) counts the statements that
-- changed its sync_runs or sync_progress rows: the triggers below bump it at the
-- end of every such statement, in the statement's own transaction. The bump
-- locks the counter's row until commit, so bumps happen one after the other in
-- commit order: a transaction with revision N committed after every one with a
-- lower revision. A reader's snapshot that shows revision N therefore shows
-- every write up to N and none after it, and one that shows N or more shows
-- everything an answer of revision N showed: equal revisions, equal data.
--
-- Why a counter and not a value derived from the rows (max(updated_at), a
-- sequence or clock_timestamp() stamped by each write): those are taken before
-- commit, and the leader writes several enterprises at once on different
-- connections. A write stamped 10 can commit after one stamped 20; a reader
-- between the two commits sees max 20, a reader after both also sees max 20,
-- with different numbers, so a client holding the newer of the two would
-- accept the older as "at least 20". now() is worse still (the transaction's
-- start). Only a value assigned in commit order identifies what a reader saw,
-- and only a lock gives commit order. The lock is taken at the end of the
-- statement and held for its commit alone; writes of other environments never
-- wait for it.
--
-- The writes themselves do not change (worker/sync/directory_sync.c,
-- coordinator/runs.c): statement-level triggers with transition tables bump
-- once per statement and environment, however many rows it wrote. The trigger
-- functions are SECURITY DEFINER, so a writer role needs no privilege on
-- sync_revisions (the reader role gets SELECT in sql/roles.sql).

CREATE TABLE sync_revisions (
    env      text NOT NULL,
    job      text NOT NULL,
    revision bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (env, job)
);

-- Every existing environment starts at 1.
INSERT INTO sync_revisions (env, job) SELECT DISTINCT env, job FROM sync_runs;

-- A statement wrote runs (the transition table "changed" holds them).
CREATE FUNCTION orgsync_runs_revision() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO sync_revisions AS v (env, job)
        SELECT DISTINCT env, job FROM changed ORDER BY env, job
        ON CONFLICT (env, job) DO UPDATE SET revision = v.revision + 1;
    RETURN NULL;
END
$$;

-- A statement wrote progress rows: their runs' environments.
CREATE FUNCTION orgsync_progress_revision() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO sync_revisions AS v (env, job)
        SELECT DISTINCT r.env, r.job FROM sync_runs r
        WHERE r.run_id IN (SELECT run_id FROM changed) ORDER BY r.env, r.job
        ON CONFLICT (env, job) DO UPDATE SET revision = v.revision + 1;
    RETURN NULL;
END
$$;

-- A transition table serves one event per trigger, hence three of each.
CREATE TRIGGER sync_runs_revision_ins AFTER INSERT ON sync_runs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orgsync_runs_revision();
CREATE TRIGGER sync_runs_revision_upd AFTER UPDATE ON sync_runs
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orgsync_runs_revision();
CREATE TRIGGER sync_runs_revision_del AFTER DELETE ON sync_runs
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orgsync_runs_revision();
CREATE TRIGGER sync_progress_revision_ins AFTER INSERT ON sync_progress
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orgsync_progress_revision();
CREATE TRIGGER sync_progress_revision_upd AFTER UPDATE ON sync_progress
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orgsync_progress_revision();
CREATE TRIGGER sync_progress_revision_del AFTER DELETE ON sync_progress
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orgsync_progress_revision();
