//! `--baseline`: the same N jobs through a bare batched job queue on the
//! same Postgres database, with no run truth — what graphile-worker's batched
//! mode does: one jobs table; batched insert (`unnest`), batched lock
//! (`FOR UPDATE SKIP LOCKED`), batched delete. The full path's rate over it
//! is what the truth costs compared with a plain job queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;

use crate::app::{App, CliError, CliResult};
use oprun::config::StoreKind;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS oprun_bench_jobs (\
    id BIGSERIAL PRIMARY KEY, queue TEXT NOT NULL, payload JSONB NOT NULL, \
    run_at TIMESTAMPTZ NOT NULL DEFAULT now(), attempts INTEGER NOT NULL DEFAULT 0, \
    locked_at TIMESTAMPTZ, locked_by TEXT); \
    CREATE INDEX IF NOT EXISTS oprun_bench_jobs_ready ON oprun_bench_jobs (run_at, id) WHERE locked_at IS NULL; \
    TRUNCATE oprun_bench_jobs";

const INSERT: &str = "INSERT INTO oprun_bench_jobs (queue, payload) \
    SELECT 'bench', jsonb_build_object('run_id', x) FROM unnest($1::uuid[]) AS x";

const LOCK: &str = "UPDATE oprun_bench_jobs SET locked_at = now(), locked_by = $1, attempts = attempts + 1 \
    WHERE id IN (SELECT id FROM oprun_bench_jobs WHERE locked_at IS NULL AND run_at <= now() \
    ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id";

const DELETE: &str = "DELETE FROM oprun_bench_jobs WHERE id = ANY($1)";

/// A bare batched queue: `dispatchers` tasks insert N jobs in batches of
/// `batch`, `workers` tasks lock up to `claim` at a time and delete what
/// they ran. Jobs per second, from the first insert to the last delete.
pub(super) async fn baseline(app: &App, n: u64, dispatchers: usize, batch: u64, claim: usize) -> CliResult<f64> {
    let url = &app.config.store.url;
    if StoreKind::of(url) != Some(StoreKind::Postgres) {
        return Err(CliError::Usage("--baseline needs a Postgres store (store.url = postgres://…)".into()));
    }
    let rt = |e: sqlx::Error| CliError::Runtime(format!("baseline queue: {e}"));
    let workers = 4usize;
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(dispatchers + workers).unwrap_or(16))
        .connect(url)
        .await
        .map_err(rt)?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(rt)?;
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks: JoinSet<Result<(), sqlx::Error>> = JoinSet::new();
    for _ in 0..dispatchers {
        let (pool, next) = (pool.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= n {
                    return Ok(());
                }
                let ids: Vec<uuid::Uuid> = (0..batch.min(n - from)).map(|_| uuid::Uuid::now_v7()).collect();
                sqlx::query(INSERT).bind(ids).execute(&pool).await?;
            }
        });
    }
    for w in 0..workers {
        let (pool, done) = (pool.clone(), done.clone());
        let limit = i64::try_from(claim).unwrap_or(256);
        tasks.spawn(async move {
            let me = format!("baseline-{w}");
            while done.load(Ordering::Relaxed) < n {
                let ids: Vec<i64> = sqlx::query_scalar(LOCK).bind(&me).bind(limit).fetch_all(&pool).await?;
                if ids.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                sqlx::query(DELETE).bind(&ids).execute(&pool).await?;
                done.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    // Any task's error ends the bench at once with it.
    while done.load(Ordering::Relaxed) < n {
        tokio::select! {
            r = tasks.join_next() => match r {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(rt(e)),
                Some(Err(e)) => return Err(CliError::Runtime(format!("baseline task: {e}"))),
                None => break,
            },
            () = tokio::time::sleep_until(deadline) => {
                return Err(CliError::Runtime("baseline did not finish in 10 minutes".into()));
            }
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    tasks.abort_all();
    sqlx::query("DROP TABLE oprun_bench_jobs").execute(&pool).await.map_err(rt)?;
    Ok(rate)
}
