//! Lines from TCP sockets.
//!
//! `connect` mode is Spark's `socketTextStream`: connect to `host:port` and
//! read lines; when the connection cannot be made or the peer goes away, try
//! again with exponential backoff (100 ms doubling up to `max-backoff`),
//! logging each failure. In `--available-now` runs, end of stream ends the
//! source. `listen` mode binds `host:port` and accepts any number of producers
//! at once; in `--available-now` runs it ends when every producer it accepted
//! has closed its connection and no new one arrived for 300 ms.
//!
//! An `--available-now` run must end: there, a source that goes
//! `connect-timeout` (default [`DEFAULT_CONNECT_TIMEOUT`]) without a
//! connection — connect mode: since it started or since its connection
//! failed; listen mode: before its first producer — fails the run with an
//! error naming the address, the wait and the last connection error. A
//! streaming run keeps retrying, as Spark's receivers do.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::wal::{CompleteLines, IntakeError, LoggedIntake};
use super::{Closed, Source, SourceContext, SourceError, now_ms};
use crate::config::{Key, KindContext, Settings, SourceConfig, SourceType, SpecError, duration, required};

/// How long an `--available-now` run waits for a socket source's
/// connection before it fails (`connect-timeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a socket source gets its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// Connect to `address` (like Spark's `socketTextStream`), reconnecting with backoff.
    Connect,
    /// Listen on `address` and accept any number of producers.
    Listen,
}

/// Settings of the socket source (`type = "socket"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    /// `host:port`.
    pub address: String,
    /// Connect to a server, or listen for producers.
    pub mode: SocketMode,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// In `--available-now` runs: longest time without a connection before
    /// the source fails.
    pub connect_timeout: Duration,
    /// Acknowledge logged lines to the producer (`ack <lines>`), with checkpoints.
    pub ack: bool,
}

impl SourceType for SocketSpec {
    const NAME: &'static str = "socket";
    const KEYS: &'static [Key] = &[
        Key::text("address"),
        Key::text("mode"),
        Key::text("max-backoff"),
        Key::text("connect-timeout"),
        Key::boolean("ack"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let address = required(settings.text("address"), "address", cx.offset, "a socket source")?;
        let mode = match settings
            .text("mode")
            .map(|m| (m.get_ref().as_str(), m.span().start))
        {
            None | Some(("connect", _)) => SocketMode::Connect,
            Some(("listen", _)) => SocketMode::Listen,
            Some((other, at)) => {
                return Err((
                    at,
                    format!("unknown socket mode `{other}` (expected connect or listen)"),
                ));
            }
        };
        let max_backoff = match settings.text("max-backoff") {
            Some(text) => duration(text)?,
            None => Duration::from_secs(5),
        };
        let connect_timeout = match settings.text("connect-timeout") {
            Some(text) => duration(text)?,
            None => DEFAULT_CONNECT_TIMEOUT,
        };
        Ok(Self {
            address: address.to_owned(),
            mode,
            max_backoff,
            connect_timeout,
            ack: settings.boolean("ack").is_some_and(|a| *a.get_ref()),
        })
    }
}

impl SourceConfig for SocketSpec {
    fn reach(&self) -> crate::config::Reach {
        crate::config::Reach::Network(vec![self.address.clone()])
    }

    fn build(&self) -> Box<dyn Source> {
        Box::new(
            SocketSource::new(self.address.clone(), self.mode, self.max_backoff, self.ack)
                .with_connect_timeout(self.connect_timeout),
        )
    }

    fn write_ahead_log(&self) -> bool {
        true
    }

    fn needs_checkpoints(&self) -> Option<&'static str> {
        self.ack.then_some(
            "`ack` needs `checkpoint-dir` in [pipeline]: lines are acknowledged once they are in the write-ahead log kept there",
        )
    }
}

/// A socket receiver.
pub struct SocketSource {
    address: String,
    mode: SocketMode,
    max_backoff: Duration,
    connect_timeout: Duration,
    ack: bool,
}

impl SocketSource {
    /// A receiver for `address` in `mode`; with `ack`, every block of lines
    /// is acknowledged to the producer once it is logged (`ack <lines>`).
    /// `--available-now` runs wait [`DEFAULT_CONNECT_TIMEOUT`] for a connection.
    pub fn new(address: String, mode: SocketMode, max_backoff: Duration, ack: bool) -> Self {
        Self {
            address,
            mode,
            max_backoff,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ack,
        }
    }

    /// The same receiver, waiting `timeout` for a connection in
    /// `--available-now` runs.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The error of an `--available-now` run that went `connect-timeout`
    /// without a connection; `last` is the last connection error.
    fn not_connected(&self, ctx: &SourceContext, what: &str, last: Option<&str>) -> SourceError {
        ctx.error(format!(
            "{what} {} within {} (--available-now){}: is the server running? `connect-timeout` sets how long to wait",
            self.address,
            humantime::format_duration(self.connect_timeout),
            last.map(|e| format!("; last error: {e}")).unwrap_or_default(),
        ))
    }
}

/// Why a connection's reading ended.
enum Ended {
    /// The peer closed the connection.
    Eof,
    /// Reading failed.
    Error(std::io::Error),
    /// The pipeline is stopping or gone.
    Stopped,
    /// The write-ahead log failed: the source cannot go on.
    Failed(String),
}

/// The shared intake through the write-ahead log.
type Logged = Arc<Mutex<LoggedIntake>>;

/// Opens the write-ahead log when the pipeline checkpoints (replaying first
/// what recovery asks for).
async fn open_log(ctx: &SourceContext) -> Result<Option<Logged>, SourceError> {
    let Some((location, sync)) = &ctx.wal else {
        return Ok(None);
    };
    match LoggedIntake::open(location, *sync, ctx).await {
        Ok(intake) => Ok(Some(Arc::new(Mutex::new(intake)))),
        Err(IntakeError::Closed) => Ok(None),
        Err(IntakeError::Wal(error)) => Err(ctx.error(format!(
            "cannot open the write-ahead log in {}: {error}",
            location.path().display()
        ))),
    }
}

/// Reads lines from a connection into the log: complete lines only; each
/// block is logged, then acknowledged (`ack <lines so far>`) when asked.
async fn read_logged(stream: &mut TcpStream, ctx: &mut SourceContext, logged: &Logged, ack: bool) -> Ended {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut lines = CompleteLines::default();
    let mut acked = 0u64;
    let mut log = async |block: &[u8], stream: &mut TcpStream| -> Option<Ended> {
        match logged.lock().await.take(block, now_ms()).await {
            Ok(()) => {}
            Err(IntakeError::Closed) => return Some(Ended::Stopped),
            Err(IntakeError::Wal(error)) => {
                return Some(Ended::Failed(format!(
                    "cannot write the write-ahead log: {error}"
                )));
            }
        }
        if ack {
            acked += memchr::memchr_iter(b'\n', block).count() as u64;
            if let Err(error) = stream.write_all(format!("ack {acked}\n").as_bytes()).await {
                return Some(Ended::Error(error));
            }
        }
        None
    };
    let ended = loop {
        // A stop wins over data that is ready: once asked to stop, the
        // receiver reads no more (a paced source would otherwise hand over
        // unpaced reads until the select happened to pick the stop).
        let read = tokio::select! {
            biased;
            _ = ctx.stopped() => break Ended::Stopped,
            read = stream.read(&mut buffer) => read,
        };
        let n = match read {
            Ok(0) => break Ended::Eof,
            Ok(n) => n,
            Err(error) => break Ended::Error(error),
        };
        if let Some(block) = lines.push(&buffer[..n])
            && let Some(ended) = log(&block, stream).await
        {
            return ended;
        }
    };
    // A last line without its end is a line only when the producer closed
    // the connection; cut off by a stop or an error it is dropped (and not
    // acknowledged: the producer sends it again).
    if matches!(ended, Ended::Eof)
        && let Some(last) = lines.finish()
        && let Some(Ended::Failed(message)) = log(&last, stream).await
    {
        return Ended::Failed(message);
    }
    ended
}

async fn read_lines(
    stream: &mut TcpStream,
    ctx: &mut SourceContext,
    logged: Option<&Logged>,
    ack: bool,
) -> Ended {
    if let Some(logged) = logged {
        return read_logged(stream, ctx, logged, ack).await;
    }
    let mut chunker = ctx.chunker();
    let mut buffer = vec![0u8; 64 * 1024];
    let ended = loop {
        // A stop wins over data that is ready: once asked to stop, the
        // receiver reads no more (a paced source would otherwise hand over
        // unpaced reads until the select happened to pick the stop).
        let read = tokio::select! {
            biased;
            _ = ctx.stopped() => break Ended::Stopped,
            read = stream.read(&mut buffer) => read,
        };
        match read {
            Ok(0) => break Ended::Eof,
            Ok(n) => {
                let now = now_ms();
                // A read that did not fill the buffer emptied the socket: what
                // came goes out as a chunk at once, so lines reach the next
                // batch even when the producer is slow; while reads come
                // full, chunks fill up to their size.
                let drained = n < buffer.len();
                let sent: Result<(), Closed> = async {
                    chunker.push_bytes(&buffer[..n], now).await?;
                    if drained {
                        chunker.flush().await?;
                    }
                    Ok(())
                }
                .await;
                if sent.is_err() {
                    return Ended::Stopped;
                }
            }
            Err(error) => break Ended::Error(error),
        }
    };
    // As with a log: a last line without its end is a line only when the
    // producer closed the connection; cut off by a stop or an error it is
    // dropped rather than delivered truncated.
    let sent = if matches!(ended, Ended::Eof) {
        chunker.finish_lines(now_ms()).await
    } else {
        chunker.flush().await
    };
    if sent.is_err() {
        return Ended::Stopped;
    }
    ended
}

impl SocketSource {
    async fn run_connect(self, mut ctx: SourceContext) -> Result<(), SourceError> {
        let logged = open_log(&ctx).await?;
        let initial = Duration::from_millis(100);
        let mut backoff = initial;
        // Since when the source has had no connection (available-now runs
        // give up after `connect-timeout`), and why the last attempt failed.
        let mut unconnected_since = tokio::time::Instant::now();
        let mut last_error: Option<String> = None;
        loop {
            if ctx.stopping() {
                return Ok(());
            }
            let give_up_at = unconnected_since + self.connect_timeout;
            if ctx.available_now && tokio::time::Instant::now() >= give_up_at {
                return Err(self.not_connected(&ctx, "could not connect to", last_error.as_deref()));
            }
            let connected = tokio::select! {
                connected = TcpStream::connect(&self.address) => connected,
                _ = tokio::time::sleep_until(give_up_at), if ctx.available_now => {
                    return Err(self.not_connected(&ctx, "could not connect to", last_error.as_deref()));
                }
                _ = ctx.stopped() => return Ok(()),
            };
            match connected {
                Ok(mut stream) => {
                    tracing::info!(source = %ctx.name, address = %self.address, "connected");
                    backoff = initial;
                    let ended = read_lines(&mut stream, &mut ctx, logged.as_ref(), self.ack).await;
                    unconnected_since = tokio::time::Instant::now();
                    match ended {
                        Ended::Stopped => return Ok(()),
                        Ended::Failed(message) => return Err(ctx.error(message)),
                        Ended::Eof if ctx.available_now => return Ok(()),
                        Ended::Eof => tracing::warn!(
                            source = %ctx.name, address = %self.address,
                            "the peer closed the connection; reconnecting in {}",
                            humantime::format_duration(backoff)
                        ),
                        Ended::Error(error) => {
                            tracing::warn!(
                                source = %ctx.name, address = %self.address,
                                "connection failed: {error}; reconnecting in {}",
                                humantime::format_duration(backoff)
                            );
                            last_error = Some(error.to_string());
                        }
                    }
                    // A peer that accepts and hangs up at once must not make us spin.
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = ctx.stopped() => return Ok(()),
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        source = %ctx.name, address = %self.address,
                        "cannot connect: {error}; retrying in {}",
                        humantime::format_duration(backoff)
                    );
                    last_error = Some(error.to_string());
                    let wake = tokio::time::Instant::now() + backoff;
                    let wake = if ctx.available_now {
                        wake.min(unconnected_since + self.connect_timeout)
                    } else {
                        wake
                    };
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = ctx.stopped() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    async fn run_listen(self, mut ctx: SourceContext) -> Result<(), SourceError> {
        let logged = open_log(&ctx).await?;
        let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<String>(1);
        let listener = TcpListener::bind(&self.address)
            .await
            .map_err(|e| ctx.error(format!("cannot listen on {}: {e}", self.address)))?;
        tracing::info!(source = %ctx.name, address = %self.address, "listening");
        let mut connections = JoinSet::new();
        let mut accepted_any = false;
        // In available-now runs: how long to wait for another producer after
        // the last one closed, and for the first one.
        let grace = Duration::from_millis(300);
        let give_up_at = tokio::time::Instant::now() + self.connect_timeout;
        loop {
            let idle = ctx.available_now && accepted_any && connections.is_empty();
            tokio::select! {
                _ = tokio::time::sleep(grace), if idle => return Ok(()),
                _ = tokio::time::sleep_until(give_up_at), if ctx.available_now && !accepted_any => {
                    return Err(self.not_connected(&ctx, "no producer connected to", None));
                }
                accepted = listener.accept() => match accepted {
                    Ok((mut stream, peer)) => {
                        accepted_any = true;
                        tracing::info!(source = %ctx.name, %peer, "producer connected");
                        let mut connection_ctx = ctx.clone_for_task();
                        let (logged, ack, failed_tx) = (logged.clone(), self.ack, failed_tx.clone());
                        connections.spawn(async move {
                            let ended = read_lines(&mut stream, &mut connection_ctx, logged.as_ref(), ack).await;
                            match ended {
                                Ended::Error(error) => {
                                    tracing::warn!(source = %connection_ctx.name, %peer, "connection failed: {error}");
                                }
                                Ended::Failed(message) => {
                                    let _ = failed_tx.send(message).await;
                                }
                                Ended::Eof | Ended::Stopped => {}
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(source = %ctx.name, "accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                Some(message) = failed.recv() => return Err(ctx.error(message)),
                _ = ctx.stopped() => {
                    while connections.join_next().await.is_some() {}
                    return Ok(());
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Source for SocketSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        match self.mode {
            SocketMode::Connect => self.run_connect(ctx).await,
            SocketMode::Listen => self.run_listen(ctx).await,
        }
    }
}
