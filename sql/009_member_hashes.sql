-- orgsync schema, version 9: a changed department sends only its changed
-- members, and the deletions look only at members that may have gone.
--
-- Why: with 1% of the members changed, a later sync still cost PostgreSQL
-- 0.70-0.77x of the first sync's CPU (tests/bench/README.md, "Tenth pass"):
-- 1% of the members touch 40% of the departments, a changed department sent
-- all of its members, and a changed enterprise compared every live member
-- with every list of the run.
--
-- members: for a department whose digest holds, each listed member's userid
-- hash and text fingerprint (8 + 8 bytes, in the answer's order:
-- worker/sync/member_map.h). The sync loads those of the digests that hold at
-- an enterprise's start; a changed answer sends only the members whose text is
-- not the one users holds.
--
-- dropped: the userids a department's answers stopped listing since the
-- enterprise's last complete run. Every answered department now keeps its
-- userids here (digest NULL when it keeps no digest), so after a complete run
-- by the departments' lists (members_settled_run) every live member the sync
-- wrote is listed by some row; a later run checks only the dropped userids,
-- the lists of departments it did not answer and members other writers stored
-- (sync_run_id NULL), instead of every member (sql_corp_ok in
-- worker/sync/directory_sync.c).
ALTER TABLE department_digests
    ADD COLUMN members bytea CHECK (octet_length(members) % 16 = 0),
    ADD COLUMN dropped text[] NOT NULL DEFAULT '{}';

-- Digests of version 8 cover the members' text, not their fingerprints, and
-- their rows may not list every member: each enterprise's next run writes its
-- answers in full and checks every member once.
UPDATE department_digests SET digest = NULL;
UPDATE enterprises SET members_settled_run = NULL;

-- A digest says what users holds for a department's members; a users row
-- deleted by hand (the sync only ever marks rows deleted_at) breaks that, so
-- deleting or truncating users drops the digests of the enterprises concerned
-- and their next answers are written in full.
CREATE FUNCTION orgsync_users_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE department_digests SET digest = NULL WHERE digest IS NOT NULL;
    ELSE
        UPDATE department_digests SET digest = NULL
        WHERE digest IS NOT NULL AND corp_id IN (SELECT DISTINCT corp_id FROM gone);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER users_deleted_digests AFTER DELETE ON users
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION orgsync_users_deleted();
CREATE TRIGGER users_truncated_digests AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION orgsync_users_deleted();
