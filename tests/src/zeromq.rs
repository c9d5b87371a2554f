//! ZeroMQ producers for the ZeroMQ source's tests: pyzmq (libzmq 4.3.5,
//! installed by `tests/zeromq/install` into `target/zeromq`) in a child
//! process, so that the engine talks to the reference implementation.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The producer script: `kind` (`push` or `pub`), endpoint, `connect` or
/// `bind`, then messages as JSON on stdin, sent `batch` at a time every
/// `pause` seconds. A `pub` producer waits for its first subscriber's
/// handshake (and a moment for its subscription) before it sends.
const PRODUCER: &str = r#"
import json, sys, time, zmq
kind, endpoint, mode, batch, pause = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
messages = json.load(sys.stdin)
context = zmq.Context()
socket = context.socket(zmq.PUSH if kind == "push" else zmq.PUB)
socket.setsockopt(zmq.SNDHWM, 0)
socket.setsockopt(zmq.LINGER, 60000)
monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) if kind == "pub" else None
getattr(socket, mode)(endpoint)
print("ready", flush=True)
if monitor is not None:
    monitor.recv_multipart()
    socket.disable_monitor()
    monitor.close()
    time.sleep(0.5)
for start in range(0, len(messages), batch):
    for message in messages[start:start + batch]:
        if isinstance(message, list):
            socket.send_multipart([part.encode() for part in message])
        else:
            socket.send(message.encode())
    time.sleep(pause)
socket.close()
context.term()
print("sent", flush=True)
"#;

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/zeromq/venv/bin/python");
    assert!(
        python.exists(),
        "pyzmq is not installed: run tests/zeromq/install"
    );
    python
}

/// A running producer.
pub struct Producer {
    child: Child,
}

impl Producer {
    /// Starts a `kind` (`push` or `pub`) producer that `mode`s (`connect`
    /// or `bind`) to `endpoint` and sends `messages` (a JSON array of
    /// strings, or of arrays of strings for multipart messages), `batch` at
    /// a time with `pause_s` seconds between; returns once its socket is
    /// set up.
    pub fn start(
        kind: &str,
        endpoint: &str,
        mode: &str,
        messages: &serde_json::Value,
        batch: usize,
        pause_s: f64,
    ) -> Self {
        let mut child = Command::new(python())
            .args([
                "-c",
                PRODUCER,
                kind,
                endpoint,
                mode,
                &batch.to_string(),
                &pause_s.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the pyzmq producer");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(messages.to_string().as_bytes()).unwrap();
        drop(stdin);
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the producer did not start");
        // Keep reading its output so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Self { child }
    }

    /// Waits until it has sent everything (and its messages left its
    /// socket).
    pub fn finish(mut self) {
        let status = crate::wait_status(&mut self.child, std::time::Duration::from_secs(120));
        assert!(status.success(), "the producer failed: {status:?}");
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
