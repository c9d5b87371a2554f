//! Capture of a plugin's standard error.
//!
//! A Rust plugin's panic message goes to stderr. Each instance writes into a
//! [`StderrCapture`] that keeps the last [`StderrCapture::CAPACITY`] bytes and
//! never fails a write (a failing `eprintln!` would itself panic the plugin),
//! so the error a user sees can quote what the plugin said before it died.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// A shared, bounded buffer holding the tail of what an instance wrote to stderr.
#[derive(Clone, Default)]
pub struct StderrCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl StderrCapture {
    /// Bytes kept: the most recent ones.
    pub const CAPACITY: usize = 16 * 1024;

    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// What was captured so far, as text (invalid UTF-8 replaced), trimmed.
    pub fn text(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buffer).trim().to_owned()
    }

    /// Forgets what was captured.
    pub fn clear(&self) {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buffer.extend_from_slice(bytes);
        if buffer.len() > Self::CAPACITY {
            let excess = buffer.len() - Self::CAPACITY;
            buffer.drain(..excess);
        }
    }
}

impl IsTerminal for StderrCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrCapture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for StderrCapture {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(Self::CAPACITY)
    }
}

#[async_trait::async_trait]
impl Pollable for StderrCapture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for StderrCapture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_tail() {
        let capture = StderrCapture::new();
        capture.append(&vec![b'a'; StderrCapture::CAPACITY]);
        capture.append(b"the end");
        let text = capture.text();
        assert_eq!(text.len(), StderrCapture::CAPACITY);
        assert!(text.ends_with("the end"));
        capture.clear();
        assert_eq!(capture.text(), "");
    }
}
