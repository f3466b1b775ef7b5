-- The newsletter example's own tables (schema "newsletter"); idempotent, run by app.setup().

CREATE SCHEMA IF NOT EXISTS newsletter;

CREATE TABLE IF NOT EXISTS newsletter.subscribers (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email   text NOT NULL UNIQUE,
    name    text NOT NULL,
    active  boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS newsletter.newsletters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject     text NOT NULL,
    body        text NOT NULL,
    -- Optional key that makes sending idempotent (e.g. 'digest:2024-W05'): a second
    -- send_newsletter() with the same key sends nothing. NULLs never conflict.
    dedupe_key  text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz          -- when its delivery jobs were queued (same transaction)
);

-- One row per (newsletter, subscriber) actually delivered. The primary key is what makes a
-- retried or duplicated deliver_newsletter job skip a subscriber who already got the mail.
CREATE TABLE IF NOT EXISTS newsletter.deliveries (
    newsletter_id  bigint NOT NULL REFERENCES newsletter.newsletters (id) ON DELETE CASCADE,
    subscriber_id  bigint NOT NULL REFERENCES newsletter.subscribers (id) ON DELETE CASCADE,
    delivered_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (newsletter_id, subscriber_id)
);

CREATE INDEX IF NOT EXISTS deliveries_delivered_at ON newsletter.deliveries (delivered_at);
CREATE INDEX IF NOT EXISTS newsletters_created_at ON newsletter.newsletters (created_at);
