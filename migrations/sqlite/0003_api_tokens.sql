-- API bearer tokens: only a SHA-256 hash of each token is stored.
-- Keep equivalent to migrations/postgres/0003_api_tokens.sql. Times are RFC 3339 UTC text.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    actor_id    TEXT NOT NULL REFERENCES actors (id),
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT
);
CREATE INDEX api_tokens_actor ON api_tokens (actor_id);
