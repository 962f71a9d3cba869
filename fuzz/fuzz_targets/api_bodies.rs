//! What the operator HTTP API makes of request input (`scheduler/src/api/input.rs`):
//! the JSON body of `POST /v1/reconcile`, the empty body of retry and cancel
//! (both through the handlers' `body_json`), the query string of
//! `GET /v1/runs` (axum's `Query` extractor, then the filter checks) and a
//! `{id}` path segment. Every input goes through all of them. Any input must
//! be parsed or refused with an `ApiError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oprun_scheduler::api::{parse_empty_body, parse_list_query, parse_reconcile_body, parse_run_id};

fuzz_target!(|data: &[u8]| {
    let _ = parse_reconcile_body(data);
    let _ = parse_empty_body(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_list_query(text);
    let _ = parse_run_id(text);
});
