//! Capture of a plugin's standard output and standard error.
//!
//! A Rust plugin's panic message goes to stderr. Each instance writes its
//! stdout and its stderr into two [`OutputCapture`]s, each keeping the last
//! [`OutputCapture::CAPACITY`] bytes of the call in progress, and never fails
//! a write (a failing `println!` or `eprintln!` would itself panic the
//! plugin), so the error a user sees can quote what the plugin said before it
//! died. Nothing else is kept: memory per instance is bounded whatever the
//! plugin writes, and nothing a plugin prints reaches the host's own stdout
//! (where the console sink writes) or its log (which has its own budget,
//! [`super::logs`]). Plugins log through `weir_guest::log`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// A shared, bounded buffer holding the tail of what an instance wrote to
/// one of its output streams.
#[derive(Clone, Default)]
pub struct OutputCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl OutputCapture {
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
        // Only the tail of one long write can survive: never buffer more.
        let bytes = &bytes[bytes.len().saturating_sub(Self::CAPACITY)..];
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buffer.extend_from_slice(bytes);
        if buffer.len() > Self::CAPACITY {
            let excess = buffer.len() - Self::CAPACITY;
            buffer.drain(..excess);
        }
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for OutputCapture {
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
impl Pollable for OutputCapture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for OutputCapture {
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
        let capture = OutputCapture::new();
        capture.append(&vec![b'a'; OutputCapture::CAPACITY]);
        capture.append(b"the end");
        let text = capture.text();
        assert_eq!(text.len(), OutputCapture::CAPACITY);
        assert!(text.ends_with("the end"));
        capture.clear();
        assert_eq!(capture.text(), "");
        // One write longer than the capacity keeps its tail only.
        let capture = OutputCapture::new();
        let mut long = vec![b'b'; 3 * OutputCapture::CAPACITY];
        long.extend_from_slice(b" tail");
        capture.append(&long);
        let text = capture.text();
        assert_eq!(text.len(), OutputCapture::CAPACITY);
        assert!(text.ends_with("b tail"));
        assert!(capture.buffer.lock().unwrap().capacity() < 2 * OutputCapture::CAPACITY);
    }
}
