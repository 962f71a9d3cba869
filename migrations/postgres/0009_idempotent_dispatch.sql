-- A dispatch over HTTP may carry an Idempotency-Key: the run keeps it in its
-- context (`idempotency_key`), and a repeated request by the same caller
-- within the window returns that run. Only keyed runs are indexed.
CREATE INDEX operation_runs_idempotency ON operation_runs ((context ->> 'idempotency_key'), actor_id)
    WHERE (context ->> 'idempotency_key') IS NOT NULL;
