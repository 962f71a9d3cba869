//! The end-to-end harness: a real store (Postgres or a SQLite file), a real
//! queue (Redis, or apalis-sqlite in the same file), the real worker loop and
//! a test operation that counts its own invocations.

#![allow(dead_code)]

mod catalog;
mod env;
mod logs;
mod process;

// Each test binary uses its own share of these (as with `dead_code` above).
#[allow(unused_imports)]
pub use catalog::{ACCESS, CATALOG, access, binary_catalog, catalog};
#[allow(unused_imports)]
pub use env::{Counting, Env, WorkerHandle, prod_request, reconcile_later, test_queue_config, test_store_at};
#[allow(unused_imports)]
pub use logs::{SECRET_MARK, TEST_LOG_FILTER, capture_logs, dump_tables, init_logs, provider_token};
#[allow(unused_imports)]
pub use process::{Reaped, binary_config, exit_within, process_log, scheduler_config, spawn_oprun};

/// Which stack a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Production: Postgres runs + Redis queue.
    PostgresRedis,
    /// Embedded: one SQLite file for runs and queue.
    Sqlite,
}

/// Run each case once per stack, as `postgres_redis::<case>` and
/// `sqlite::<case>`. The cases are the root module's functions, or, written
/// `family: [cases]`, the functions of the root's module `family`.
#[macro_export]
macro_rules! both_stacks {
    ($($family:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        mod postgres_redis {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$family::$case(super::Stack::PostgresRedis).await;
                }
            )*)*
        }
        mod sqlite {
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$family::$case(super::Stack::Sqlite).await;
                }
            )*)*
        }
    };
    ($($case:ident),* $(,)?) => {
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Stack::PostgresRedis).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::Stack::Sqlite).await;
                }
            )*
        }
    };
}
