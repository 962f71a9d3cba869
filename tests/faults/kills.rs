//! The campaign's kill bookkeeping: where a run stood at a kill, holding a run
//! in a running state until the kill, and the exact refetch bound per run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use oprun_shared::{OperationRun, RunStatus};
use serde_json::Value;
use uuid::Uuid;

/// Where a run stood when a worker was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum AtKill {
    Queued,
    /// Claimed, no page checkpointed yet (in any attempt).
    RunningNoPage,
    /// Some pages checkpointed, the next one not.
    RunningMidCollection,
    /// The last page checkpointed (`{"next": null, "done": true}`), not completed.
    RunningAllPagesCheckpointed,
    Completed,
}

pub(crate) fn at_kill(run: &OperationRun) -> AtKill {
    match run.status {
        RunStatus::Queued => AtKill::Queued,
        RunStatus::Completed => AtKill::Completed,
        RunStatus::Running => match &run.checkpoint {
            None => AtKill::RunningNoPage,
            Some(cp) if cp.get("done").and_then(Value::as_bool) == Some(true) => AtKill::RunningAllPagesCheckpointed,
            Some(_) => AtKill::RunningMidCollection,
        },
    }
}

/// The states every campaign must have killed a worker in at least once
/// (the README names them).
pub(crate) const KILL_STATES: [AtKill; 4] =
    [AtKill::Queued, AtKill::RunningNoPage, AtKill::RunningMidCollection, AtKill::RunningAllPagesCheckpointed];

/// The rows of the campaign in a running state `state`, as SQL.
fn running_in(state: AtKill) -> &'static str {
    match state {
        AtKill::RunningNoPage => "status = 'running' AND (checkpoint IS NULL OR checkpoint = 'null'::jsonb)",
        AtKill::RunningMidCollection => {
            "status = 'running' AND checkpoint IS NOT NULL AND checkpoint <> 'null'::jsonb \
             AND (checkpoint ->> 'done') IS DISTINCT FROM 'true'"
        }
        AtKill::RunningAllPagesCheckpointed => "status = 'running' AND (checkpoint ->> 'done') = 'true'",
        AtKill::Queued | AtKill::Completed => unreachable!("not a state a run is held in"),
    }
}

/// A run held in one of the running states `wanted` (the first found,
/// polled until `until`): a transaction holding its row, so that the
/// worker's next write to it (its next checkpoint, or its completion)
/// waits and the run is still in that state when the worker is killed.
/// The window between a run's last checkpoint and its completion is a few
/// milliseconds: kills at random times alone hit it in some campaigns only.
pub(crate) async fn hold_a_run_in(
    pool: &sqlx::PgPool,
    wanted: &[AtKill],
    until: Instant,
) -> Option<(sqlx::Transaction<'static, sqlx::Postgres>, AtKill, Uuid)> {
    while Instant::now() < until {
        for state in wanted {
            let mut tx = pool.begin().await.expect("begin");
            let sql = format!(
                "SELECT id FROM operation_runs WHERE operation = 'test.collect_campaign' AND {} \
                 LIMIT 1 FOR UPDATE SKIP LOCKED",
                running_in(*state)
            );
            let held: Option<Uuid> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_optional(&mut *tx).await.expect("hold a run");
            if let Some(id) = held {
                return Some((tx, *state, id));
            }
            tx.rollback().await.expect("rollback");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// End the statements the killed worker left waiting on `holder`'s lock
/// (a dead client's statement runs on when the lock is released, until its
/// backend notices the closed socket): what the worker was writing is lost,
/// as if the kill had come before it was sent.
pub(crate) async fn end_statements_waiting_on(pool: &sqlx::PgPool, holder: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))")
                .bind(holder)
                .fetch_all(pool)
                .await
                .expect("list the waiting backends");
        if waiting.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "backends {waiting:?} still wait on the held run");
        for pid in waiting {
            sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(pool).await.expect("terminate");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the campaign saw of one run.
#[derive(Debug)]
pub(crate) struct RunReport {
    pub(crate) target: String,
    pub(crate) pages: u32,
    /// Pages checkpointed by each attempt (its `run.progress` rows between
    /// its `run.claim` and the next one), oldest first.
    pub(crate) checkpointed_per_attempt: Vec<u32>,
    /// Fetches per page.
    pub(crate) fetches: BTreeMap<u32, u32>,
    pub(crate) fetch_log: Vec<u32>,
    pub(crate) completes: usize,
}

impl RunReport {
    /// The pages this run fetched more times than the exact condition
    /// allows (empty: fine), with the fetch count and the allowance.
    ///
    /// The condition, from `HttpCollect::execute` (worker/src/http/collect.rs): an
    /// attempt starts at the page its checkpoint's `next` link names (page 1
    /// without a checkpoint), and for each page fetches it, then stores the
    /// page's counts and the next page's link as the checkpoint in one
    /// guarded write, audited as one `run.progress` row. So if attempt k
    /// wrote `n_k` progress rows, it starts at `s_k = 1 + n_1 + … + n_(k-1)`,
    /// checkpointed pages `s_k .. s_k + n_k - 1`, and — if it was killed —
    /// may also have requested page `s_k + n_k` (in flight at the kill, its
    /// checkpoint never written), which attempt k+1 fetches again. Hence:
    /// every page is checkpointed exactly once (`Σ n_k` = pages), and
    /// page p is fetched at least once and at most
    /// `1 + #{killed attempts k : s_k + n_k = p}` times. A page fetched by
    /// a later attempt after its checkpoint was stored breaks the bound; so
    /// does any fetch by an attempt that resumes from the last page's
    /// checkpoint (`{"next": null, "done": true}`): nothing is left to fetch.
    pub(crate) fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let total: u32 = self.checkpointed_per_attempt.iter().sum();
        if total != self.pages {
            out.push(format!("{total} page checkpoints for {} pages", self.pages));
        }
        let mut allowed: BTreeMap<u32, u32> = (1..=self.pages).map(|p| (p, 1)).collect();
        let mut start = 1;
        let attempts = self.checkpointed_per_attempt.len();
        for (k, n) in self.checkpointed_per_attempt.iter().enumerate() {
            if k + 1 < attempts {
                *allowed.entry(start + n).or_default() += 1;
            }
            start += n;
        }
        for p in 1..=self.pages {
            let fetched = self.fetches.get(&p).copied().unwrap_or(0);
            let may = allowed.get(&p).copied().unwrap_or(0);
            if fetched == 0 || fetched > may {
                out.push(format!("page {p} fetched {fetched} times (allowed 1..={may})"));
            }
        }
        for p in self.fetches.keys().filter(|p| **p == 0 || **p > self.pages) {
            out.push(format!("page {p} does not exist but was fetched"));
        }
        if self.completes != 1 {
            out.push(format!("{} run.complete rows", self.completes));
        }
        out
    }
}
