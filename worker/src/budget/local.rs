//! The budgets of one process: what the shared ones do, in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{BudgetKey, GiveBack, Limits, Permit, Take, Time, span, until};

/// One budget's state.
#[derive(Debug)]
struct State {
    in_use: u32,
    blocked_until: Option<DateTime<Utc>>,
    tokens: f64,
    refilled: DateTime<Utc>,
}

/// The in-process budgets (the embedded default, and the fallback while
/// Redis does not answer).
#[derive(Debug, Default)]
pub struct LocalBudgets {
    time: Time,
    states: Mutex<HashMap<BudgetKey, State>>,
}

impl LocalBudgets {
    pub(super) fn new(time: Time) -> Self {
        Self { time, states: Mutex::default() }
    }

    fn with<T>(&self, key: &BudgetKey, f: impl FnOnce(&mut State, DateTime<Utc>) -> T) -> T {
        let now = self.time.now();
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let state =
            map.entry(key.clone()).or_insert(State { in_use: 0, blocked_until: None, tokens: f64::NAN, refilled: now });
        f(state, now)
    }

    pub(super) fn take(&self, me: &Arc<Self>, key: &BudgetKey, limits: &Limits) -> Take {
        self.with(key, |s, now| {
            if let Some(until_t) = s.blocked_until {
                if until_t > now {
                    return Take::Blocked { remaining: until(now, until_t) };
                }
                s.blocked_until = None;
            }
            if let Some(n) = limits.concurrency
                && s.in_use >= n
            {
                // Permits here are given back when their request ends; the
                // lease bounds the wait only for the shared budgets.
                return Take::Full { retry_in: limits.lease };
            }
            if let Some(rate) = limits.per_second.filter(|r| *r > 0.0) {
                let burst = rate.max(1.0);
                if s.tokens.is_nan() {
                    s.tokens = burst;
                }
                s.tokens = (s.tokens + until(s.refilled, now).as_secs_f64() * rate).min(burst);
                s.refilled = now;
                if s.tokens < 1.0 {
                    return Take::Paced { retry_in: Duration::from_secs_f64((1.0 - s.tokens) / rate) };
                }
                s.tokens -= 1.0;
            }
            if limits.concurrency.is_some() {
                s.in_use += 1;
                Take::Granted(Permit::with(GiveBack::Local(me.clone(), key.clone())))
            } else {
                Take::Granted(Permit::free())
            }
        })
    }

    pub(super) fn give_back(&self, key: &BudgetKey) {
        self.with(key, |s, _| s.in_use = s.in_use.saturating_sub(1));
    }

    pub(super) fn block(&self, key: &BudgetKey, for_: Duration) {
        self.with(key, |s, now| {
            let then = now + span(for_);
            s.blocked_until = Some(s.blocked_until.map_or(then, |u| u.max(then)));
        });
    }

    #[cfg(test)]
    fn in_use(&self, key: &BudgetKey) -> u32 {
        self.with(key, |s, _| s.in_use)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(env: &str) -> BudgetKey {
        BudgetKey::new("graph", Some(env))
    }

    fn limits(concurrency: Option<u32>, per_second: Option<f64>) -> Limits {
        Limits { concurrency, per_second, lease: Duration::from_secs(30) }
    }

    #[test]
    fn a_concurrency_limit_gives_permits_until_full_and_a_dropped_permit_comes_back() {
        let b = Arc::new(LocalBudgets::default());
        let l = limits(Some(2), None);
        let one = b.take(&b, &key("a"), &l);
        let two = b.take(&b, &key("a"), &l);
        assert!(matches!(one, Take::Granted(_)) && matches!(two, Take::Granted(_)));
        assert!(matches!(b.take(&b, &key("a"), &l), Take::Full { .. }), "a third is refused");
        assert!(matches!(b.take(&b, &key("b"), &l), Take::Granted(_)), "another environment has its own");
        assert_eq!(b.in_use(&key("a")), 2);
        drop(one);
        assert_eq!(b.in_use(&key("a")), 1);
        assert!(matches!(b.take(&b, &key("a"), &l), Take::Granted(_)), "the permit came back");
    }

    #[test]
    fn a_block_refuses_every_request_for_its_time_and_only_on_its_budget() {
        let b = Arc::new(LocalBudgets::default());
        let l = limits(None, None);
        b.block(&key("a"), Duration::from_secs(5));
        b.block(&key("a"), Duration::from_secs(1));
        match b.take(&b, &key("a"), &l) {
            Take::Blocked { remaining } => {
                assert!(remaining > Duration::from_secs(4), "a shorter block does not shorten it")
            }
            other => panic!("blocked, not {other:?}"),
        }
        assert!(matches!(b.take(&b, &key("b"), &l), Take::Granted(_)));
        b.block(&key("c"), Duration::ZERO);
        assert!(matches!(b.take(&b, &key("c"), &l), Take::Granted(_)), "a block that has passed is gone");
    }

    #[test]
    fn a_rate_allows_its_burst_then_paces() {
        let b = Arc::new(LocalBudgets::default());
        let l = limits(None, Some(3.0));
        for i in 0..3 {
            assert!(matches!(b.take(&b, &key("a"), &l), Take::Granted(_)), "request {i} of the burst");
        }
        match b.take(&b, &key("a"), &l) {
            Take::Paced { retry_in } => assert!(retry_in <= Duration::from_millis(334) && !retry_in.is_zero()),
            other => panic!("paced, not {other:?}"),
        }
    }
}
