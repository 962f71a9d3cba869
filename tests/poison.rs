//! Poison payloads that are not JSON at all: raw bytes written into the
//! queue's own storage the way apalis keeps a job (apalis-redis: its data
//! hash, field = task id, value = the encoded payload; apalis-sqlite: the
//! `job` BLOB of its `Jobs` row), bypassing apalis's JSON encoder. The worker
//! acknowledges and counts each one, stays up, and runs the good job that
//! comes after. (Payloads that are JSON of the wrong shape:
//! `tests/main_path.rs`.)

mod common;

use std::time::Duration;

use common::{Env, Stack};
use oprun_shared::{JobQueue, RunOutcome};
use oprun_worker::queue::Queue;
use serde_json::json;

/// What lands in the queue: not JSON, not UTF-8, cut-off JSON, empty, NULs,
/// and 1 MiB of non-JSON.
fn raw_payloads() -> Vec<Vec<u8>> {
    vec![
        b"not json at all".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01, 0x80, 0xc3, 0x28],
        b"{\"run_id\": \"01a23c2c-07cb-7760-81b5".to_vec(),
        vec![],
        vec![0u8; 64],
        b"\x89PNG\r\n\x1a\n".iter().copied().cycle().take(1 << 20).collect(),
    ]
}

/// Replace the stored payload of every job in the queue (each pushed the
/// ordinary way: task id, metadata, schedule) with `raw`, one each, and
/// return the job ids.
async fn store_raw_payloads(queue: &Queue, raw: &[Vec<u8>]) -> Vec<String> {
    let mut ids = vec![];
    match queue {
        Queue::Redis(s) => {
            let mut s = s.clone();
            let data = s.get_config().job_data_hash();
            let stored: Vec<String> = redis::cmd("HKEYS").arg(&data).query_async(s.get_connection()).await.unwrap();
            for (id, bytes) in stored.into_iter().zip(raw) {
                let _: i64 = redis::cmd("HSET")
                    .arg(&data)
                    .arg(&id)
                    .arg(bytes.as_slice())
                    .query_async(s.get_connection())
                    .await
                    .unwrap();
                let now: Vec<u8> =
                    redis::cmd("HGET").arg(&data).arg(&id).query_async(s.get_connection()).await.unwrap();
                assert_eq!(&now, bytes, "the raw bytes are what the queue holds");
                ids.push(id);
            }
        }
        Queue::Sqlite(s, name) => {
            let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM Jobs WHERE job_type = ? ORDER BY rowid")
                .bind(name)
                .fetch_all(s.pool())
                .await
                .unwrap();
            for (id, bytes) in stored.into_iter().zip(raw) {
                sqlx::query("UPDATE Jobs SET job = ? WHERE id = ?")
                    .bind(bytes)
                    .bind(&id)
                    .execute(s.pool())
                    .await
                    .unwrap();
                let now: Vec<u8> = sqlx::query_scalar("SELECT job FROM Jobs WHERE id = ?")
                    .bind(&id)
                    .fetch_one(s.pool())
                    .await
                    .unwrap();
                assert_eq!(&now, bytes, "the raw bytes are what the queue holds");
                ids.push(id);
            }
        }
    }
    assert_eq!(ids.len(), raw.len(), "one stored job per push");
    ids
}

/// Whether the job was acknowledged as done (apalis-redis: in the done set;
/// apalis-sqlite: status `Done`).
async fn acknowledged(queue: &Queue, id: &str) -> bool {
    match queue {
        Queue::Redis(s) => {
            let mut s = s.clone();
            let done = s.get_config().done_jobs_set();
            redis::cmd("SISMEMBER").arg(done).arg(id).query_async(s.get_connection()).await.unwrap()
        }
        Queue::Sqlite(s, _) => {
            let status: String =
                sqlx::query_scalar("SELECT status FROM Jobs WHERE id = ?").bind(id).fetch_one(s.pool()).await.unwrap();
            status == "Done"
        }
    }
}

async fn raw_bytes_in_the_queue_are_acknowledged_counted_and_the_worker_goes_on(stack: Stack) {
    let e = Env::new(stack).await;
    let raw = raw_payloads();
    for _ in &raw {
        e.queue.push_value(json!("placeholder")).await.unwrap();
    }
    let ids = store_raw_payloads(&e.queue, &raw).await;
    let run = e.dispatch_new(common::prod_request("test.count", json!({}))).await;
    let runner = e.runner("w1");
    let stats = runner.stats().clone();
    let worker = e.start_worker(runner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.snapshot().received < raw.len() as u64 + 1 {
        assert!(worker.is_running(), "the worker stopped on a payload that is not JSON: {:?}", stats.snapshot());
        assert!(tokio::time::Instant::now() < deadline, "not every job was delivered: {:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = e.until_completed(run.id, 30).await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    // Acknowledged as done, not waiting to be delivered again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for id in &ids {
        while !acknowledged(&e.queue, id).await {
            assert!(tokio::time::Instant::now() < deadline, "job {id} was never acknowledged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(e.queue.depth().await.unwrap(), Some(0), "nothing waits in the queue");
    assert!(worker.is_running(), "the worker is still up");
    worker.stop().await;
    let s = stats.snapshot();
    assert_eq!((s.received, s.invalid_payloads, s.finished), (raw.len() as u64 + 1, raw.len() as u64, 1), "{s:?}");
}

both_stacks!(raw_bytes_in_the_queue_are_acknowledged_counted_and_the_worker_goes_on);
