-- API bearer tokens: only a SHA-256 hash of each token is stored.
-- Keep equivalent to migrations/sqlite/0003_api_tokens.sql.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    actor_id    TEXT NOT NULL REFERENCES actors (id),
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_tokens_actor ON api_tokens (actor_id);
