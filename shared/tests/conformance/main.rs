//! The store conformance suite: every transition and every refusal of the
//! lifecycle table, run through `OperationRunService` against real Postgres
//! and a real SQLite file. Each case below runs once per backend.

mod at_scale;
mod audit;
mod cancel;
mod claim;
mod dispatch;
mod finish;
mod lease;
mod reads;
mod reconcile;
mod retry;
mod tx;

use std::sync::Arc;

use oprun_shared::testing::{Backend, TestStore};
use oprun_shared::{
    DispatchRequest, Initiator, Lease, ManualClock, OperationRunService, Scope, ServiceConfig, SourceSurface,
    SummaryCounts, testing,
};
use serde_json::json;

struct Env {
    svc: OperationRunService,
    clock: Arc<ManualClock>,
    db: TestStore,
}

async fn env(b: Backend) -> Env {
    env_with(b, ServiceConfig::default()).await
}

async fn env_with(b: Backend, config: ServiceConfig) -> Env {
    let db = TestStore::new(b).await;
    let clock = testing::clock();
    let svc = OperationRunService::new(db.store.clone(), testing::catalog(), clock.clone(), config);
    Env { svc, clock, db }
}

fn sync_req(env: &str) -> DispatchRequest {
    DispatchRequest {
        available_at: None,
        operation: "inventory.sync".into(),
        scope: Scope { workspace_id: "contoso".into(), environment_id: Some(env.into()), ..Scope::default() },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({"correlation_id": "c-1"}),
        params: json!({"page_size": 100}),
    }
}

fn counts(pairs: &[(&str, u64)]) -> SummaryCounts {
    let mut c = SummaryCounts::new();
    for (k, v) in pairs {
        c.add(k, *v).unwrap();
    }
    c
}

fn oncall() -> Initiator {
    Initiator::user("oncall-1")
}

/// The hold `worker` has on run `id` on the attempt the run is on now.
async fn lease(e: &Env, id: uuid::Uuid, worker: &str) -> Lease {
    Lease { run: id, worker: worker.into(), attempt: e.svc.get(id).await.unwrap().attempt }
}

async fn actions(e: &Env, id: uuid::Uuid) -> Vec<String> {
    e.svc.audit(id).await.unwrap().into_iter().map(|a| a.entry.action).collect()
}

macro_rules! conformance {
    ($($family:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        mod postgres {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$family::$case(super::Backend::Postgres).await;
                }
            )*)*
        }
        mod sqlite {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$family::$case(super::Backend::Sqlite).await;
                }
            )*)*
        }
    };
}

// Every case, by the file (transition family) that holds it; each runs once
// per backend as `postgres::<case>` and `sqlite::<case>`.
conformance!(
    at_scale: [
        every_new_filter_returns_exactly_the_matching_runs,
        prune_by_policy_keeps_what_must_be_kept,
        a_schedule_refused_tick_after_tick_keeps_one_blocked_run,
        ticks_settle_into_a_streak_and_pauses_are_stored,
        the_audit_log_reads_by_actor_action_and_time,
    ],
    dispatch: [
        dispatch_writes_a_queued_pending_run_with_its_audit_row,
        dispatch_of_an_active_scope_returns_the_existing_run_marked_deduplicated,
        twenty_concurrent_dispatches_of_one_scope_write_exactly_one_row,
        dispatch_after_the_active_run_completed_writes_a_new_run,
        an_operation_without_dedup_may_have_many_active_runs,
        bad_dispatches_are_refused_by_name_and_write_nothing,
        a_refused_dispatch_records_a_completed_blocked_run,
        scopes_whose_ids_contain_the_key_separator_do_not_share_a_dedup_key,
        dispatch_many_writes_every_run_with_its_audit_row_and_dedups_within_and_across_batches,
    ],
    lease: [
        claim_sets_the_lease_and_a_second_claim_is_an_invalid_transition,
        claiming_a_run_that_does_not_exist_is_not_found,
        claim_many_claims_only_the_runs_still_queued,
        heartbeat_and_progress_by_the_lease_owner_renew_the_lease_and_add_up_counts,
        anyone_but_the_lease_owner_gets_lease_lost,
        a_worker_whose_run_was_requeued_has_lost_its_lease,
        a_superseded_attempt_of_the_same_worker_writes_nothing,
        claim_batch_claims_queued_runs_and_says_why_it_did_not_claim_the_others,
    ],
    finish: [
        complete_ends_the_run_with_outcome_counts_and_sanitized_failures,
        complete_refuses_a_pending_outcome_and_a_failure_without_reason,
        block_ends_a_running_or_queued_run_blocked_with_its_reason,
        finish_batch_writes_each_outcome_in_one_commit_and_refuses_runs_it_does_not_hold,
    ],
    claim: [
        a_backlog_in_one_scope_does_not_delay_another_scopes_run,
        claims_take_turns_across_scopes,
        a_run_dispatched_for_later_is_claimed_only_when_its_time_comes,
        concurrent_claims_never_take_the_same_run,
        a_worker_leaves_runs_of_operations_its_catalog_does_not_serve,
    ],
    cancel: [
        cancel_ends_a_queued_run_at_once_and_asks_a_running_one_to_stop,
    ],
    reconcile: [
        a_stale_running_run_is_requeued_while_attempts_remain,
        a_stale_running_run_without_attempts_left_fails_with_lease_expired,
        a_stale_running_run_that_was_asked_to_cancel_ends_cancelled,
        a_queued_run_that_waits_long_is_left_queued_by_the_reconciler,
        a_dry_run_reconcile_changes_nothing_and_reports_what_it_would_do,
        reconcile_pages_through_more_runs_than_one_page_and_honours_filters,
        two_concurrent_reconcilers_move_each_run_exactly_once,
    ],
    retry: [
        retry_creates_a_linked_queued_run_and_a_second_retry_returns_it,
        retry_is_refused_for_active_succeeded_and_non_retryable_runs,
    ],
    tx: [
        a_dispatch_in_the_callers_transaction_exists_only_if_it_commits,
    ],
    reads: [
        list_filters_by_visibility_status_outcome_and_pages_by_cursor,
        counts_group_by_workspace_status_and_outcome_within_the_filter,
    ],
    audit: [
        every_guarded_write_audits_each_run_as_it_was_written,
    ],
);

/// Test-only convenience: the manual clock's current time.
trait NowForTest {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc>;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc> {
        oprun_shared::Clock::now(self)
    }
}
