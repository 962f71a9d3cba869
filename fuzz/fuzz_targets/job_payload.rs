//! What a worker does with a raw queue payload (`worker/src/runner/`,
//! `Runner::handle_job`): the queue's bytes decoded as JSON, then only
//! `run_id` read as a `JobPayload`; a payload that does not decode is
//! sanitized and excerpted for the warning log line. Any input must be
//! decoded or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oprun_shared::{JobPayload, redact};

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Err(e) = serde_json::from_value::<JobPayload>(payload.clone()) {
        let shown = redact::excerpt(&redact::sanitize(&payload.to_string()), 120);
        let _ = (shown, e.to_string());
    }
});
