//! When a pipeline cuts its next batch: the run's mode as a type.
//!
//! A [`Trigger`] looks at the sources' queues and the clock and answers
//! [`Decision::Cut`], [`Decision::Wait`] (until a deadline, or until woken by
//! new input or a request) or [`Decision::End`]. Batches replayed from the
//! batch log after a restart come before any trigger is asked.

use std::time::{Duration, Instant};

use crate::batcher::Batcher;

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Cut a batch now.
    Cut,
    /// Nothing to do until this deadline (`None`: until woken).
    Wait(Option<Instant>),
    /// The run is over: every source ended and nothing is left.
    End,
}

/// How long queued input may wait for more under [`Trigger::AvailableNow`].
pub const LINGER: Duration = Duration::from_millis(1);

/// The modes a pipeline runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch every batch interval, on the wall clock (Spark Streaming).
    ProcessingTime {
        /// The batch interval.
        interval: Duration,
        /// When the next batch is due.
        next_cut: Instant,
    },
    /// Batches back to back while input is queued; the run ends when every
    /// source is exhausted (Structured Streaming's `availableNow`). A batch is
    /// cut [`LINGER`] after input first waits (or at once when a queue is
    /// full or every source has ended), so that a burst that is arriving
    /// goes into one batch rather than its first chunk alone.
    AvailableNow {
        /// When the input now queued started waiting.
        since: Option<Instant>,
    },
    /// One unit of every source per batch (a file, a number of generator
    /// lines), batch times computed from the batch id: a batch is cut once
    /// every source's unit is complete (or the source ended).
    Deterministic,
}

impl Trigger {
    /// A processing-time trigger whose first batch is due one interval from now.
    pub fn processing_time(interval: Duration) -> Self {
        Self::ProcessingTime {
            interval,
            next_cut: Instant::now() + interval,
        }
    }

    /// When the batch cut now was due (for its scheduling delay).
    pub fn due(&self, now: Instant) -> Instant {
        match self {
            Self::ProcessingTime { next_cut, .. } => (*next_cut).min(now),
            Self::AvailableNow { since } => since.unwrap_or(now).min(now),
            Self::Deterministic => now,
        }
    }

    /// What to do at `now` with the queues in `batcher`.
    pub fn decide(&mut self, batcher: &mut Batcher, now: Instant) -> Decision {
        match *self {
            Self::ProcessingTime { next_cut, .. } => {
                if batcher.all_finished() && !batcher.has_pending() {
                    Decision::End
                } else if now >= next_cut {
                    Decision::Cut
                } else {
                    Decision::Wait(Some(next_cut))
                }
            }
            Self::AvailableNow { since } => {
                if !batcher.has_pending() {
                    return if batcher.all_finished() {
                        Decision::End
                    } else {
                        Decision::Wait(None)
                    };
                }
                let since = since.unwrap_or(now);
                *self = Self::AvailableNow { since: Some(since) };
                if now >= since + LINGER || batcher.any_full() || batcher.all_closed() {
                    Decision::Cut
                } else {
                    Decision::Wait(Some(since + LINGER))
                }
            }
            Self::Deterministic => {
                if batcher.fill_units() {
                    Decision::Cut
                } else {
                    Decision::Wait(None)
                }
            }
        }
    }

    /// A batch was cut at `now`: the next one is due an interval after this
    /// one was (or now, when the pipeline fell behind).
    pub fn cut(&mut self, now: Instant) {
        match self {
            Self::ProcessingTime { interval, next_cut } => {
                *next_cut += *interval;
                if *next_cut < now {
                    tracing::debug!("batch took longer than the batch interval");
                    *next_cut = now;
                }
            }
            Self::AvailableNow { since } => *since = None,
            Self::Deterministic => {}
        }
    }

    /// The pipeline resumes at `now` after a pause: the next batch is due
    /// one interval from now.
    pub fn resumed(&mut self, now: Instant) {
        match self {
            Self::ProcessingTime { interval, next_cut } => *next_cut = now + *interval,
            // Input held back by the pause is due from now, not from when
            // it arrived.
            Self::AvailableNow { since } => *since = None,
            Self::Deterministic => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Batch;
    use crate::source::Delivery;
    use tokio::sync::mpsc;

    fn chunk() -> Delivery {
        let mut batch = Batch::new();
        batch.push(None, b"a", 0);
        Delivery::Chunk(batch, None)
    }

    #[test]
    fn processing_time_waits_for_the_interval_and_catches_up_when_late() {
        let (tx, rx) = mpsc::channel(4);
        let mut batcher = Batcher::new(vec![rx]);
        let start = Instant::now();
        let mut trigger = Trigger::ProcessingTime {
            interval: Duration::from_millis(100),
            next_cut: start + Duration::from_millis(100),
        };
        assert_eq!(
            trigger.decide(&mut batcher, start),
            Decision::Wait(Some(start + Duration::from_millis(100)))
        );
        let late = start + Duration::from_millis(350);
        assert_eq!(trigger.decide(&mut batcher, late), Decision::Cut);
        assert_eq!(trigger.due(late), start + Duration::from_millis(100));
        trigger.cut(late);
        assert_eq!(trigger.due(late), late, "behind: the next batch is due at once");
        tx.try_send(chunk()).unwrap();
        drop(tx);
        assert_eq!(
            trigger.decide(&mut batcher, late),
            Decision::Cut,
            "queued input is cut first"
        );
        batcher.cut();
        assert_eq!(trigger.decide(&mut batcher, late), Decision::End);
    }

    #[test]
    fn deterministic_waits_for_every_unit_without_blocking() {
        let (first_tx, first) = mpsc::channel(4);
        let (second_tx, second) = mpsc::channel(4);
        let mut batcher = Batcher::new(vec![first, second]);
        let now = Instant::now();
        let mut trigger = Trigger::Deterministic;
        first_tx.try_send(chunk()).unwrap();
        first_tx.try_send(Delivery::BatchEnd).unwrap();
        assert_eq!(
            trigger.decide(&mut batcher, now),
            Decision::Wait(None),
            "the second unit is missing"
        );
        second_tx.try_send(chunk()).unwrap();
        assert_eq!(trigger.decide(&mut batcher, now), Decision::Wait(None));
        drop(second_tx);
        assert_eq!(
            trigger.decide(&mut batcher, now),
            Decision::Cut,
            "a source's end completes its unit"
        );
    }

    #[test]
    fn available_now_cuts_what_is_queued_and_ends_with_the_sources() {
        let (tx, rx) = mpsc::channel(4);
        let mut batcher = Batcher::new(vec![rx]);
        let now = Instant::now();
        let mut trigger = Trigger::AvailableNow { since: None };
        assert_eq!(trigger.decide(&mut batcher, now), Decision::Wait(None));
        tx.try_send(chunk()).unwrap();
        assert_eq!(
            trigger.decide(&mut batcher, now),
            Decision::Wait(Some(now + LINGER)),
            "more of the burst may be on its way"
        );
        tx.try_send(chunk()).unwrap();
        let later = now + LINGER;
        assert_eq!(trigger.decide(&mut batcher, later), Decision::Cut);
        assert_eq!(trigger.due(later), now, "due when its input started waiting");
        trigger.cut(later);
        assert_eq!(batcher.cut()[0].chunks.len(), 2, "one batch for both chunks");
        tx.try_send(chunk()).unwrap();
        drop(tx);
        assert_eq!(
            trigger.decide(&mut batcher, later),
            Decision::Cut,
            "the sources ended: no linger"
        );
        batcher.cut();
        assert_eq!(trigger.decide(&mut batcher, later), Decision::End);
    }
}
