//! A real server of the Elasticsearch REST API for one test: noida-db (the
//! same binary as the Kafka broker, installed by `tests/broker/install`)
//! with only its Elasticsearch service, on a free port with its own data
//! directory, killed when dropped; and a client that reads it back.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use serde_json::{Value, json};

/// One server process.
pub struct Elasticsearch {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Elasticsearch {
    /// Starts one and waits until it answers.
    pub fn start() -> Self {
        let port = crate::free_port();
        let data = crate::scratch();
        let log = std::fs::File::create(data.path().join("server.log")).unwrap();
        let child = Command::new(crate::kafka::broker_binary())
            .args(["start", "--data-dir"])
            .arg(data.path().join("data"))
            .args([
                "--only",
                "elasticsearch",
                "--elasticsearch-port",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start noida-db's Elasticsearch: {e} (run tests/broker/install)")
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Elasticsearch did not open port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _data: data,
            http: reqwest::blocking::Client::new(),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends `method path` with a JSON `body`; returns the answer's JSON.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.url()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().unwrap().json().unwrap_or(Value::Null)
    }

    /// Every document of `index` (refreshed first), by id.
    pub fn documents(&self, index: &str) -> std::collections::BTreeMap<String, Value> {
        self.call("POST", &format!("/{index}/_refresh"), None);
        let found = self.call("GET", &format!("/{index}/_search?size=10000"), None);
        found["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|hit| (hit["_id"].as_str().unwrap().to_owned(), hit["_source"].clone()))
            .collect()
    }
}

impl Drop for Elasticsearch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
