//! The batcher: cuts what the receivers have queued into micro-batches.
//!
//! Every receiver has its own bounded queue of chunks. At each batch
//! boundary [`Batcher::cut`] takes the chunks that are in each queue at that
//! moment (never more, so a fast source cannot make a batch grow without
//! bound) and concatenates them into one batch per source.

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::record::{Batch, Partition};

struct Input {
    chunks: mpsc::Receiver<Batch>,
    finished: bool,
}

/// Cuts micro-batches from the sources' queues.
pub struct Batcher {
    inputs: Vec<Input>,
}

impl Batcher {
    /// A batcher over the queues of the sources, in source order.
    pub fn new(queues: Vec<mpsc::Receiver<Batch>>) -> Self {
        Self {
            inputs: queues
                .into_iter()
                .map(|chunks| Input {
                    chunks,
                    finished: false,
                })
                .collect(),
        }
    }

    /// Takes the chunks queued now: the chunks of each source, in source order.
    pub fn cut(&mut self) -> Vec<Partition> {
        self.inputs
            .iter_mut()
            .map(|input| {
                let available = input.chunks.len();
                let mut chunks = Vec::with_capacity(available);
                for _ in 0..available.max(1) {
                    match input.chunks.try_recv() {
                        Ok(chunk) => chunks.push(chunk),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            input.finished = true;
                            break;
                        }
                    }
                }
                chunks
            })
            .collect()
    }

    /// True when some source has queued records.
    pub fn has_pending(&self) -> bool {
        self.inputs.iter().any(|input| !input.chunks.is_empty())
    }

    /// True when every source has finished and its queue is drained.
    pub fn all_finished(&mut self) -> bool {
        for input in &mut self.inputs {
            if !input.finished && input.chunks.is_closed() && input.chunks.is_empty() {
                input.finished = true;
            }
        }
        self.inputs.iter().all(|input| input.finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_only_what_is_queued_and_sees_the_end() {
        let (tx, rx) = mpsc::channel(8);
        let mut batcher = Batcher::new(vec![rx]);
        let mut chunk = Batch::new();
        chunk.push(None, b"a", 0);
        tx.try_send(chunk.clone()).unwrap();
        tx.try_send(chunk.clone()).unwrap();
        assert!(batcher.has_pending());
        let cut = batcher.cut();
        assert_eq!(crate::record::partition_len(&cut[0]), 2);
        assert!(batcher.cut()[0].is_empty());
        assert!(!batcher.all_finished());
        drop(tx);
        assert!(batcher.all_finished());
    }
}
