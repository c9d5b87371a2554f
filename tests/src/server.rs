//! A real `weir serve` process on a loopback port, and a real HTTP client
//! for its API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder};
pub use serde_json::{Value, json};

/// Hex SHA-256 of the file at `path` (a plugin's content address).
pub fn sha256_file(path: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A running `weir serve` and its data directory.
pub struct Server {
    child: Option<Child>,
    binary: PathBuf,
    data: PathBuf,
    extra: Vec<String>,
    /// `http://127.0.0.1:PORT` (or `https://localhost:PORT`).
    pub url: String,
    http: Client,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// `WEIR_LOG` of the next launch (`warn` unless told).
    log_level: String,
}

/// An answer: its status and its body as JSON (`Value::Null` when empty or
/// not JSON; the text is kept as a string then).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// The `error` message of an error answer ("" when none).
    pub fn error(&self) -> &str {
        self.body.get("error").and_then(Value::as_str).unwrap_or("")
    }

    /// Asserts the status is `status` and the error message holds
    /// `fragment`; returns the answer.
    #[track_caller]
    pub fn expect_error(self, status: u16, fragment: &str) -> Self {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {}", self.body);
        assert!(
            self.error().contains(fragment),
            "`{fragment}` not in: {}",
            self.error()
        );
        self
    }

    /// Asserts the status is `status`; returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {}", self.body);
        self.body
    }
}

impl Server {
    /// Starts `weir serve` (the binary at `binary`) on data directory
    /// `data`, with `extra` arguments, and waits until it listens.
    pub fn start(binary: &str, data: &Path, extra: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            binary: PathBuf::from(binary),
            data: data.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            url: String::new(),
            http: Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            stderr: None,
            log_level: "warn".into(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(&self.data).unwrap();
        let token_file = self.data.with_extension("admin-token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
        let mut command = Command::new(&self.binary);
        command
            .args(["serve", "--data"])
            .arg(&self.data)
            .args(["--listen", "127.0.0.1:0", "--admin-token-file"])
            .arg(&token_file)
            .args(&self.extra)
            .env("WEIR_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot start weir serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut stderr = child.stderr.take().unwrap();
        self.stderr = Some(std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        }));
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| {
                panic!(
                    "weir serve did not start: {line:?}, log: {}",
                    self.log_after_exit(&mut child)
                )
            })
            .to_owned();
        let tls = self.extra.iter().any(|a| a == "--tls-cert");
        self.url = if tls {
            format!("https://localhost:{}", addr.rsplit_once(':').unwrap().1)
        } else {
            format!("http://{addr}")
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || for _ in stdout.lines() {});
        self.child = Some(child);
    }

    fn log_after_exit(&mut self, child: &mut Child) -> String {
        let _ = child.kill();
        let _ = child.wait();
        self.stderr.take().map(|t| t.join().unwrap()).unwrap_or_default()
    }

    /// Uses `client` (one trusting a test certificate, say) for calls.
    pub fn with_client(mut self, client: Client) -> Self {
        self.http = client;
        self
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Tenant `tenant`'s file root.
    pub fn root(&self, tenant: &str) -> PathBuf {
        self.data.join("tenants").join(tenant).join("root")
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for a clean exit; returns its log.
    pub fn terminate(&mut self) -> String {
        let mut child = self.child.take().expect("running");
        crate::terminate(&child);
        let status = crate::wait_status(&mut child, Duration::from_secs(120));
        let log = self.stderr.take().map(|t| t.join().unwrap()).unwrap_or_default();
        assert!(status.success(), "weir serve exited with {status}: {log}");
        log
    }

    /// Starts the server again on the same data directory, logging at
    /// `WEIR_LOG` level `log_level` (`info` shows each pipeline's end).
    pub fn restart_logging(&mut self, log_level: &str) {
        self.log_level = log_level.into();
        self.restart();
    }

    /// Starts the server again on the same data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.launch();
    }

    /// A request to `path` with `token` (none: no Authorization header).
    pub fn request(&self, method: &str, path: &str, token: Option<&str>) -> RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let request = self.http.request(method, format!("{}{path}", self.url));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and reads the answer.
    pub fn send(&self, request: RequestBuilder) -> Answer {
        let response = request.send().expect("the server answers");
        let status = response.status();
        let text = response.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        });
        Answer { status, body }
    }

    /// GET `path` with `token`.
    pub fn get(&self, path: &str, token: &str) -> Answer {
        self.send(self.request("GET", path, Some(token)))
    }

    /// POST JSON `body` to `path` with `token`.
    pub fn post(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.send(self.request("POST", path, Some(token)).json(body))
    }

    /// Creates tenant `name` (as the admin) with `settings` (quotas,
    /// allowed_addresses) and returns an operator's token of it.
    pub fn tenant(&self, name: &str, settings: Value) -> String {
        let mut body = settings;
        body["name"] = json!(name);
        self.post("/v1/tenants", ADMIN_TOKEN, &body).expect(201);
        self.token(name, "operator")
    }

    /// Makes a token of `role` for `tenant` (as the admin).
    pub fn token(&self, tenant: &str, role: &str) -> String {
        let made = self
            .post(
                &format!("/v1/tenants/{tenant}/tokens"),
                ADMIN_TOKEN,
                &json!({ "role": role }),
            )
            .expect(201);
        made["token"].as_str().unwrap().to_owned()
    }

    /// Uploads the component at `file` as `tenant`'s plugin `name`.
    pub fn push_plugin(&self, tenant: &str, token: &str, name: &str, file: &str) -> Answer {
        let bytes = std::fs::read(file).unwrap();
        self.send(
            self.request(
                "PUT",
                &format!("/v1/tenants/{tenant}/plugins/{name}"),
                Some(token),
            )
            .body(bytes),
        )
    }

    /// Writes `text` as the file `path` of `tenant`'s root through the API.
    pub fn put_file(&self, tenant: &str, token: &str, path: &str, text: &str) -> Answer {
        self.send(
            self.request("PUT", &format!("/v1/tenants/{tenant}/files/{path}"), Some(token))
                .body(text.to_owned()),
        )
    }

    /// Deploys pipeline file `text` for `tenant`.
    pub fn deploy(&self, tenant: &str, token: &str, text: &str) -> Answer {
        self.send(
            self.request("POST", &format!("/v1/tenants/{tenant}/pipelines"), Some(token))
                .body(text.to_owned()),
        )
    }

    /// Waits until `tenant`'s pipeline `name` has completed batch `batch`
    /// (or a later one); fails the test after `limit`.
    pub fn wait_batch(&self, tenant: &str, token: &str, name: &str, batch: u64, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let status = self
                .get(&format!("/v1/tenants/{tenant}/pipelines/{name}"), token)
                .expect(200);
            if status["status"]["last_batch"]["id"]
                .as_u64()
                .is_some_and(|id| id >= batch)
            {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no batch {batch} of {name} within {limit:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failing test shows what the server said.
        if std::thread::panicking()
            && let Some(log) = self.stderr.take().and_then(|t| t.join().ok())
        {
            eprintln!("--- weir serve's log ---\n{log}--- end of weir serve's log ---");
        }
    }
}
