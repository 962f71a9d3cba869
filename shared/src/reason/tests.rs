use super::*;
use crate::viewer::{RUNS_VIEW, Viewer};

fn admin() -> Viewer {
    Viewer::new("ada", ["runs.view", "runs.retry", "access.manage", "inventory.sync"])
}

fn plain() -> Viewer {
    Viewer::new("bob", ["runs.view"])
}

#[test]
fn every_code_translates_for_an_admin_and_a_plain_viewer() {
    for &code in ReasonCode::ALL {
        for viewer in [admin(), plain()] {
            let env = translate(code.as_str(), &viewer);
            assert_eq!(env.code, code.as_str());
            assert!(env.known);
            assert!(!env.label.is_empty(), "{code}: empty label");
            assert!(!env.explanation.is_empty(), "{code}: empty explanation");
            assert_eq!(env.retryability, code.retryability());
            assert!(env.next_step.is_some() != env.no_action_needed, "{code}: exactly one of next step / no action");
            if let Some(step) = &env.next_step {
                assert!(!step.label.is_empty(), "{code}: empty step label");
                if let Some(cap) = required_capability(&step.key) {
                    assert!(viewer.can(cap), "{code}: {} offered {} needing {cap}", viewer.actor_id, step.key);
                }
            }
        }
    }
}

#[test]
fn plain_viewer_is_sent_to_an_admin_for_access_remedies() {
    for code in [
        ReasonCode::ExecutionCapabilityMissing,
        ReasonCode::ExecutionActorDisabled,
        ReasonCode::ExecutionScopeChanged,
        ReasonCode::ProviderThrottled,
    ] {
        let step = translate(code.as_str(), &plain()).next_step.unwrap();
        assert_eq!(step.key, STEP_CONTACT_ADMIN, "{code}");
        assert!(step.label.starts_with("Ask a workspace admin to "), "{code}: {}", step.label);
        let step = translate(code.as_str(), &admin()).next_step.unwrap();
        assert_ne!(step.key, STEP_CONTACT_ADMIN, "{code}");
    }
    let step = translate("execution.capability_missing", &admin()).next_step.unwrap();
    assert_eq!(step.key, STEP_GRANT_CAPABILITY);
    let step = translate("provider.timeout", &admin()).next_step.unwrap();
    assert_eq!(step.key, STEP_RETRY);
}

#[test]
fn cancelled_needs_no_action() {
    let env = translate("run.cancelled_by_operator", &admin());
    assert!(env.no_action_needed);
    assert_eq!(env.next_step, None);
    assert_eq!(env.retryability, Retryability::NotRetryable);
}

#[test]
fn codes_round_trip_through_text() {
    for &code in ReasonCode::ALL {
        assert_eq!(code.as_str().parse::<ReasonCode>(), Ok(code));
        assert_eq!(code.to_string(), code.as_str());
        let json = serde_json::to_value(code).unwrap();
        assert_eq!(json, serde_json::json!(code.as_str()));
        assert_eq!(serde_json::from_value::<ReasonCode>(json).unwrap(), code);
    }
    assert_eq!(ReasonCode::ALL.len(), 25);
}

#[test]
fn parsing_an_unknown_code_names_the_value() {
    let err = "provider.exploded".parse::<ReasonCode>().unwrap_err();
    assert_eq!(err.value, "provider.exploded");
    assert_eq!(err.kind, "reason code");
    assert!(err.to_string().contains("provider.exploded"), "{err}");
    assert!(err.to_string().contains("run.lease_expired"), "{err}");
}

#[test]
fn unknown_code_gets_a_readable_fallback_carrying_the_raw_code() {
    for viewer in [admin(), plain(), Viewer::new("eve", Vec::<String>::new())] {
        let env = translate("vendor.quota_exceeded", &viewer);
        assert_eq!(env.code, "vendor.quota_exceeded");
        assert!(!env.known);
        assert_eq!(env.label, UNRECOGNISED_LABEL);
        assert!(env.explanation.contains("vendor.quota_exceeded"), "{}", env.explanation);
        assert_eq!(env.retryability, Retryability::RetryAfterFix);
        assert!(!env.no_action_needed);
        let step = env.next_step.unwrap();
        if viewer.can(RUNS_VIEW) {
            assert_eq!(step.key, STEP_REVIEW_DETAILS);
        } else {
            assert_eq!(step.key, STEP_CONTACT_ADMIN);
        }
    }
}

#[test]
fn transient_codes_are_retryable_now() {
    for &code in ReasonCode::ALL {
        if code.is_transient() {
            assert_eq!(code.retryability(), Retryability::RetryNow, "{code}");
        }
    }
    assert!(ReasonCode::ProviderThrottled.is_transient());
    assert!(!ReasonCode::ProviderAuthFailed.is_transient());
}

#[test]
fn retryability_serializes_in_snake_case() {
    assert_eq!(serde_json::to_value(Retryability::RetryAfterFix).unwrap(), serde_json::json!("retry_after_fix"));
    assert_eq!(serde_json::to_value(Retryability::RetryNow).unwrap(), serde_json::json!("retry_now"));
    assert_eq!(serde_json::to_value(Retryability::NotRetryable).unwrap(), serde_json::json!("not_retryable"));
}
