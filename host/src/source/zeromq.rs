//! Records from ZeroMQ (`type = "zeromq"`): a `PULL` or `SUB` socket that
//! connects to producers or binds for them, through `zeromq` (the pure-Rust
//! ZeroMQ of the ZeroMQ organisation; ZMTP 3, so it talks to libzmq and
//! pyzmq peers).
//!
//! - **Records** are lines: a message is one record, or one per line when it
//!   holds several (`\n` or `\r\n`; a last line end is optional). The frames
//!   of a multipart message are joined. The same framing holds in memory
//!   and in the write-ahead log, so a replay gives the same records.
//! - **Delivery**: ZeroMQ cannot replay and has no acknowledgements, so
//!   without a checkpoint directory the source is at most once (what the
//!   process held when it died is gone). With one, every message is
//!   appended to the source's write-ahead log before it reaches a batch, as
//!   the socket source does: from then on it is exactly once.
//! - **`SUB`** subscribes to `subscribe` (a prefix or a list of them; all
//!   messages by default).
//! - **Connect** retries until the producer is there, and again when it
//!   goes away (zeromq's `SUB` reconnects by itself; its `PULL` does not,
//!   so the receiver watches the socket's events); **bind** fails the run
//!   at once when the address is taken.
//! - A ZeroMQ source never ends by itself, so `--available-now` refuses it.

use std::time::Duration;

use zeromq::{PullSocket, Socket, SocketRecv, SubSocket, ZmqMessage};

use super::wal::{IntakeError, LoggedIntake};
use super::{Source, SourceContext, SourceError, now_ms};
use crate::config::{Key, KindContext, Reach, Settings, SourceConfig, SourceType, SpecError};

/// The kind of ZeroMQ socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZmqPattern {
    /// `PULL`: the pipeline side of `PUSH` producers (each message to one
    /// puller).
    Pull,
    /// `SUB`: a subscriber of `PUB` producers.
    Sub,
}

/// Settings of the ZeroMQ source (`type = "zeromq"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeromqSpec {
    /// `tcp://host:port`.
    pub address: String,
    /// `PULL` or `SUB`.
    pub pattern: ZmqPattern,
    /// Bind (producers connect to the pipeline) instead of connecting.
    pub bind: bool,
    /// `SUB`: the prefixes subscribed to (`""`: everything).
    pub subscribe: Vec<String>,
}

impl SourceType for ZeromqSpec {
    const NAME: &'static str = "zeromq";
    const KEYS: &'static [Key] = &[
        Key::text("address"),
        Key::text("socket"),
        Key::text("mode"),
        Key::any("subscribe"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let address = crate::config::required(
            settings.text("address"),
            "address",
            cx.offset,
            "a `zeromq` source",
        )?;
        let at = settings.text("address").map_or(cx.offset, |t| t.span().start);
        if host_port(address).is_none() {
            return Err((
                at,
                format!("invalid address {address:?} (write `tcp://host:port`)"),
            ));
        }
        let pattern = match settings.text("socket") {
            None => ZmqPattern::Pull,
            Some(text) => match text.get_ref().as_str() {
                "pull" => ZmqPattern::Pull,
                "sub" => ZmqPattern::Sub,
                other => {
                    return Err((
                        text.span().start,
                        format!("`socket` must be \"pull\" or \"sub\", not {other:?}"),
                    ));
                }
            },
        };
        let bind = match settings.text("mode") {
            None => false,
            Some(text) => match text.get_ref().as_str() {
                "connect" => false,
                "bind" => true,
                other => {
                    return Err((
                        text.span().start,
                        format!("`mode` must be \"connect\" or \"bind\", not {other:?}"),
                    ));
                }
            },
        };
        let subscribe = match settings.any("subscribe") {
            None => vec![String::new()],
            Some(value) if pattern == ZmqPattern::Pull => {
                return Err((
                    value.span().start,
                    "`subscribe` is for `socket = \"sub\"`".to_owned(),
                ));
            }
            Some(value) => {
                crate::config::one_or_many(value, "`subscribe` must be a prefix or a list of prefixes")?
            }
        };
        Ok(Self {
            address: address.to_owned(),
            pattern,
            bind,
            subscribe,
        })
    }
}

/// The `host:port` of `tcp://host:port`.
fn host_port(address: &str) -> Option<&str> {
    let rest = address.strip_prefix("tcp://")?;
    let (host, port) = rest.rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)).then_some(rest)
}

impl SourceConfig for ZeromqSpec {
    fn build(&self) -> Box<dyn Source> {
        Box::new(ZeromqSource { spec: self.clone() })
    }

    fn reach(&self) -> Reach {
        Reach::Network(vec![host_port(&self.address).unwrap_or(&self.address).to_owned()])
    }

    fn write_ahead_log(&self) -> bool {
        true
    }

    fn endless(&self) -> Option<&'static str> {
        Some("is a ZeroMQ source (ZeroMQ has no end of stream)")
    }
}

/// A ZeroMQ receiver.
pub struct ZeromqSource {
    spec: ZeromqSpec,
}

/// The socket, of either kind.
enum Receiving {
    Pull(PullSocket),
    Sub(SubSocket),
}

impl Receiving {
    async fn recv(&mut self) -> zeromq::ZmqResult<ZmqMessage> {
        match self {
            Self::Pull(socket) => socket.recv().await,
            Self::Sub(socket) => socket.recv().await,
        }
    }
}

#[async_trait::async_trait]
impl Source for ZeromqSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> Result<(), SourceError> {
        // The log first: what was logged before a crash is handed over
        // before anything new.
        let mut logged = match &ctx.wal {
            None => None,
            Some((location, sync)) => match LoggedIntake::open(location, *sync, &ctx).await {
                Ok(intake) => Some(intake),
                Err(IntakeError::Closed) => return Ok(()),
                Err(IntakeError::Wal(error)) => {
                    return Err(ctx.error(format!(
                        "cannot open the write-ahead log in {}: {error}",
                        location.path().display()
                    )));
                }
            },
        };
        let Some(mut socket) = self.open(&mut ctx).await? else {
            return Ok(());
        };
        // zeromq's PULL does not reconnect by itself (its SUB does): the
        // receiver watches for the producer going away and connects again.
        let mut disconnects = match (&mut socket, self.spec.bind) {
            (Receiving::Pull(pull), false) => Some(pull.monitor()),
            _ => None,
        };
        let mut chunker = ctx.chunker();
        let mut block = Vec::new();
        loop {
            let first = tokio::select! {
                biased;
                _ = ctx.stopped() => break,
                () = disconnected(&mut disconnects) => None,
                message = socket.recv() => Some(message),
            };
            let Some(first) = first else {
                tracing::warn!(source = %ctx.name, address = %self.spec.address, "the ZeroMQ producer went away: connecting again");
                if !self.connect(&mut socket, &mut ctx).await {
                    break;
                }
                continue;
            };
            // One message, then every one already waiting (up to a block of
            // 1 MiB): one log append, one chunk.
            block.clear();
            let mut next = Some(first);
            while let Some(received) = next.take() {
                match received {
                    Ok(message) => append_lines(&mut block, &message),
                    Err(error) => {
                        tracing::warn!(source = %ctx.name, address = %self.spec.address, %error, "ZeroMQ receive failed");
                        break;
                    }
                }
                if block.len() < super::CHUNK_BYTES {
                    next = tokio::time::timeout(Duration::ZERO, socket.recv()).await.ok();
                }
            }
            if block.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let sent = match &mut logged {
                Some(intake) => intake.take(&block, now_ms()).await,
                None => match chunker.push_bytes(&block, now_ms()).await {
                    Ok(()) => chunker.flush().await.map_err(IntakeError::from),
                    Err(closed) => Err(closed.into()),
                },
            };
            match sent {
                Ok(()) => {}
                Err(IntakeError::Closed) => return Ok(()),
                Err(IntakeError::Wal(error)) => {
                    return Err(ctx.error(format!("cannot write the write-ahead log: {error}")));
                }
            }
        }
        Ok(())
    }
}

/// Returns when the socket `events` watches lost its peer (never without
/// `events`).
async fn disconnected<S>(events: &mut Option<S>)
where
    S: futures_util::Stream<Item = zeromq::SocketEvent> + Unpin,
{
    use futures_util::StreamExt;
    let Some(events) = events else {
        return std::future::pending().await;
    };
    loop {
        match events.next().await {
            Some(zeromq::SocketEvent::Disconnected(_)) => return,
            Some(_) => {}
            None => return std::future::pending().await,
        }
    }
}

/// Appends a message's lines to `block`, each ended with `\n` (the frames of
/// a multipart message joined).
fn append_lines(block: &mut Vec<u8>, message: &ZmqMessage) {
    for frame in message.iter() {
        block.extend_from_slice(frame);
    }
    if block.last() != Some(&b'\n') {
        block.push(b'\n');
    }
}

impl ZeromqSource {
    /// Connects `socket` to the producer, retrying with backoff; false
    /// when the pipeline stopped first.
    async fn connect(&self, socket: &mut Receiving, ctx: &mut SourceContext) -> bool {
        let spec = &self.spec;
        let mut backoff = Duration::from_millis(100);
        loop {
            let connecting = async {
                match &mut *socket {
                    Receiving::Pull(socket) => socket.connect(&spec.address).await,
                    Receiving::Sub(socket) => socket.connect(&spec.address).await,
                }
            };
            let connected = tokio::select! {
                biased;
                _ = ctx.stopped() => return false,
                connected = tokio::time::timeout(Duration::from_secs(5), connecting) => connected,
            };
            match connected {
                Ok(Ok(())) => {
                    tracing::info!(source = %ctx.name, address = %spec.address, "ZeroMQ socket connected");
                    return true;
                }
                Ok(Err(error)) => {
                    tracing::warn!(source = %ctx.name, address = %spec.address, %error, ?backoff, "cannot connect to the ZeroMQ producer: retrying");
                }
                Err(_) => {
                    tracing::warn!(source = %ctx.name, address = %spec.address, "no ZeroMQ producer answered within 5 s: retrying");
                }
            }
            tokio::select! {
                biased;
                _ = ctx.stopped() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// The socket, bound or connected (`None`: stopped while connecting).
    async fn open(&self, ctx: &mut SourceContext) -> Result<Option<Receiving>, SourceError> {
        let spec = &self.spec;
        let mut socket = match spec.pattern {
            ZmqPattern::Pull => Receiving::Pull(PullSocket::new()),
            ZmqPattern::Sub => Receiving::Sub(SubSocket::new()),
        };
        if spec.bind {
            let bound = match &mut socket {
                Receiving::Pull(socket) => socket.bind(&spec.address).await,
                Receiving::Sub(socket) => socket.bind(&spec.address).await,
            };
            bound.map_err(|error| ctx.error(format!("cannot bind {}: {error}", spec.address)))?;
            tracing::info!(source = %ctx.name, address = %spec.address, "ZeroMQ socket bound");
        } else if !self.connect(&mut socket, ctx).await {
            return Ok(None);
        }
        if let Receiving::Sub(sub) = &mut socket {
            for prefix in &spec.subscribe {
                sub.subscribe(prefix)
                    .await
                    .map_err(|error| ctx.error(format!("cannot subscribe to {prefix:?}: {error}")))?;
            }
        }
        Ok(Some(socket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_become_lines() {
        let mut block = Vec::new();
        append_lines(&mut block, &ZmqMessage::from("one"));
        append_lines(&mut block, &ZmqMessage::from("two\nthree\n"));
        let mut multipart = ZmqMessage::from("topic ");
        multipart.push_back("payload".into());
        append_lines(&mut block, &multipart);
        assert_eq!(block, b"one\ntwo\nthree\ntopic payload\n");
    }

    #[test]
    fn addresses_are_tcp_host_and_port() {
        assert_eq!(host_port("tcp://127.0.0.1:5555"), Some("127.0.0.1:5555"));
        assert_eq!(host_port("tcp://feeds.example:9"), Some("feeds.example:9"));
        assert_eq!(host_port("127.0.0.1:5555"), None);
        assert_eq!(host_port("tcp://:5555"), None);
        assert_eq!(host_port("tcp://host:0"), None);
        assert_eq!(host_port("ipc:///tmp/feed"), None);
    }
}
