//! The job queue on apalis 1.0: apalis-redis in production, apalis-sqlite
//! (in the run store's own file) for the embedded default. Jobs carry only a
//! run id; the run row owns attempts and retries.
//!
//! Settings and what they trade (apalis 1.0, read from its source):
//! - Redis `lock_tasks = false`: apalis's lock scans the whole active list per
//!   task (cost grows with backlog); our run row's claim is the lock that
//!   matters, so we skip it and keep fetch cost flat.
//! - `heartbeat` / `missed_heartbeats` set explicitly (default 5 s × 3): a dead
//!   worker's in-flight jobs return to the queue after ~15 s instead of apalis's
//!   5-minute default; the price is one small write per worker per heartbeat.
//! - A unique worker name per process (`PREFIX-HOST-PID-RANDOM`): apalis
//!   refuses a name reused within a heartbeat of the old worker.
//! - `emit_events = false`: apalis publishes every task's state change on
//!   pubsub by default; nothing here listens, so it is pure Redis work.
//! - Jobs fetched per round trip: a quarter of the worker's concurrency
//!   (10–100) instead of apalis's 10.
//! - Idle polling every `poll_interval` through a tokio-timer stream: apalis
//!   otherwise re-polls an idle worker only at its heartbeat; a shorter
//!   interval means lower pickup latency for one cheap query per tick.
//! - The handler returns `Ok` for everything but a store outage (then `Err`,
//!   and the backend reschedules the job): the run row, not apalis, decides
//!   retries, so apalis's own retry budget never fires for run failures.
//! - No `parallelize`: jobs share the worker's task, but each run's handler
//!   and heartbeat run on tasks of their own (see `runner`), so only the
//!   claim and finish writes are polled on the worker task.
//! - The payload is taken as `serde_json::Value` and parsed by the handler, so
//!   a payload of the wrong shape is acknowledged and counted, never a decode
//!   error that stops the worker. Stored bytes that are not JSON at all are
//!   decoded by [`PayloadCodec`] into a value the handler refuses the same
//!   way: apalis's own JSON codec fails the fetch, which stops the worker
//!   and leaves the job in its in-flight set, delivered again (and stopping
//!   the next worker) after a restart.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{QueueBackend, QueueConfig};
use apalis::prelude::{BackendExt, BoxDynError, Codec, Data, TaskSink, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::SqliteStorage;
use async_trait::async_trait;
use futures::{Stream, TryStreamExt};
use oprun_shared::{JobPayload, JobQueue, QueueError, redact};
use serde_json::{Value, json};
use sqlx::SqlitePool;
use tracing::{info, warn};
use uuid::Uuid;

/// Handles one raw job payload.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    /// `Ok` acknowledges; `Err` (a store outage) sends the job back.
    async fn handle(&self, payload: Value) -> Result<(), crate::runner::Retry>;
}

#[async_trait]
impl JobHandler for crate::runner::Runner {
    async fn handle(&self, payload: Value) -> Result<(), crate::runner::Retry> {
        self.handle_job(payload).await.map(|_| ())
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker name's prefix.
    pub name_prefix: String,
    /// Jobs handled at once.
    pub concurrency: usize,
    /// How long in-flight jobs may finish after shutdown is asked for.
    pub shutdown_grace: Duration,
}

/// The queue: one of the two apalis storages.
#[derive(Clone)]
pub enum Queue {
    /// apalis-redis.
    Redis(RedisStorage<Value, ConnectionManager>),
    /// apalis-sqlite in the store's file, and its queue name.
    Sqlite(SqliteStorage<Value>, String),
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Queue::Redis(_) => f.write_str("Queue::Redis"),
            Queue::Sqlite(..) => f.write_str("Queue::Sqlite"),
        }
    }
}

/// The apalis-sqlite schema, with its own migrations table so that it never
/// meets the run store's `_sqlx_migrations`.
async fn migrate_sqlite_queue(pool: &SqlitePool) -> anyhow::Result<()> {
    let mut migrator = SqliteStorage::<()>::migrations();
    migrator.dangerous_set_table_name("_apalis_migrations");
    migrator.run(pool).await?;
    Ok(oprun_shared::store::seed_planner_statistics(pool, QUEUE_STATISTICS).await?)
}

/// Planner statistics for the queue's busy tables, as they look after a
/// long history: a million jobs, ids unique, a few workers, a status column
/// of a few values, small partial indexes of the pending, running and failed
/// jobs (the run store seeds its own tables the same way: see
/// `oprun_shared::store::seed_planner_statistics`).
///
/// Without them SQLite plans as if every table were empty (an `ANALYZE` on
/// a fresh file records zero rows, and nothing analyzes again): apalis's ack
/// then walks every job this worker ever locked (`LIdx`) for each acked id,
/// and its lock walks every pending job, so each batch costs more as the
/// history and the backlog grow (measured here: 20,000 bench runs at 69/s,
/// bare apalis-sqlite jobs at 70/s). With them, every by-id statement uses
/// the primary key.
const QUEUE_STATISTICS: &[(&str, Option<&str>, &str)] = &[
    ("Jobs", None, "1000000"),
    ("Jobs", Some("sqlite_autoindex_Jobs_1"), "1000000 1"),
    ("Jobs", Some("LIdx"), "1000000 250000"),
    ("Jobs", Some("idx_jobs_job_type_status_run_at"), "1000000 500000 200000 10"),
    ("Jobs", Some("idx_jobs_status_run_at"), "1000000 200000 10"),
    ("Jobs", Some("idx_jobs_completed_done_at"), "1000000 300000 10 10"),
    ("Jobs", Some("idx_jobs_idempotency_key"), "1000000 500000 1"),
    ("Jobs", Some("idx_jobs_pending"), "10000 5000 5000 10 1"),
    ("Jobs", Some("idx_jobs_running"), "100 10"),
    ("Jobs", Some("idx_jobs_failed"), "100 50 50 10 1"),
    ("Jobs", Some("idx_jobs_claimable"), "10000 3000 300"),
    ("Workers", None, "100"),
    ("Workers", Some("sqlite_autoindex_Workers_1"), "100 1"),
    ("Workers", Some("Idx"), "100 1"),
    ("Workers", Some("WTIdx"), "100 50"),
    ("Workers", Some("LSIdx"), "100 1"),
];

impl Queue {
    /// Open the queue the config names; the SQLite queue needs the store's pool.
    pub async fn open(cfg: &QueueConfig, sqlite_pool: Option<SqlitePool>) -> anyhow::Result<Queue> {
        match cfg.backend {
            QueueBackend::Redis => {
                let url =
                    cfg.url.as_deref().ok_or_else(|| anyhow::anyhow!("queue.url: the redis backend needs a URL"))?;
                let conn = tokio::time::timeout(Duration::from_secs(10), apalis_redis::connect(url))
                    .await
                    .map_err(|_| anyhow::anyhow!("redis {}: no answer within 10s", redact::redact_url(url)))?
                    .map_err(|e| anyhow::anyhow!("redis {}: {e}", redact::redact_url(url)))?;
                let config = apalis_redis::Config::default()
                    .queue(&cfg.namespace)
                    .heartbeat_interval(cfg.heartbeat)
                    .missed_heartbeats(cfg.missed_heartbeats as usize)
                    .lock_tasks(false)
                    .emit_events(false);
                Ok(Queue::Redis(RedisStorage::new(conn).with_config(config)))
            }
            QueueBackend::Sqlite => {
                let pool = sqlite_pool.ok_or_else(|| {
                    anyhow::anyhow!("queue.backend = \"sqlite\" needs a sqlite: store (the queue lives in its file)")
                })?;
                migrate_sqlite_queue(&pool).await?;
                let config = apalis_sqlite::Config::default()
                    .queue(&cfg.namespace)
                    .heartbeat_interval(cfg.heartbeat)
                    .missed_heartbeats(cfg.missed_heartbeats as usize);
                Ok(Queue::Sqlite(SqliteStorage::new(&pool).with_config(config), cfg.namespace.clone()))
            }
        }
    }

    /// Push a raw JSON payload (the worker must survive any shape).
    pub async fn push_value(&self, payload: Value) -> Result<(), QueueError> {
        let err = |e: String| QueueError(e);
        match self {
            Queue::Redis(s) => s.clone().push(payload).await.map_err(|e| err(e.to_string()))?,
            Queue::Sqlite(s, _) => s.clone().push(payload).await.map_err(|e| err(e.to_string()))?,
        }
        self.wake_workers().await;
        Ok(())
    }

    /// Tell idle Redis workers that jobs were pushed. Best effort: a worker
    /// that misses it fetches at its next poll tick.
    async fn wake_workers(&self) {
        if let Queue::Redis(s) = self {
            let mut s = s.clone();
            let channel = wake_channel(&s);
            if let Err(e) = redis::cmd("PUBLISH").arg(channel).arg(1).query_async::<i64>(s.get_connection()).await {
                tracing::debug!(error = %e, "could not publish the wake-up; workers fetch at their next tick");
            }
        }
    }
}

#[async_trait]
impl JobQueue for Queue {
    async fn push(&self, run_id: Uuid) -> Result<(), QueueError> {
        self.push_value(serde_json::to_value(JobPayload { run_id }).unwrap_or_default()).await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        match self {
            Queue::Redis(s) => {
                let mut s = s.clone();
                redis::cmd("PING")
                    .query_async::<String>(s.get_connection())
                    .await
                    .map(|_| ())
                    .map_err(|e| QueueError(e.to_string()))
            }
            Queue::Sqlite(s, _) => {
                sqlx::query("SELECT 1").execute(s.pool()).await.map(|_| ()).map_err(|e| QueueError(e.to_string()))
            }
        }
    }

    async fn depth(&self) -> Result<Option<u64>, QueueError> {
        let err = |e: String| QueueError(e);
        match self {
            Queue::Redis(s) => {
                let mut s = s.clone();
                // Pushed jobs wait in the scheduled set until a fetch moves
                // them to the active list: both are waiting.
                let (active, scheduled) = (s.get_config().active_jobs_list(), s.get_config().scheduled_jobs_set());
                let (a, z): (u64, u64) = redis::pipe()
                    .cmd("LLEN")
                    .arg(active)
                    .cmd("ZCARD")
                    .arg(scheduled)
                    .query_async(s.get_connection())
                    .await
                    .map_err(|e| err(e.to_string()))?;
                Ok(Some(a + z))
            }
            Queue::Sqlite(s, name) => {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE job_type = $1 AND status = 'Pending'")
                    .bind(name)
                    .fetch_one(s.pool())
                    .await
                    .map_err(|e| err(e.to_string()))?;
                Ok(Some(n.max(0) as u64))
            }
        }
    }

    async fn push_many(&self, run_ids: &[Uuid]) -> Result<(), QueueError> {
        let payloads: Vec<Value> =
            run_ids.iter().map(|id| serde_json::to_value(JobPayload { run_id: *id }).unwrap_or_default()).collect();
        // On Redis a few chunks at once (each one round trip; a pass of the
        // reconciler may push 100,000 jobs). On SQLite one at a time: each
        // chunk is a write transaction, and concurrent ones only wait on the
        // file's lock.
        let in_flight = match self {
            Queue::Redis(_) => PUSHES_IN_FLIGHT,
            Queue::Sqlite(..) => 1,
        };
        futures::stream::iter(payloads.chunks(500).map(Ok))
            .try_for_each_concurrent(in_flight, |chunk| async move {
                let r = match self {
                    Queue::Redis(s) => s.clone().push_bulk(chunk.to_vec()).await.map_err(|e| e.to_string()),
                    Queue::Sqlite(s, _) => s.clone().push_bulk(chunk.to_vec()).await.map_err(|e| e.to_string()),
                };
                r.map_err(QueueError)
            })
            .await?;
        self.wake_workers().await;
        Ok(())
    }
}

/// Bulk pushes of one `push_many` that may be in flight at once (Redis).
const PUSHES_IN_FLIGHT: usize = 4;

/// Ticks every `every`: wakes an idle worker to poll.
fn ticker(every: Duration) -> std::pin::Pin<Box<dyn Stream<Item = ()> + Send>> {
    Box::pin(futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some(((), ()))
    }))
}

/// The Redis channel our pushes publish on, so idle workers of the queue
/// fetch at once. (apalis-redis's own signal list is only written for jobs
/// that go straight to the active list; its pushes all go through the
/// scheduled set, so nothing waits on it.)
fn wake_channel(s: &RedisStorage<Value>) -> String {
    format!("{}:oprun-wake", s.get_config().signal_list())
}

/// Wakes an idle Redis worker when a push is published on `channel`, and at
/// least every `every` (the poll interval, which still covers a lost
/// message or a push by another client). Subscribes on a connection of its
/// own; without one it falls back to the plain ticker and subscribes again
/// on the next wake.
fn redis_waker(url: String, channel: String, every: Duration) -> std::pin::Pin<Box<dyn Stream<Item = ()> + Send>> {
    type Messages = std::pin::Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;
    async fn subscribe(url: &str, channel: &str) -> redis::RedisResult<Messages> {
        let mut pubsub = redis::Client::open(url)?.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(Box::pin(pubsub.into_on_message()))
    }
    Box::pin(futures::stream::unfold((None::<Messages>, None::<tokio::time::Instant>), move |(sub, last)| {
        let (url, channel) = (url.clone(), channel.clone());
        async move {
            // At most one wake per WAKE_GAP: pushes that arrive meanwhile
            // share the next fetch instead of costing one each.
            if let Some(last) = last {
                tokio::time::sleep_until(last + WAKE_GAP).await;
            }
            let mut sub = match sub {
                Some(s) => Some(s),
                None => tokio::time::timeout(every, subscribe(&url, &channel)).await.ok().and_then(Result::ok),
            };
            match sub.as_mut() {
                Some(messages) => {
                    let mut pending = false;
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(futures::StreamExt::next(messages)) {
                        pending = true;
                    }
                    // A message, or the interval passed: wake either way.
                    if !pending {
                        match tokio::time::timeout(every, futures::StreamExt::next(messages)).await {
                            Ok(Some(_)) | Err(_) => {}
                            Ok(None) => {
                                sub = None;
                                tokio::time::sleep(every).await;
                            }
                        }
                    }
                }
                None => tokio::time::sleep(every).await,
            }
            Some(((), (sub, Some(tokio::time::Instant::now()))))
        }
    }))
}

/// The shortest time between two wakes of one worker by pushes.
const WAKE_GAP: Duration = Duration::from_millis(10);

/// The codec workers decode stored payloads with: JSON as apalis writes it,
/// and bytes that are not JSON into `{"undecodable_payload": {"bytes": N,
/// "error": …}}` (the length and the parser's message, never the bytes),
/// which no run id parses from, so the handler acknowledges and counts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PayloadCodec;

impl Codec<Value> for PayloadCodec {
    type Error = serde_json::Error;
    type Compact = Vec<u8>;

    fn encode(&self, val: &Value) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(val)
    }

    fn decode(&self, val: &Vec<u8>) -> Result<Value, Self::Error> {
        Ok(serde_json::from_slice(val)
            .unwrap_or_else(|e| json!({ "undecodable_payload": { "bytes": val.len(), "error": e.to_string() } })))
    }
}

/// The handler as worker data (a concrete type keeps apalis's bounds simple).
#[derive(Clone)]
struct Shared(Arc<dyn JobHandler>);

async fn handle(payload: Value, handler: Data<Shared>) -> Result<(), BoxDynError> {
    let Shared(inner) = &*handler;
    inner.handle(payload).await.map_err(BoxDynError::from)
}

/// A name unique to this process.
pub fn unique_name(prefix: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let random = Uuid::now_v7().simple().to_string();
    format!("{prefix}-{host}-{}-{}", std::process::id(), &random[random.len() - 10..])
}

/// Run a worker until `shutdown` resolves, then let in-flight jobs finish for
/// up to `opts.shutdown_grace`.
pub async fn run_worker(
    queue: Queue,
    cfg: QueueConfig,
    opts: WorkerOptions,
    handler: Arc<dyn JobHandler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = unique_name(&opts.name_prefix);
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let signal = {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
            Ok::<(), std::io::Error>(())
        }
    };
    let grace = {
        let mut rx = rx.clone();
        let grace = opts.shutdown_grace;
        async move {
            let _ = rx.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        }
    };
    info!(worker = %name, concurrency = opts.concurrency, "worker started");
    let concurrency = opts.concurrency.max(1);
    // Jobs fetched per round trip: a quarter of the concurrency, 10 to 100
    // (more would park jobs in this worker while others are idle).
    let fetch = (concurrency / 4).clamp(10, 100);
    let queue = match queue {
        Queue::Redis(s) => {
            let config = s.get_config().clone().batch_size(fetch);
            Queue::Redis(s.with_config(config))
        }
        other => other,
    };
    let handler = Shared(handler);
    let poll = cfg.poll_interval;
    let worker_name = name.clone();
    let run = tokio::spawn(async move {
        let name = worker_name.as_str();
        match queue {
            Queue::Redis(s) => {
                let wake = match cfg.url.clone() {
                    Some(url) => redis_waker(url, wake_channel(&s), poll),
                    None => ticker(poll),
                };
                WorkerBuilder::new(name)
                    .backend(s.with_codec(PayloadCodec).poll_with_stream(wake))
                    .data(handler.clone())
                    .concurrency(concurrency)
                    .build(handle)
                    .run_until(signal)
                    .await
            }
            Queue::Sqlite(s, _) => {
                WorkerBuilder::new(name)
                    .backend(s.with_codec(PayloadCodec).poll_with_stream(ticker(poll)))
                    .data(handler.clone())
                    .concurrency(concurrency)
                    .build(handle)
                    .run_until(signal)
                    .await
            }
        }
    });
    tokio::select! {
        r = run => r.map_err(|e| anyhow::anyhow!("worker {name}: {e}"))?.map_err(|e| anyhow::anyhow!("worker {name}: {e}"))?,
        _ = grace => warn!(worker = %name, "shutdown grace elapsed with runs in flight; their leases will expire"),
    }
    info!(worker = %name, "worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_that_are_not_json_decode_into_a_payload_naming_no_run() {
        let codec = PayloadCodec;
        let id = Uuid::now_v7();
        let job = codec.encode(&json!({ "run_id": id })).unwrap();
        assert_eq!(codec.decode(&job).unwrap(), json!({ "run_id": id }));
        for raw in [&b"not json"[..], &[0xff, 0xfe, 0x00][..], &b""[..], &b"{\"run_id\": \"0"[..]] {
            let v = codec.decode(&raw.to_vec()).unwrap();
            assert_eq!(v["undecodable_payload"]["bytes"], raw.len(), "{v}");
            assert!(serde_json::from_value::<JobPayload>(v.clone()).is_err(), "{v}");
            assert!(!v.to_string().contains("not json"), "the bytes are not kept: {v}");
        }
    }
}
