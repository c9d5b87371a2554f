//! The batcher: cuts what the receivers have queued into micro-batches.
//!
//! Every receiver has its own bounded queue of chunks. At each batch
//! boundary [`Batcher::cut`] takes the chunks that are in each queue at that
//! moment (never more, so a fast source cannot make a batch grow without
//! bound) and concatenates them into one batch per source. While a
//! wall-clock batch waits for its interval to end, [`Batcher::stage`] moves
//! what arrives out of the queues into the batch, up to a memory bound, so
//! the queues stay short (they bound the memory of back-to-back batches)
//! while a batch can still hold a whole interval of a fast source. A source
//! with a fixed batch size marks the end of each unit
//! ([`Delivery::BatchEnd`]): a cut never crosses a mark, and under
//! deterministic time [`Batcher::cut_units`] waits for exactly one unit of
//! every source.

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::pipeline::Signal;
use crate::record::Partition;
use crate::source::{Delivery, SourcePosition};

/// What one source contributes to a batch: its chunks, and its position
/// after each chunk that had one.
#[derive(Debug, Default)]
pub struct SourceCut {
    /// The chunks, in arrival order.
    pub chunks: Partition,
    /// Positions after the chunks (none for sources that keep none).
    pub positions: Vec<SourcePosition>,
}

impl SourceCut {
    fn take(&mut self, chunk: crate::record::Batch, position: Option<SourcePosition>) {
        self.chunks.push(chunk);
        self.positions.extend(position);
    }
}

struct Input {
    chunks: mpsc::Receiver<Delivery>,
    finished: bool,
    /// Under deterministic time: the part of the source's next unit
    /// received so far, and whether its mark (or the source's end) came.
    staged: SourceCut,
    unit_complete: bool,
    /// Bytes of the chunks in `staged`.
    staged_bytes: usize,
}

/// Longest wait for a source's next delivery before its queue is looked at
/// again (a source that ends closes its queue without a delivery).
const UNIT_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Cuts micro-batches from the sources' queues.
pub struct Batcher {
    inputs: Vec<Input>,
}

impl Batcher {
    /// A batcher over the queues of the sources, in source order.
    pub fn new(queues: Vec<mpsc::Receiver<Delivery>>) -> Self {
        Self {
            inputs: queues
                .into_iter()
                .map(|chunks| Input {
                    chunks,
                    finished: false,
                    staged: SourceCut::default(),
                    unit_complete: false,
                    staged_bytes: 0,
                })
                .collect(),
        }
    }

    /// Takes the chunks queued now, up to the first unit mark of each
    /// source: the chunks of each source, in source order.
    pub fn cut(&mut self) -> Vec<SourceCut> {
        self.inputs
            .iter_mut()
            .map(|input| {
                let available = input.chunks.len();
                let mut chunks = std::mem::take(&mut input.staged);
                input.staged_bytes = 0;
                if std::mem::take(&mut input.unit_complete) {
                    // Staging stopped at a unit mark: the cut ends there.
                    return chunks;
                }
                for _ in 0..available.max(1) {
                    match input.chunks.try_recv() {
                        Ok(Delivery::Chunk(chunk, position)) => chunks.take(chunk, position),
                        Ok(Delivery::BatchEnd) => break,
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

    /// Moves what every source has queued into the next cut, without
    /// waiting, while that source's part of it stays under `max_bytes` and
    /// up to its first unit mark (for [`Batcher::cut`], not for units).
    pub fn stage(&mut self, max_bytes: usize) {
        for input in &mut self.inputs {
            while !input.unit_complete && input.staged_bytes < max_bytes {
                match input.chunks.try_recv() {
                    Ok(Delivery::Chunk(chunk, position)) => {
                        input.staged_bytes += chunk.size_bytes();
                        input.staged.take(chunk, position);
                    }
                    Ok(Delivery::BatchEnd) => input.unit_complete = true,
                    Err(TryRecvError::Disconnected) => {
                        input.finished = true;
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
        }
    }

    /// Moves what every source has delivered into its staged unit, without
    /// waiting; true when every source's unit is complete (its mark came,
    /// or the source ended).
    pub fn fill_units(&mut self) -> bool {
        for input in &mut self.inputs {
            while !input.unit_complete {
                match input.chunks.try_recv() {
                    Ok(Delivery::Chunk(chunk, position)) => input.staged.take(chunk, position),
                    Ok(Delivery::BatchEnd) => input.unit_complete = true,
                    Err(TryRecvError::Disconnected) => {
                        input.finished = true;
                        input.unit_complete = true;
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
        }
        self.inputs.iter().all(|input| input.unit_complete)
    }

    /// Takes exactly one unit of every source that has not finished: waits
    /// on `signal` (which sources raise with every delivery) for each
    /// source's next mark (or its end). When `interruptible`, returns early
    /// with what it has once a stop is asked for on `signal`; the flag says
    /// whether every unit is whole.
    pub fn cut_units(&mut self, signal: &Signal, interruptible: bool) -> (Vec<SourceCut>, bool) {
        let whole = loop {
            if self.fill_units() {
                break true;
            }
            if interruptible && signal.is_stopped() {
                break false;
            }
            // Woken by the next delivery; the deadline only covers a
            // source ending without one.
            signal.wait_until(Some(std::time::Instant::now() + UNIT_WAIT));
        };
        let cuts = self
            .inputs
            .iter_mut()
            .map(|input| {
                input.unit_complete = input.finished;
                input.staged_bytes = 0;
                std::mem::take(&mut input.staged)
            })
            .collect();
        (cuts, whole)
    }

    /// True when some source has queued records.
    pub fn has_pending(&self) -> bool {
        self.inputs
            .iter()
            .any(|input| !input.chunks.is_empty() || !input.staged.chunks.is_empty())
    }

    /// True when some source's queue is full (its receiver is held back).
    pub fn any_full(&self) -> bool {
        self.inputs
            .iter()
            .any(|input| input.chunks.len() >= input.chunks.max_capacity())
    }

    /// True when every source has ended (what it queued may still wait).
    pub fn all_closed(&self) -> bool {
        self.inputs
            .iter()
            .all(|input| input.finished || input.chunks.is_closed())
    }

    /// Chunks waiting in the sources' queues or staged for the next cut.
    pub fn queued(&self) -> usize {
        self.inputs
            .iter()
            .map(|input| input.chunks.len() + input.staged.chunks.len())
            .sum()
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
    use crate::record::Batch;

    #[test]
    fn a_cut_stops_at_a_unit_mark_and_units_wait_for_the_mark() {
        let (tx, rx) = mpsc::channel(8);
        let mut batcher = Batcher::new(vec![rx]);
        let mut chunk = Batch::new();
        chunk.push(None, b"a", 0);
        for _ in 0..2 {
            tx.try_send(Delivery::Chunk(chunk.clone(), None)).unwrap();
            tx.try_send(Delivery::BatchEnd).unwrap();
        }
        let at = SourcePosition::Generator { lines: 3 };
        tx.try_send(Delivery::Chunk(chunk.clone(), Some(at.clone())))
            .unwrap();
        assert_eq!(crate::record::partition_len(&batcher.cut()[0].chunks), 1);
        let stop = Signal::new();
        assert!(batcher.fill_units(), "the second unit is complete");
        assert_eq!(
            crate::record::partition_len(&batcher.cut_units(&stop, true).0[0].chunks),
            1
        );
        assert!(!batcher.fill_units(), "the third unit has no mark yet");
        drop(tx);
        // The last unit ends with the source.
        let last = batcher.cut_units(&stop, true).0.remove(0);
        assert_eq!(crate::record::partition_len(&last.chunks), 1);
        assert_eq!(last.positions, vec![at]);
        assert!(batcher.all_finished());
        assert!(batcher.cut_units(&stop, true).0[0].chunks.is_empty());
    }

    #[test]
    fn staging_empties_the_queue_up_to_the_memory_bound_and_a_unit_mark() {
        let (tx, rx) = mpsc::channel(4);
        let mut batcher = Batcher::new(vec![rx]);
        let mut chunk = Batch::new();
        chunk.push(None, &[b'a'; 100], 0);
        let size = chunk.size_bytes();
        for _ in 0..4 {
            tx.try_send(Delivery::Chunk(chunk.clone(), None)).unwrap();
        }
        batcher.stage(usize::MAX);
        // The queue is empty again: the receiver can go on.
        for _ in 0..4 {
            tx.try_send(Delivery::Chunk(chunk.clone(), None)).unwrap();
        }
        // Up to the bound: 6 chunks staged, 2 left queued.
        batcher.stage(6 * size);
        assert_eq!(batcher.queued(), 8);
        assert!(tx.try_send(Delivery::Chunk(chunk.clone(), None)).is_ok());
        assert!(tx.try_send(Delivery::Chunk(chunk.clone(), None)).is_ok());
        assert!(
            tx.try_send(Delivery::Chunk(chunk.clone(), None)).is_err(),
            "the queue holds what the bound kept out"
        );
        let cut = batcher.cut();
        assert_eq!(crate::record::partition_len(&cut[0].chunks), 6 + 4);
        // A unit mark ends the staged cut.
        let (tx, rx) = mpsc::channel(8);
        let mut batcher = Batcher::new(vec![rx]);
        tx.try_send(Delivery::Chunk(chunk.clone(), None)).unwrap();
        tx.try_send(Delivery::BatchEnd).unwrap();
        tx.try_send(Delivery::Chunk(chunk.clone(), None)).unwrap();
        batcher.stage(usize::MAX);
        assert_eq!(crate::record::partition_len(&batcher.cut()[0].chunks), 1);
        assert_eq!(crate::record::partition_len(&batcher.cut()[0].chunks), 1);
    }

    #[test]
    fn cuts_only_what_is_queued_and_sees_the_end() {
        let (tx, rx) = mpsc::channel(8);
        let mut batcher = Batcher::new(vec![rx]);
        let mut chunk = Batch::new();
        chunk.push(None, b"a", 0);
        tx.try_send(Delivery::Chunk(chunk.clone(), None)).unwrap();
        tx.try_send(Delivery::Chunk(chunk.clone(), None)).unwrap();
        assert!(batcher.has_pending());
        let cut = batcher.cut();
        assert_eq!(crate::record::partition_len(&cut[0].chunks), 2);
        assert!(batcher.cut()[0].chunks.is_empty());
        assert!(!batcher.all_finished());
        drop(tx);
        assert!(batcher.all_finished());
    }
}
