-- orgsync schema, version 4: the WeCom contacts API as it is today.
--
-- Why: since 2022-08-15 the contact-sync secret, called from an IP added after
-- that date, gets 48009 on department/list, user/list and user/get; its
-- replacements are department/simplelist and user/list_id (the roster, paged by
-- cursor). Since 2022-06-20 a new self-built app gets no mobile or email. So an
-- enterprise has two credentials (the app secret, required, and optionally the
-- contact-sync secret), an API mode (auto probes, legacy and modern force it),
-- and a record of what its credentials provided; a modern run keeps the roster
-- it paged, and its cursor, so a successor resumes mid-roster.

ALTER TABLE enterprises
    ADD COLUMN contact_secret  text,
    ADD COLUMN api_mode        text NOT NULL DEFAULT 'auto'
                               CHECK (api_mode IN ('auto', 'legacy', 'modern')),
    -- what the last sync used (auto: what its probe found), why, and when
    ADD COLUMN api_mode_used   text CHECK (api_mode_used IN ('legacy', 'modern')),
    ADD COLUMN api_mode_reason text,
    ADD COLUMN api_mode_at     timestamptz,
    -- member fields the last successful sync's answers never carried (a new
    -- app's restricted fields); NULL until a sync has seen members
    ADD COLUMN fields_missing  text[];

ALTER TABLE sync_progress
    ADD COLUMN api_mode       text CHECK (api_mode IN ('legacy', 'modern')),
    ADD COLUMN roster_cursor  text,      -- user/list_id's next_cursor of the last stored page
    ADD COLUMN roster_pages   integer NOT NULL DEFAULT 0,
    ADD COLUMN roster_members bigint NOT NULL DEFAULT 0,
    ADD COLUMN roster_done    boolean NOT NULL DEFAULT false;

-- One row per user/list_id page a modern run stored: its memberships as two
-- parallel arrays. Read for the deletions when the enterprise succeeds (a
-- member the complete roster lists is not deleted), then dropped.
CREATE TABLE sync_roster (
    run_id     bigint NOT NULL REFERENCES sync_runs (run_id) ON DELETE CASCADE,
    corp_id    text NOT NULL,
    page       integer NOT NULL,
    userids    text[] NOT NULL,
    depts      integer[] NOT NULL,
    PRIMARY KEY (run_id, corp_id, page)
);
