//! The dashboard in a real browser: Chromium driven over WebDriver
//! (chromedriver, both from Debian's packages, installed by the test
//! command) against a real `oprun up` on the bundled demo. Each page is saved
//! as a 1280×800 screenshot under `OPRUN_TEST_LOG_DIR/screenshots` (the
//! test command copies them to `target/ui-screenshots`).

mod pages;
mod reconcile;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_oprun");

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A process killed when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Where a process's log goes (the test command scans the directory).
fn log_file(dir: &Path, name: &str) -> std::fs::File {
    let root = std::env::var_os("OPRUN_TEST_LOG_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| dir.to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&root).expect("the log directory");
    let path = root.join(format!("ui-{name}-{}.log", uuid::Uuid::now_v7().simple()));
    std::fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// `oprun ARGS` in `dir` (its own `./oprun.db` or `--config`), stderr echoed
/// into the test's output.
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

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "oprun failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// A running `oprun up` serving the API and the dashboard on its own port.
struct Up {
    _child: Reaped,
    base: String,
}

impl Up {
    /// `oprun up` in `dir` (`config`: its `--config`, else the bundled demo).
    async fn start(dir: &Path, config: Option<&str>) -> Self {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        if let Some(c) = config {
            cmd.args(["--config", c]);
        }
        let child = cmd
            .arg("up")
            .current_dir(dir)
            .env_remove("OPRUN_CONFIG")
            .env_remove("OPRUN_DATABASE_URL")
            .env("OPRUN_API_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file(dir, "up")))
            .spawn()
            .expect("start oprun up");
        let mut child = Reaped(child);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("oprun up exited at start ({status}); its log is under OPRUN_TEST_LOG_DIR");
            }
            if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "oprun up did not answer /healthz within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Self { _child: child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A new API token for `actor` (the store in `dir`, or `config`'s).
fn token(dir: &Path, config: Option<&str>, actor: &str) -> String {
    let mut args = vec![];
    if let Some(c) = config {
        args.extend(["--config", c]);
    }
    args.extend(["token", "create", "--actor", actor, "--json"]);
    json_of(&oprun(dir, &args))["token"].as_str().expect("a token").to_string()
}

/// Chromium under chromedriver, headless at 1280×800.
struct Browser {
    client: Client,
    _driver: Reaped,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

/// Where screenshots go.
fn screenshot_dir() -> PathBuf {
    let root = std::env::var_os("OPRUN_TEST_LOG_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    root.join("screenshots")
}

impl Browser {
    async fn start() -> Self {
        let driver = which("chromedriver");
        let chromium = which("chromium");
        let port = free_port();
        let child = Command::new(&driver)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let driver_proc = Reaped(child);
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--hide-scrollbars", "--lang=en-GB",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("waiting for chromedriver: {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => panic!("no WebDriver session from chromedriver at {url}: {e}"),
            }
        };
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots).expect("the screenshot directory");
        let browser = Self { client, _driver: driver_proc, _profile: profile, shots };
        browser.goto("about:blank").await;
        browser.viewport(1280, 800).await;
        browser
    }

    /// Size the window so that the page itself (the viewport) is `w`×`h`
    /// (the window's size includes the browser's own frame).
    async fn viewport(&self, w: u32, h: u32) {
        for _ in 0..3 {
            let inner = self
                .client
                .execute("return [window.innerWidth, window.innerHeight];", vec![])
                .await
                .expect("the viewport size");
            let (iw, ih) = (inner[0].as_u64().unwrap_or(0) as u32, inner[1].as_u64().unwrap_or(0) as u32);
            if (iw, ih) == (w, h) {
                return;
            }
            let (ow, oh) = self.client.get_window_size().await.expect("the window size");
            let (ow, oh) = (ow as u32, oh as u32);
            self.client.set_window_size(ow + w - iw.min(ow + w), oh + h - ih.min(oh + h)).await.expect("resize");
        }
    }

    /// Whether the page fits its viewport's width (no sideways scrolling);
    /// when not, the elements that stick out.
    async fn fits_width(&self) -> Result<(), String> {
        let script = "if (document.documentElement.scrollWidth <= window.innerWidth) { return null; } \
            return Array.from(document.querySelectorAll('body *')) \
              .filter(e => !e.closest('.scroll, pre') && e.getBoundingClientRect().right > window.innerWidth + 1) \
              .slice(0, 8).map(e => e.tagName + '.' + e.className + '#' + e.id + ' right=' + e.getBoundingClientRect().right) \
              .join(', ');";
        match self.client.execute(script, vec![]).await {
            Ok(Value::Null) => Ok(()),
            Ok(v) => Err(format!("wider than the viewport: {v}")),
            Err(e) => Err(format!("could not measure: {e}")),
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The page's path and query.
    async fn location(&self) -> String {
        let u = self.client.current_url().await.expect("the current URL");
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    /// The text of the first element `css` matches (waiting up to 10 s for it).
    /// (A live page replaces its content every few seconds: an element read
    /// just then is stale and is found again.)
    async fn text(&self, css: &str) -> String {
        let mut last = None;
        for _ in 0..5 {
            match self.find(css).await.text().await {
                Ok(t) => return t,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the text of {css}: {last:?}")
    }

    /// The first element `css` matches, waiting up to 10 s for it.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await {
            Ok(el) => el,
            Err(e) => {
                let at = self.location().await;
                let page = self.client.source().await.unwrap_or_default();
                panic!("no element {css} on {at}: {e}\n{page}")
            }
        }
    }

    /// How many elements `css` matches now.
    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.map(|v| v.len()).unwrap_or(0)
    }

    /// Click what `css` matches — every click here submits a form or
    /// follows a link — and wait until the next page has loaded (the old
    /// document is marked first, so its elements are never read as the new
    /// page's).
    async fn click(&self, css: &str) {
        let mark = "document.documentElement.setAttribute('data-left', '1'); return null;";
        self.client.execute(mark, vec![]).await.expect("mark the page");
        let mut last = None;
        let mut clicked = false;
        for _ in 0..5 {
            match self.find(css).await.click().await {
                Ok(()) => {
                    clicked = true;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(clicked, "click {css}: {last:?}");
        let loaded =
            "return document.readyState === 'complete' && !document.documentElement.hasAttribute('data-left');";
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Value::Bool(true)) = self.client.execute(loaded, vec![]).await {
                return;
            }
            assert!(Instant::now() < deadline, "no new page 15 s after clicking {css}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn h1(&self) -> String {
        self.text("h1").await
    }

    /// Sign in with `token` from wherever the browser is (it lands on the
    /// sign-in page when signed out).
    async fn sign_in(&self, up: &Up, token: &str) {
        if !self.location().await.starts_with("/ui/sign-in") {
            self.goto(&up.url("/ui/sign-in")).await;
        }
        let field = self.client.find(Locator::Css("#token")).await.expect("the token field");
        field.send_keys(token).await.expect("type the token");
        self.click("#sign-in").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.location().await.starts_with("/ui/sign-in") {
            assert!(Instant::now() < deadline, "still on the sign-in page: {}", self.h1().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sign_out(&self) {
        self.click("form.signout button").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.location().await.starts_with("/ui/sign-in") {
            assert!(Instant::now() < deadline, "not sent to sign-in after signing out");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Save the page as `name.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot of {name} is no PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// A program from PATH. Missing is a failure, never a skip: the README's
/// test command installs Chromium and chromedriver from Debian's packages.
fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} is not on PATH: the dashboard tests drive a real Chromium. Run them with \
                 scripts/test.sh, which installs the chromium and chromium-driver packages."
            )
        })
}

/// Poll `check` every 500 ms for `secs`; its value, or a failure naming `what`.
async fn until<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "after {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
