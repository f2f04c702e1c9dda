-- orgsync schema, version 3: a department's checkpoint keeps the userids it listed.
--
-- Why: every sync wrote every member again, changed or not, only to mark it seen
-- in this run (users.sync_run_id), so that at the end whoever no department
-- listed could be marked deleted. In the schedule's usual run nearly nobody has
-- changed, and those writes made it cost PostgreSQL more than the first sync did
-- (tests/bench/README.md, "Seventh pass"). A member whose text is unchanged is
-- now left as it is; what the run saw is read from its checkpoints, whose
-- userids are dropped again when their enterprise's deletions are done.
--
-- users.sync_run_id and users.synced_at now say which run last wrote the row
-- (new, changed or restored), and when.

ALTER TABLE sync_checkpoints ADD COLUMN userids text[];
