//! Logs and secrets for the closing scan (scripts/scan-secrets.sh): this test
//! process's log subscriber and capture, the marker in every provider token a
//! test hands out, and every stored row as text for searching.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Env, Stack};

/// What the in-process servers (API, worker, scheduler) log in a test, unless
/// `RUST_LOG` says otherwise: the binary's default with this workspace's
/// crates at debug.
pub const TEST_LOG_FILTER: &str =
    "info,sqlx=warn,oprun=debug,oprun_shared=debug,oprun_worker=debug,oprun_scheduler=debug";

/// This test process's log subscriber: every line (filtered by
/// [`TEST_LOG_FILTER`]) to the test's captured stdout, which nextest keeps in
/// its JUnit report for the closing secret scan (scripts/scan-secrets.sh);
/// and, once [`capture_logs`] is called, every debug line into its buffer.
struct TestLogs {
    buf: Arc<std::sync::Mutex<String>>,
    capturing: Arc<std::sync::atomic::AtomicBool>,
}

fn test_logs() -> &'static TestLogs {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, dynamic_filter_fn};
    use tracing_subscriber::prelude::*;
    static LOGS: std::sync::OnceLock<TestLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(String::new()));
        let capturing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(TEST_LOG_FILTER));
        let to_stdout = tracing_subscriber::fmt::layer().with_ansi(false).with_test_writer().with_filter(filter);
        let (sink, on) = (buf.clone(), capturing.clone());
        let when_capturing =
            dynamic_filter_fn(move |m, _| on.load(Ordering::SeqCst) && *m.level() <= tracing::Level::DEBUG)
                .with_max_level_hint(LevelFilter::DEBUG);
        let to_buf = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .with_filter(when_capturing);
        let _ = tracing_subscriber::registry().with(to_stdout).with(to_buf).try_init();
        TestLogs { buf, capturing }
    })
}

/// Send this test process's log lines to its captured output (every [`Env`]
/// does; idempotent).
pub fn init_logs() {
    test_logs();
}

/// Capture every log line of this test process (tests run one per process
/// under nextest) into a buffer, from now on; they still reach the test's
/// output too.
pub fn capture_logs() -> Arc<std::sync::Mutex<String>> {
    let logs = test_logs();
    logs.capturing.store(true, Ordering::SeqCst);
    logs.buf.clone()
}

struct LogSink(Arc<std::sync::Mutex<String>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every provider token a test hands out contains this marker, so that the
/// scan after the whole suite finds any that reached a table, the queue or a
/// log line.
pub const SECRET_MARK: &str = "oprun-canary";

/// A provider token for a test: `tok-oprun-canary-NAME`.
pub fn provider_token(name: &str) -> String {
    format!("tok-{SECRET_MARK}-{name}")
}

/// Every row of every table as text (Postgres), or the database files
/// themselves (SQLite), for searching.
pub async fn dump_tables(e: &Env) -> String {
    match e.stack {
        Stack::Sqlite => {
            let path = e.db.url.trim_start_matches("sqlite://").to_string();
            let mut out = String::new();
            for suffix in ["", "-wal"] {
                if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            out
        }
        Stack::PostgresRedis => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&e.db.url).await.unwrap();
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap();
            let mut out = String::new();
            for t in tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM \"{t}\" t")))
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                out.push_str(&rows.join("\n"));
            }
            out
        }
    }
}
