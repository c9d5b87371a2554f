//! A real headless Chromium, driven through WebDriver (Debian's `chromium`
//! and `chromium-driver`, installed by `tests/browser/install`), for the
//! web UI's tests: one ChromeDriver process and one browser session per
//! test, closed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
pub use serde_json::Value;

/// The command that installs the browser.
pub const INSTALL: &str = "tests/browser/install (apt-get install chromium chromium-driver)";

fn executable(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: the web UI's tests need headless Chromium and ChromeDriver; install them with {INSTALL}, or set {env}",
        path.display()
    );
    path
}

/// Where the tests' screenshots go (`target/ui-screenshots/`).
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A browser window.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium window of `width` ×
    /// `height` pixels.
    pub fn start(width: u32, height: u32) -> Self {
        let chromium = executable("WEIR_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = executable("WEIR_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = crate::free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start chromedriver");
        let profile = crate::scratch();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let attempt = runtime.block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&url),
            );
            match attempt {
                Ok(client) => break client,
                Err(error) if started.elapsed() > Duration::from_secs(30) => {
                    panic!("cannot start a Chromium session through chromedriver: {error}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let browser = Self {
            runtime,
            client: Some(client),
            driver,
            _profile: profile,
        };
        browser.resize(width, height);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Sets the window's size.
    pub fn resize(&self, width: u32, height: u32) {
        self.runtime
            .block_on(self.client().set_window_size(width, height))
            .unwrap();
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap();
    }

    /// Runs `script` (a function body; `arguments` are not used) and
    /// returns what it returns.
    pub fn eval(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// The visible text of the first element matching `css`, or `None`.
    pub fn text(&self, css: &str) -> Option<String> {
        // Read in one script: a live update cannot replace the element
        // between finding it and reading it.
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;";
        let found = self
            .runtime
            .block_on(self.client().execute(script, vec![Value::from(css)]))
            .ok()?;
        found.as_str().map(|text| text.trim().to_owned())
    }

    /// Whether an element matches `css` now.
    pub fn has(&self, css: &str) -> bool {
        self.runtime
            .block_on(self.client().find_all(Locator::Css(css)))
            .map(|found| !found.is_empty())
            .unwrap_or(false)
    }

    /// Clicks the first element matching `css` (found again if a live
    /// update replaced it between finding and clicking).
    pub fn click(&self, css: &str) {
        let mut tries = 0;
        loop {
            let clicked = self
                .runtime
                .block_on(async { self.client().find(Locator::Css(css)).await?.click().await });
            match clicked {
                Ok(()) => return,
                Err(error) if tries < 5 && error.to_string().contains("stale") => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => panic!("cannot click `{css}`: {error}"),
            }
        }
    }

    /// Types `text` into the first element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.send_keys(text).await })
            .unwrap_or_else(|error| panic!("cannot type into `{css}`: {error}"));
    }

    /// The URL shown now.
    pub fn url(&self) -> String {
        self.runtime
            .block_on(self.client().current_url())
            .unwrap()
            .to_string()
    }

    /// Waits up to `limit` for `check` to hold; panics saying `what` if it
    /// does not.
    pub fn wait_until(&self, limit: Duration, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let started = Instant::now();
        while !check(self) {
            assert!(
                started.elapsed() < limit,
                "waited {limit:?} for {what}; the page shows: {}",
                self.text("main").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes a PNG of the window to `target/ui-screenshots/{name}.png` and
    /// returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.runtime.block_on(self.client().screenshot()).unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
