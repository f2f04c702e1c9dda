-- orgsync schema, version 6: WeCom change callbacks (issue 17).
--
-- Why: a member who joins at 09:00 was unknown to PostgreSQL until the next
-- scheduled run. WeCom pushes contact changes (Event=change_contact) to a
-- callback URL; every worker answers POST /v1/callbacks/wecom/{corp_id}
-- (docs/API.md), and stores each accepted event here BEFORE it answers 200, so
-- any worker on any host may receive it and none is lost if that worker dies
-- right after answering. The leader of the "callback-apply" job (its own lock
-- and fence) applies pending events: it fetches each member or department named
-- again upstream and writes it through fenced statements, then marks the events
-- applied.
--
-- Per enterprise, the callback's Token and EncodingAESKey (orgsync enterprise
-- set --callback-token-env VAR --callback-aeskey-env VAR). Secrets: the reader
-- role gets no SELECT on them (sql/roles.sql).

ALTER TABLE enterprises
    ADD COLUMN callback_token  text CHECK (callback_token ~ '^[A-Za-z0-9]{1,128}$'),
    ADD COLUMN callback_aeskey text CHECK (callback_aeskey ~ '^[A-Za-z0-9]{43}$');

CREATE TABLE callback_inbox (
    event_id      bigserial PRIMARY KEY,
    corp_id       text NOT NULL,
    from_user     text NOT NULL DEFAULT '',      -- FromUserName (sys for contact events)
    create_time   bigint NOT NULL,               -- CreateTime, unix seconds
    change_type   text NOT NULL,                 -- create_user, update_user, delete_user, create_party, ...
    kind          text NOT NULL CHECK (kind IN ('user', 'department', 'tag')),
    target        text NOT NULL,                 -- the userid, department id or tag id it names
    new_target    text,                          -- update_user's NewUserID (a changed userid)
    msg_signature text NOT NULL,                 -- the request's, for refusing replays
    received_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    received_by   text,                          -- the worker instance that stored it
    applied_at    timestamptz,                   -- NULL while pending
    outcome       text,                          -- upserted, deleted, gone, ignored, failed: ...
    attempts      integer NOT NULL DEFAULT 0,
    -- The same event delivered twice (a retry with a new nonce, a duplicate) is
    -- stored once; the same request replayed is refused (route).
    UNIQUE (corp_id, from_user, create_time, change_type, target),
    UNIQUE (corp_id, msg_signature)
);
CREATE INDEX callback_inbox_pending ON callback_inbox (event_id) WHERE applied_at IS NULL;
CREATE INDEX callback_inbox_corp ON callback_inbox (corp_id, event_id);
