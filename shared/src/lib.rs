#![doc = include_str!("../README.md")]

pub mod access;
mod audit;
mod catalog;
mod clock;
pub mod config;
mod counts;
mod guidance;
mod lifecycle;
mod queue;
mod reason;
pub mod redact;
mod run;
mod service;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod ticks;
mod tokens;
pub mod view;
mod viewer;

pub use access::{AccessFile, AccessStore, Authorizer, Decision};
pub use audit::{AuditEntry, AuditEvent};
pub use catalog::{
    Catalog, CatalogError, DedupPolicy, OperationSpec, RetryPolicy, ScopeKind, defaults as catalog_defaults,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use counts::{COUNT_KEYS, CountsError, SummaryCounts};
pub use guidance::{
    Action, ActionKind, CaseScope, CaseStatus, GuidanceContext, ResolutionCase, ScopeType, Severity, SourceRef,
    SourceRelation, TechnicalDetails, guidance,
};
pub use lifecycle::{ActorKind, ParseEnumError, RunOutcome, RunStatus, SourceSurface, Transition, TransitionError};
pub use queue::{JobQueue, QueueError};
pub use reason::{Envelope, NextStep, ReasonCode, Retryability, required_capability, translate};
pub use run::{FailureEntry, Initiator, MAX_FAILURE_ENTRIES, OperationRun, Scope};
pub use service::{
    AttemptEnd, BlockFrom, Cancelled, Claim, Completion, DispatchRequest, Dispatched, Finish, Later, Lease, LeaseState,
    OperationRunService, PRUNE_ACTION, PruneReport, ReconcileAction, ReconcileFilter, ReconcileKind, ReconcileReport,
    RetentionPolicy, ServiceConfig, ServiceError,
};
pub use store::{
    AuditFilter, ClaimedReady, Database, InitiatorFilter, PrunedPage, ReadyClaim, RunCount, RunFilter, RunStore,
    StaleRun, StoreError, Update, Wakeups, Written,
};
pub use ticks::{ScheduleState, Settlement, TickDecision, TickRecord, TickStore};
pub use tokens::TokenStore;
pub use view::{RunDetail, RunView, run_detail};
pub use viewer::{
    ACCESS_MANAGE, AUDIT_VIEW, METRICS_VIEW, RUNS_CANCEL, RUNS_RECONCILE, RUNS_RETRY, RUNS_VIEW, SCHEDULES_MANAGE,
    Viewer,
};
