//! A real `redis-server` (Debian's, installed by `tests/redis/install`) on
//! a free loopback port, one per test, without persistence; killed when
//! dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;

/// A running `redis-server`.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub fn start() -> Self {
        let port = crate::free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start redis-server ({error}): install it with tests/redis/install")
            });
        let server = Self { child, port };
        let started = Instant::now();
        loop {
            if let Ok(mut connection) = server.try_connection()
                && redis::cmd("PING").query::<String>(&mut connection).is_ok()
            {
                return server;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn try_connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://{}/", self.address()))?.get_connection()
    }

    /// A client connection.
    pub fn connection(&self) -> redis::Connection {
        self.try_connection().expect("redis-server answers")
    }

    /// Every string key matching `pattern`, with its value.
    pub fn strings(&self, pattern: &str) -> std::collections::BTreeMap<String, String> {
        let mut connection = self.connection();
        let keys: Vec<String> = connection.keys(pattern).unwrap();
        keys.into_iter()
            .map(|key| {
                let value: String = connection.get(&key).unwrap();
                (key, value)
            })
            .collect()
    }
}

impl RedisServer {
    /// Appends one entry per line of `text` to the stream `stream`, the
    /// line in the field `value`.
    pub fn xadd_lines(&self, stream: &str, text: &str) {
        let mut connection = self.connection();
        let lines: Vec<&str> = text.lines().collect();
        for chunk in lines.chunks(500) {
            let mut pipe = redis::pipe();
            for line in chunk {
                pipe.cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg("value")
                    .arg(*line)
                    .ignore();
            }
            pipe.query::<()>(&mut connection).unwrap();
        }
    }

    /// How many entries of `stream` are pending (read, not acknowledged)
    /// in `group`.
    pub fn pending(&self, stream: &str, group: &str) -> u64 {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query(&mut self.connection())
            .unwrap();
        match summary {
            redis::Value::Array(fields) => match fields.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                other => panic!("unexpected XPENDING summary {other:?}"),
            },
            other => panic!("unexpected XPENDING summary {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
