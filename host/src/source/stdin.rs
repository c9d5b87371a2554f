//! Lines from standard input. Standard input cannot be rewound: what was read
//! is in the pipeline, what was not is still in the pipe.

use tokio::io::AsyncReadExt;

use super::{Source, SourceContext, SourceError, now_ms};

/// Reads standard input line by line until end of file.
pub struct StdinSource;

#[async_trait::async_trait]
impl Source for StdinSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> Result<(), SourceError> {
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
