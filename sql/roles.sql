-- orgsync database roles. Run as a superuser (or the database owner) in the
-- orgsync database, after `orgsync migrate`, and again after every migration
-- (it is idempotent):
--
--   psql -v ON_ERROR_STOP=1 -d orgsync -f sql/roles.sql
--   psql -d orgsync -c "ALTER ROLE orgsync_writer PASSWORD '...'"   -- and orgsync_reader
--
-- orgsync_writer: production hosts (any worker may become the leader, and the
--   realtime lookup stores what it finds). Reads corp_secret to get tokens.
-- orgsync_reader: API-only deployments (staging, load test, read replicas).
--   SELECT on everything except enterprises.corp_secret, contact_secret,
--   callback_token and callback_aeskey; with
--   ORGSYNC_READ_ONLY=auto a process on this role never competes for the lock
--   and refuses the write endpoints.
-- Neither role can change the schema: migrations run as the owner.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgsync_writer') THEN
        CREATE ROLE orgsync_writer LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgsync_reader') THEN
        CREATE ROLE orgsync_reader LOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO orgsync_writer, orgsync_reader', current_database());
END
$$;

GRANT USAGE ON SCHEMA public TO orgsync_writer, orgsync_reader;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO orgsync_writer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO orgsync_writer;
REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM orgsync_writer;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM orgsync_reader;
GRANT SELECT ON departments, users, sync_runs, sync_progress, sync_checkpoints, leader_fence,
    schema_migrations TO orgsync_reader;
DO $$
BEGIN
    -- schema 4 and later
    IF to_regclass('sync_roster') IS NOT NULL THEN
        GRANT SELECT ON sync_roster TO orgsync_reader;
    END IF;
    -- schema 5 and later: the revision every progress answer carries
    IF to_regclass('sync_revisions') IS NOT NULL THEN
        GRANT SELECT ON sync_revisions TO orgsync_reader;
    END IF;
    -- schema 6 and later: the callback inbox (progress shows its depth and lag)
    IF to_regclass('callback_inbox') IS NOT NULL THEN
        GRANT SELECT ON callback_inbox TO orgsync_reader;
    END IF;
    -- schema 7 and later: export jobs, without their encoding_aeskey
    IF to_regclass('sync_exports') IS NOT NULL THEN
        GRANT SELECT (run_id, corp_id, jobid, credential, block_size, state, job_status, polls,
            data_list, urls_expire_at, parts_done, members, error, created_at, updated_at)
            ON sync_exports TO orgsync_reader;
    END IF;
    -- schema 8 and later: what each department's last answer listed
    IF to_regclass('department_digests') IS NOT NULL THEN
        GRANT SELECT ON department_digests TO orgsync_reader;
    END IF;
END
$$;
-- Column privileges: the reader may see which enterprises exist and how they
-- sync, never their secrets (corp_secret, contact_secret, callback_token,
-- callback_aeskey).
GRANT SELECT (corp_id, name, enabled, created_at) ON enterprises TO orgsync_reader;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_name = 'enterprises' AND column_name = 'api_mode') THEN
        GRANT SELECT (api_mode, api_mode_used, api_mode_reason, api_mode_at, fields_missing)
            ON enterprises TO orgsync_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_name = 'enterprises' AND column_name = 'member_source') THEN
        GRANT SELECT (member_source, member_source_used, member_source_reason, member_source_at)
            ON enterprises TO orgsync_reader;
    END IF;
END
$$;
