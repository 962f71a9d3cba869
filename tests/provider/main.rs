//! Provider work against a real local HTTP server (an axum fixture standing in
//! for the provider): paging, throttling, retry classification, redaction,
//! partial success, cancellation, the concurrency limit, and resume after a
//! SIGKILL.

#[path = "../common/mod.rs"]
mod common;

mod budgets;
mod fixture;
mod limits;
mod over_time;
mod paging;
mod requests;
mod retries;

use oprun_scheduler::DispatchOutcome;
use oprun_shared::{DispatchRequest, Initiator, OperationRun, Scope, SourceSurface};
use serde_json::{Value, json};

use common::{Env, Stack};
use fixture::Provider;
use oprun_worker::http::Providers;

/// A run of `op` in `env` of workspace `contoso`, by the operator.
fn request(op: &str, env: &str, params: Value) -> DispatchRequest {
    DispatchRequest {
        available_at: None,
        operation: op.into(),
        scope: Scope { workspace_id: "contoso".into(), environment_id: Some(env.into()), ..Scope::default() },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params,
    }
}

async fn dispatch(e: &Env, op: &str, env: &str, params: Value) -> OperationRun {
    match e.dispatcher.dispatch(request(op, env, params)).await.unwrap() {
        DispatchOutcome::Dispatched { run, .. } => *run,
        other => panic!("{other:?}"),
    }
}

async fn run_one(e: &Env, p: &Provider, op: &str) -> OperationRun {
    run_on(e, &p.providers, op, json!({"note": "hello"})).await
}

/// Dispatch `op` on contoso-prod with `params` and run it to its end on one
/// worker over `providers`.
async fn run_on(e: &Env, providers: &Providers, op: &str, params: Value) -> OperationRun {
    let run = dispatch(e, op, "contoso-prod", params).await;
    let worker = e.start_worker(e.http_runner("w1", providers));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    done
}

const PAGE_1: &str = "/coll/contoso-prod?page=1";

/// The operator's next step for a failed run.
async fn primary_action(e: &Env, run: &OperationRun) -> String {
    let op = oprun_scheduler::Operator::new(e.dispatcher.clone());
    op.reads().show("ops-user-1", run.id).await.unwrap().guidance.primary_action.key
}

both_stacks!(
    paging: [
        a_three_page_collection_succeeds_with_its_counts,
        items_marked_failed_make_the_run_partially_succeeded,
        a_cancel_request_stops_a_slow_collection_at_a_page_boundary,
        a_killed_worker_resumes_the_collection_from_its_checkpoint,
        a_requeued_collection_whose_last_page_was_checkpointed_fetches_nothing_again,
        signed_next_links_are_checkpointed_without_their_secrets_and_still_resume,
        a_next_link_with_an_absolute_path_is_resolved_against_the_origin,
    ],
    retries: [
        transient_failures_are_retried_within_the_budget,
        permanent_failures_are_classified_without_retry,
        bad_gateway_and_gateway_timeout_are_retried_within_the_budget_then_unavailable,
        a_request_timeout_is_retried_within_the_budget_then_provider_timeout,
        a_refused_connection_is_retried_within_the_budget_then_unavailable,
    ],
    over_time: [
        transient_failures_retry_over_time_until_the_run_succeeds,
        exhausted_attempts_fail_with_each_attempt_and_a_permanent_failure_never_retries,
        a_retry_after_beyond_the_cap_snoozes_the_run_without_holding_a_slot,
        a_handler_snoozes_twice_then_succeeds_on_its_first_attempt,
        a_delayed_dispatch_is_claimed_only_when_its_time_comes,
        an_operator_retries_a_waiting_run_now_or_cancels_it,
        a_waiting_run_holds_its_scope_and_the_reconciler_leaves_it_alone,
    ],
    limits: [
        the_provider_concurrency_limit_holds_under_fifty_runs,
        concurrency_per_environment_caps_each_environment_within_a_worker,
        an_oversized_response_body_is_a_bad_response,
        a_failure_message_keeps_at_most_a_200_character_excerpt_of_the_body,
    ],
    requests: [
        http_call_sends_the_params_and_classifies_the_answer,
        a_dot_segment_id_is_refused_before_any_request,
        an_echoed_token_reaches_no_table_and_no_log_line,
    ],
);
