//! Throttle budgets: one per (provider, environment), shared by every worker
//! process through Redis, or kept in this process when there is no Redis
//! (the embedded default) or while Redis cannot be reached.
//!
//! A budget has up to three parts, all taken together before a request:
//! - a **concurrency limit**: permits are leases with an expiry (a dead
//!   worker's permits come back by themselves), given back when the request
//!   ends;
//! - a **rate** (a token bucket: `per_second`, with a burst of as many);
//! - a **block**: a provider's 429/503 with Retry-After marks the budget
//!   blocked for that long, for every worker; nothing is sent meanwhile.
//!
//! Redis is not the truth: nothing durable lives there. If Redis is lost or
//! restarted, budgets start again empty (in-flight permits are forgotten,
//! so for at most one request's time a budget may be exceeded), and while
//! Redis does not answer each process keeps its own budgets (logged once,
//! and once more when Redis answers again).
//!
//! Every wait is a duration measured by the budget's own clock (Redis's
//! `TIME`, or this process's: the worker's clock), never an instant compared
//! across machines.
//!
//! Files: `local.rs` (the in-process budgets), `shared.rs` (Redis: one Lua
//! script takes a permit, a token and checks the block atomically).

mod local;
mod shared;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use oprun_shared::Clock;
use oprun_shared::config::MAX_DURATION;
use tracing::{info, warn};

pub use self::local::LocalBudgets;
pub use self::shared::RedisBudgets;

/// The environment variable that names the Redis server of the shared
/// budgets (overrides `budgets.redis_url`).
pub const REDIS_URL_VAR: &str = "OPRUN_REDIS_URL";

/// How long a worker keeps an environment out of its claims after it found
/// the budget full (a permit given back in this process ends it sooner).
const FULL_MARK: Duration = Duration::from_millis(250);

/// One budget: a provider and the environment (tenant) its requests are
/// for. Requests of runs without an environment share the provider's own
/// (`environment` empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetKey {
    /// The provider's name in the config.
    pub provider: String,
    /// The managed environment (empty for runs without one).
    pub environment: String,
}

impl BudgetKey {
    /// The budget of `provider` for `environment`.
    pub fn new(provider: &str, environment: Option<&str>) -> Self {
        Self { provider: provider.into(), environment: environment.unwrap_or("").into() }
    }
}

impl std::fmt::Display for BudgetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.environment.is_empty() {
            write!(f, "provider '{}'", self.provider)
        } else {
            write!(f, "provider '{}' for environment '{}'", self.provider, self.environment)
        }
    }
}

/// What a budget allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests in flight at once (`None`: no limit).
    pub concurrency: Option<u32>,
    /// Requests per second, with a burst of as many (`None`: no rate).
    pub per_second: Option<f64>,
    /// How long a permit lives if it is never given back (a dead worker's).
    pub lease: Duration,
}

/// What a budget said to a request.
#[derive(Debug)]
pub enum Take {
    /// Go: the permit is held until dropped.
    Granted(Permit),
    /// Every permit is in use; one may come back within `retry_in` at most.
    Full {
        /// An upper bound of the wait (the earliest lease expiry).
        retry_in: Duration,
    },
    /// The rate allows the next request in `retry_in`.
    Paced {
        /// When the next token comes.
        retry_in: Duration,
    },
    /// The provider asked every request to wait: blocked for `remaining`.
    Blocked {
        /// How long the block still lasts.
        remaining: Duration,
    },
}

/// A permit of a budget's concurrency limit, given back when dropped.
#[derive(Debug, Default)]
pub struct Permit {
    backs: Vec<GiveBack>,
}

#[derive(Debug)]
enum GiveBack {
    Local(Arc<LocalBudgets>, BudgetKey),
    Shared(RedisBudgets, BudgetKey, String),
    Mark(Arc<Marks>, BudgetKey),
}

impl Permit {
    /// A permit with nothing to give back (the budget has no concurrency limit).
    pub(crate) fn free() -> Self {
        Self::default()
    }

    fn with(back: GiveBack) -> Self {
        Self { backs: vec![back] }
    }

    fn and(mut self, back: GiveBack) -> Self {
        self.backs.push(back);
        self
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        for back in self.backs.drain(..) {
            match back {
                GiveBack::Local(budgets, key) => budgets.give_back(&key),
                GiveBack::Shared(redis, key, id) => redis.give_back_soon(key, id),
                GiveBack::Mark(marks, key) => marks.clear(&key),
            }
        }
    }
}

/// The time of the in-process budgets: the worker's clock when it is given
/// one (tests on a manual clock), the system's otherwise.
#[derive(Debug, Clone, Default)]
pub(crate) struct Time(Option<Arc<dyn Clock>>);

impl Time {
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.0.as_ref().map_or_else(Utc::now, |c| c.now())
    }
}

/// `d` as a chrono duration, at most [`MAX_DURATION`] (a year: as long as a
/// snooze waits at most).
pub(crate) fn span(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d.min(MAX_DURATION)).unwrap_or(chrono::TimeDelta::MAX)
}

/// How long from `now` until `then` (zero when past).
pub(crate) fn until(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (then - now).to_std().unwrap_or(Duration::ZERO)
}

/// The budgets this process knows to have no room now: claims leave their
/// runs alone until the mark passes.
#[derive(Debug, Default)]
struct Marks {
    time: Time,
    until: Mutex<HashMap<BudgetKey, DateTime<Utc>>>,
}

impl Marks {
    fn mark(&self, key: &BudgetKey, for_: Duration) {
        let until = self.time.now() + span(for_);
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let e = map.entry(key.clone()).or_insert(until);
        *e = (*e).max(until);
    }

    /// A permit of `key` came back in this process: there is room again
    /// (unless the provider blocked it, which [`Budgets::block`] marks anew).
    fn clear(&self, key: &BudgetKey) {
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.time.now();
        if map.get(key).is_some_and(|t| until(now, *t) <= FULL_MARK) {
            map.remove(key);
        }
    }

    fn live(&self) -> Vec<BudgetKey> {
        let now = self.time.now();
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, until| *until > now);
        map.keys().cloned().collect()
    }
}

/// Every budget of this worker process: shared through Redis when one is
/// configured, in process otherwise (and while Redis is unreachable).
#[derive(Debug, Clone)]
pub struct Budgets {
    local: Arc<LocalBudgets>,
    shared: Option<RedisBudgets>,
    marks: Arc<Marks>,
    /// Whether Redis failed last time (so that it is logged once).
    down: Arc<AtomicBool>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self::in_process()
    }
}

impl Budgets {
    /// Budgets kept in this process only.
    pub fn in_process() -> Self {
        Self::in_process_at(Time::default())
    }

    /// Budgets kept in this process only, on `clock` (a worker on a manual
    /// clock: a block ends when that clock passes it).
    pub fn in_process_on(clock: Arc<dyn Clock>) -> Self {
        Self::in_process_at(Time(Some(clock)))
    }

    fn in_process_at(time: Time) -> Self {
        Self {
            local: Arc::new(LocalBudgets::new(time.clone())),
            shared: None,
            marks: Arc::new(Marks { time, until: Mutex::default() }),
            down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The budgets `[budgets]` configures: shared through its Redis, or in
    /// process without one.
    pub fn from_config(cfg: &crate::config::BudgetsConfig) -> Result<Self, String> {
        match &cfg.redis_url {
            Some(url) => Self::shared(url),
            None => Ok(Self::in_process()),
        }
    }

    /// Budgets shared through the Redis server at `url` (connected lazily:
    /// a Redis that is down at start-up only means in-process budgets until
    /// it answers). A URL that does not parse is an error naming it, without
    /// its password.
    pub fn shared(url: &str) -> Result<Self, String> {
        Ok(Self { shared: Some(RedisBudgets::connect(url)?), ..Self::in_process() })
    }

    /// Whether the budgets are shared across processes.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Ask `key`'s budget for one request.
    pub async fn take(&self, key: &BudgetKey, limits: &Limits) -> Take {
        let take = match &self.shared {
            Some(redis) => match redis.take(key, limits).await {
                Ok(take) => {
                    if self.down.swap(false, Ordering::Relaxed) {
                        info!("throttle budgets: Redis answers again; budgets are shared across workers again");
                    }
                    take
                }
                Err(e) => {
                    if !self.down.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, "throttle budgets: Redis does not answer; each worker keeps its own budgets until it does");
                    }
                    self.local.take(&self.local, key, limits)
                }
            },
            None => self.local.take(&self.local, key, limits),
        };
        match take {
            Take::Granted(permit) if limits.concurrency.is_some() => {
                // Giving a permit back also ends this process's mark.
                Take::Granted(permit.and(GiveBack::Mark(self.marks.clone(), key.clone())))
            }
            Take::Granted(permit) => Take::Granted(permit),
            Take::Full { retry_in } => {
                self.marks.mark(key, FULL_MARK.min(retry_in.max(Duration::from_millis(10))));
                Take::Full { retry_in }
            }
            Take::Blocked { remaining } => {
                self.marks.mark(key, remaining);
                Take::Blocked { remaining }
            }
            paced => paced,
        }
    }

    /// Block `key` for `for_` (a provider's Retry-After): no worker sends a
    /// request on it until then.
    pub async fn block(&self, key: &BudgetKey, for_: Duration) {
        let for_ = for_.min(MAX_DURATION);
        self.marks.mark(key, for_);
        self.local.block(key, for_);
        if let Some(redis) = &self.shared
            && let Err(e) = redis.block(key, for_).await
            && !self.down.swap(true, Ordering::Relaxed)
        {
            warn!(error = %e, "throttle budgets: Redis does not answer; each worker keeps its own budgets until it does");
        }
    }

    /// The budgets this process knows to have no room now (blocked, or
    /// found full a moment ago): a worker does not claim their runs.
    pub fn saturated(&self) -> Vec<BudgetKey> {
        self.marks.live()
    }
}
