//! Logging through the host: messages go to the host's log, tagged with the
//! pipeline, stage and plugin of the calling instance.
//!
//! The host bounds what a stage logs: each message is cut to 4 KiB, and a
//! stage's messages, over all its instances, share a budget (by default 100
//! messages and 64 KiB per second, the stage's `log-messages-per-second` and
//! `log-bytes-per-second` limits); messages over it are dropped and counted
//! in the run summary. Messages below the host's log level cost nothing.
//! What a plugin prints to stdout or stderr is not logged: the host keeps
//! the last 16 KiB of each and quotes them when a call traps.
//!
//! These functions call the host; they only work inside the WebAssembly
//! component (natively, in unit tests, they panic).

use crate::__private::transform_bindings::weir::plugin::log as wit;

/// Severity of a log message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

/// Writes `message` to the host's log at `level`.
pub fn write(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit::Level::Trace,
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    wit::write(level, message);
}

/// Logs `message` at trace level.
pub fn trace(message: &str) {
    write(Level::Trace, message);
}

/// Logs `message` at debug level.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Logs `message` at info level.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Logs `message` at warn level.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Logs `message` at error level.
pub fn error(message: &str) {
    write(Level::Error, message);
}
