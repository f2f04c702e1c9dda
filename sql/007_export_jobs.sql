-- orgsync schema, version 7: members from WeCom's asynchronous export job.
--
-- Why: user/list is one request per department at the enterprise's rate (10/s),
-- so 5,000 departments take over 8 minutes of requests. export/user does every
-- member in one job: create it, poll export/get_result until it is done, then
-- download its encrypted files (not API calls). An enterprise chooses its member
-- source; a run stores its export job so that any instance can report it and a
-- successor leader polls the same job instead of creating another.

ALTER TABLE enterprises
    -- user_list: a user/list per department (as before); export: export/user;
    -- auto: export when the department list is longer than the threshold
    ADD COLUMN member_source        text NOT NULL DEFAULT 'user_list'
                                    CHECK (member_source IN ('user_list', 'export', 'auto')),
    -- what the last sync used, why (auto's choice, a refusal's errcode), and when
    ADD COLUMN member_source_used   text CHECK (member_source_used IN ('user_list', 'export')),
    ADD COLUMN member_source_reason text,
    ADD COLUMN member_source_at     timestamptz;

-- One export job per run and enterprise. encoding_aeskey decrypts its files,
-- so only the writer may read it (sql/roles.sql grants the reader the rest).
CREATE TABLE sync_exports (
    run_id          bigint NOT NULL REFERENCES sync_runs (run_id) ON DELETE CASCADE,
    corp_id         text NOT NULL,
    jobid           text,                  -- NULL until export/user answered
    credential      text NOT NULL CHECK (credential IN ('app', 'contact')),
    encoding_aeskey text NOT NULL,
    block_size      integer NOT NULL,
    -- creating: export/user sent; waiting: polling get_result; downloading:
    -- data_list known; done: every file verified and written; failed
    state           text NOT NULL DEFAULT 'creating'
                    CHECK (state IN ('creating', 'waiting', 'downloading', 'done', 'failed')),
    job_status      integer,               -- get_result's last status (0..3)
    polls           integer NOT NULL DEFAULT 0,
    data_list       jsonb,                 -- [{"url","size","md5"}] once done
    urls_expire_at  timestamptz,           -- done + 2 h: after it a successor makes a new job
    parts_done      integer NOT NULL DEFAULT 0,
    members         bigint NOT NULL DEFAULT 0,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, corp_id)
);

-- Progress answers show the export's state, so its changes are a new revision
-- (sql/005) like the progress rows'.
CREATE TRIGGER sync_exports_revision_ins AFTER INSERT ON sync_exports
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orgsync_progress_revision();
CREATE TRIGGER sync_exports_revision_upd AFTER UPDATE ON sync_exports
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION orgsync_progress_revision();
