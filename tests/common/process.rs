//! The `oprun` binary under test as a child process: its config file, where
//! its log goes, starting it, reaping it, waiting for it to exit.

use std::time::Duration;

use uuid::Uuid;

use super::{Env, binary_catalog, provider_token};

/// A config file for the `oprun` binary on this env's store (its queue), with a
/// `graph` provider at `provider_base` (its token in a file under `dir`).
pub fn binary_config(e: &Env, dir: &std::path::Path, provider_base: &str) -> String {
    config_with(&binary_catalog(), e, dir, provider_base)
}

/// As [`binary_config`] with the whole test catalog, for `oprun scheduler`
/// (which dispatches any operation and runs none).
pub fn scheduler_config(e: &Env, dir: &std::path::Path, provider_base: &str) -> String {
    config_with(super::CATALOG, e, dir, provider_base)
}

fn config_with(catalog: &str, e: &Env, dir: &std::path::Path, provider_base: &str) -> String {
    let token_file = dir.join("graph.token");
    if !token_file.exists() {
        std::fs::write(&token_file, provider_token("binary-config")).unwrap();
    }
    format!(
        "{catalog}\n[store]\nurl = \"{url}\"\nmax_connections = 4\n[queue]\npoll_interval = \"50ms\"\n\
         [worker]\nconcurrency = 2\nshutdown_grace = \"1s\"\n[api]\nenabled = false\n\
         [metrics]\nbind = \"127.0.0.1:0\"\n\
         [providers.graph]\nbase_url = \"{provider_base}\"\ntoken_file = \"{token}\"\n",
        url = e.db.url,
        token = token_file.display()
    )
}

/// Where a spawned process's log goes: a fresh file under
/// `OPRUN_TEST_LOG_DIR` (the test command sets it and scans it afterwards),
/// else `fallback`.
pub fn process_log(fallback: &std::path::Path, name: &str) -> std::path::PathBuf {
    match std::env::var_os("OPRUN_TEST_LOG_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("create OPRUN_TEST_LOG_DIR");
            dir.join(format!("{name}-{}.log", Uuid::now_v7().simple()))
        }
        _ => fallback.to_path_buf(),
    }
}

/// Start `oprun --config CFG ROLE` (the binary under test) with its stderr
/// appended to `log`, none of the environment's overrides inherited.
pub fn spawn_oprun(role: &str, cfg: &std::path::Path, log: &std::path::Path, rust_log: &str) -> std::process::Child {
    use std::process::{Command, Stdio};
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the process log");
    Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["--config", cfg.to_str().expect("a UTF-8 config path"), role])
        .env_remove("OPRUN_DATABASE_URL")
        .env_remove("OPRUN_CONFIG")
        .env("RUST_LOG", rust_log)
        // A metrics listener of its own (processes of a test run side by side).
        .env("OPRUN_METRICS_BIND", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap_or_else(|e| panic!("start oprun {role}: {e}"))
}

/// A child process killed when dropped still running (a failed assertion
/// leaves no process behind).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Wait (at most `secs`) for the process to exit; its status. Still
/// running then is a test failure (the process is SIGKILLed on drop).
pub async fn exit_within(child: &mut Reaped, secs: u64) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("the process was still running {secs} s after SIGTERM (SIGKILLed)");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
