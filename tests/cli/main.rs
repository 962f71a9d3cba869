//! The `oprun` binary on the embedded default: `up` with no config shows
//! succeeded runs and a blocked one with guidance; bad input exits 2 and
//! writes nothing; a refusal exits 3 and leaves an audit row.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod bench;
mod dispatch;
mod metrics;
mod operators;
mod startup;

const BIN: &str = env!("CARGO_BIN_EXE_oprun");

/// Run the binary; its stderr (log lines and messages) is echoed into this
/// test's captured output, which the test command's secret scan reads.
fn oprun(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("OPRUN_CONFIG")
        .env_remove("OPRUN_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run oprun");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Run `oprun args` in `dir`, expecting a usage error (exit 2, the case
/// named `what` on failure); its stderr.
fn usage_error(dir: &Path, args: &[&str], what: &str) -> String {
    let out = oprun(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    err
}

fn uuid_like() -> String {
    "01a20f3e-0000-7000-8000-000000000000".to_string()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn runs(dir: &Path) -> Vec<Value> {
    json(&oprun(dir, &["runs", "list", "--json", "--limit", "1000"])).as_array().cloned().unwrap_or_default()
}

/// Run the binary with the read end of its stdout already closed (what
/// `| head -3` does once it has its lines).
fn oprun_closed_stdout(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("OPRUN_CONFIG")
        .env_remove("OPRUN_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oprun");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for oprun");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// One SQL count on the embedded store of `dir`.
fn count(dir: &Path, sql: &str) -> i64 {
    let url = format!("sqlite://{}", dir.join("oprun.db").display());
    let sql = sql.to_string();
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn).await.unwrap()
    })
}
