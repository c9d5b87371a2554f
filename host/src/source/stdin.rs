//! Lines from standard input. Standard input cannot be rewound: what was read
//! is in the pipeline, what was not is still in the pipe. When the pipeline
//! checkpoints, lines go through the write-ahead log first.

use tokio::io::AsyncReadExt;

use super::wal::{CompleteLines, IntakeError, LoggedIntake};
use super::{Source, SourceContext, SourceError, now_ms};
use crate::config::{Key, KindContext, Settings, SourceConfig, SourceType, SpecError};

/// Reads standard input line by line until end of file. It has no
/// settings: it is its own (`type = "stdin"`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdinSource;

impl SourceType for StdinSource {
    const NAME: &'static str = "stdin";
    const KEYS: &'static [Key] = &[];

    fn parse(_: &Settings, _: &KindContext<'_>) -> Result<Self, SpecError> {
        Ok(Self)
    }
}

impl SourceConfig for StdinSource {
    fn build(&self) -> Box<dyn Source> {
        Box::new(Self)
    }

    fn write_ahead_log(&self) -> bool {
        true
    }

    fn reach(&self) -> crate::config::Reach {
        crate::config::Reach::Process("standard input")
    }
}

#[async_trait::async_trait]
impl Source for StdinSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> Result<(), SourceError> {
        if let Some((location, sync)) = ctx.wal.clone() {
            return run_logged(&location, sync, ctx).await;
        }
        let mut stdin = tokio::io::stdin();
        let mut chunker = ctx.chunker();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = tokio::select! {
                read = stdin.read(&mut buffer) => read,
                _ = ctx.stopped() => break,
            };
            let now = now_ms();
            match read {
                Ok(0) => break,
                Ok(n) => {
                    if chunker.push_bytes(&buffer[..n], now).await.is_err() || chunker.flush().await.is_err()
                    {
                        return Ok(());
                    }
                }
                Err(error) => return Err(ctx.error(format!("cannot read standard input: {error}"))),
            }
        }
        let _ = chunker.finish_lines(now_ms()).await;
        Ok(())
    }
}

/// Standard input through the write-ahead log: complete lines are logged
/// before they reach the batcher.
async fn run_logged(
    location: &super::wal::WalLocation,
    sync: super::wal::WalSync,
    mut ctx: SourceContext,
) -> Result<(), SourceError> {
    let wal_error = |ctx: &SourceContext, error: std::io::Error| {
        ctx.error(format!(
            "write-ahead log in {}: {error}",
            location.path().display()
        ))
    };
    let mut intake = match LoggedIntake::open(location, sync, &ctx).await {
        Ok(intake) => intake,
        Err(IntakeError::Closed) => return Ok(()),
        Err(IntakeError::Wal(error)) => return Err(wal_error(&ctx, error)),
    };
    let mut stdin = tokio::io::stdin();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut lines = CompleteLines::default();
    let mut at_end = false;
    loop {
        let read = tokio::select! {
            read = stdin.read(&mut buffer) => read,
            _ = ctx.stopped() => break,
        };
        let n = match read {
            Ok(0) => {
                at_end = true;
                break;
            }
            Ok(n) => n,
            Err(error) => return Err(ctx.error(format!("cannot read standard input: {error}"))),
        };
        let Some(block) = lines.push(&buffer[..n]) else {
            continue;
        };
        match intake.take(&block, now_ms()).await {
            Ok(()) => {}
            Err(IntakeError::Closed) => return Ok(()),
            Err(IntakeError::Wal(error)) => return Err(wal_error(&ctx, error)),
        }
    }
    // A last line without its end counts only at the end of the input.
    if at_end
        && let Some(last) = lines.finish()
        && let Err(IntakeError::Wal(error)) = intake.take(&last, now_ms()).await
    {
        return Err(wal_error(&ctx, error));
    }
    Ok(())
}
