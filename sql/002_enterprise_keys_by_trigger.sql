-- orgsync schema, version 2: users and departments keep no foreign key to enterprises.
--
-- Why: the foreign key was checked once per written row, and each check was a
-- query of its own with a row lock (FOR KEY SHARE) on the enterprise: about a
-- quarter of PostgreSQL's CPU time for writing 400,000 members
-- (tests/bench/README.md). What the key guaranteed is kept another way:
--   * deleting (or truncating) enterprises deletes their users and departments,
--     as ON DELETE CASCADE did (the trigger below);
--   * an enterprise's corp_id cannot change while users or departments refer to
--     it, as the key refused (the trigger below);
--   * the sync's writes lock their enterprise's row once per statement (FOR KEY
--     SHARE), so a delete that comes while a sync writes waits for the write and
--     its trigger then removes what it wrote; a write that comes after the
--     delete finds no enterprise and writes nothing.

ALTER TABLE users DROP CONSTRAINT users_corp_id_fkey;
ALTER TABLE departments DROP CONSTRAINT departments_corp_id_fkey;

CREATE FUNCTION orgsync_enterprise_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM users;
        DELETE FROM departments;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM users WHERE corp_id = OLD.corp_id;
        DELETE FROM departments WHERE corp_id = OLD.corp_id;
        RETURN OLD;
    END IF;
    IF NEW.corp_id IS DISTINCT FROM OLD.corp_id
       AND (EXISTS (SELECT 1 FROM users WHERE corp_id = OLD.corp_id)
            OR EXISTS (SELECT 1 FROM departments WHERE corp_id = OLD.corp_id)) THEN
        RAISE EXCEPTION 'enterprise % has synced users or departments: its corp_id cannot change',
            OLD.corp_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER enterprises_rows AFTER DELETE OR UPDATE OF corp_id ON enterprises
    FOR EACH ROW EXECUTE FUNCTION orgsync_enterprise_rows();
CREATE TRIGGER enterprises_rows_truncate AFTER TRUNCATE ON enterprises
    FOR EACH STATEMENT EXECUTE FUNCTION orgsync_enterprise_rows();
