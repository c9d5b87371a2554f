//! Rate control of receivers: how many records per second a source may hand
//! to the batcher (Spark's `spark.streaming.receiver.maxRate` and the rate
//! its backpressure sets).
//!
//! Every source may have a [`RateSpec`] (`max-rate`, `backpressure`,
//! `backpressure-min-rate`, `backpressure-initial-rate` on its
//! `[[source]]` table, read once for every kind). A source with one gets a [`RateLimiter`], shared by all its tasks
//! (every connection of a listening socket): a token bucket that paces the
//! chunks where the receiver hands them to its queue
//! ([`super::ChunkQueue::send`]). A paced receiver waits there, so a socket
//! source stops reading and TCP flow control slows its producer instead of
//! Weir buffering what it cannot take yet.
//!
//! The bucket holds at most [`PACE`] worth of records (its burst), and the
//! receivers cut chunks of at most that many records
//! ([`RateLimiter::chunk_limit`]), so that a low rate is a steady trickle
//! of small chunks rather than one whole chunk now and then: at 100
//! records/s, 5 records every 50 ms. The rate can change while the source
//! runs ([`RateLimiter::set_rate`], from the backpressure estimator).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The time a paced source's chunks span at most, and the burst its bucket
/// allows: over any window of `w`, a source limited to `r` records/s hands
/// over at most `r * (w + PACE)` records.
pub const PACE: Duration = Duration::from_millis(50);

/// The slowest rate backpressure sets by default (Spark's
/// `spark.streaming.backpressure.pid.minRate`), in records per second.
pub const DEFAULT_MIN_RATE: u64 = 100;

/// A source's rate settings (`max-rate`, `backpressure`,
/// `backpressure-min-rate`, `backpressure-initial-rate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateSpec {
    /// Records per second the source never exceeds; `None`: no bound.
    pub max_rate: Option<u64>,
    /// With backpressure: the lowest rate its estimator sets, in records
    /// per second. `None`: no backpressure.
    pub backpressure_min_rate: Option<u64>,
    /// With backpressure: the rate until its estimator sets the first one
    /// (Spark's `spark.streaming.backpressure.initialRate`); `None`:
    /// `max_rate`.
    pub backpressure_initial_rate: Option<u64>,
}

/// A token bucket shared by a source's tasks, at a rate that may change.
///
/// It is kept as the time at which the records handed over so far are paid
/// for (a "theoretical arrival time", as in GCRA): a chunk of `n` records
/// moves that time `n / rate` on, and may go once it is no more than
/// [`PACE`] ahead of now.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<Bucket>,
    /// The current rate (`f64` bits; `NaN`: unlimited), for readers.
    rate: AtomicU64,
    /// Records per chunk at the current rate (`usize::MAX`: unlimited).
    chunk_limit: AtomicUsize,
}

#[derive(Debug)]
struct Bucket {
    /// Records per second; `None`: unlimited.
    rate: Option<f64>,
    /// When the records handed over so far are paid for.
    paid_until: Instant,
}

impl RateLimiter {
    /// A limiter at `rate` records per second (`None`: unlimited, until
    /// [`RateLimiter::set_rate`] sets one).
    pub fn new(rate: Option<f64>) -> Self {
        let limiter = Self {
            bucket: Mutex::new(Bucket {
                rate: None,
                paid_until: Instant::now(),
            }),
            rate: AtomicU64::new(f64::NAN.to_bits()),
            chunk_limit: AtomicUsize::new(usize::MAX),
        };
        limiter.set_rate(rate);
        limiter
    }

    /// Sets the rate, in records per second (`None`: unlimited). Records
    /// already handed over stay paid for at the rate they were taken at.
    pub fn set_rate(&self, rate: Option<f64>) {
        let rate = rate.filter(|r| r.is_finite() && *r > 0.0);
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.rate = rate;
        self.rate
            .store(rate.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
        let limit = rate.map_or(usize::MAX, |r| (r * PACE.as_secs_f64()).floor().max(1.0) as usize);
        self.chunk_limit.store(limit, Ordering::Relaxed);
    }

    /// The rate now, in records per second; `None`: unlimited.
    pub fn rate(&self) -> Option<f64> {
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        (!rate.is_nan()).then_some(rate)
    }

    /// The most records a chunk should hold at the current rate: what
    /// [`PACE`] takes (at least 1).
    pub fn chunk_limit(&self) -> usize {
        self.chunk_limit.load(Ordering::Relaxed)
    }

    /// Takes `records` from the bucket at `now`; returns when they may be
    /// handed over (`None`: at once).
    pub fn reserve(&self, records: usize, now: Instant) -> Option<Instant> {
        if records == 0 {
            return None;
        }
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let rate = bucket.rate?;
        let start = bucket.paid_until.max(now);
        bucket.paid_until = start + Duration::from_secs_f64(records as f64 / rate);
        let at = bucket.paid_until.checked_sub(PACE)?;
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands over `chunks` chunks of `size` records as fast as the limiter
    /// allows, from `start`; returns when each went.
    fn schedule(limiter: &RateLimiter, start: Instant, chunks: usize, size: usize) -> Vec<Instant> {
        let mut now = start;
        (0..chunks)
            .map(|_| {
                if let Some(at) = limiter.reserve(size, now) {
                    now = at;
                }
                now
            })
            .collect()
    }

    #[test]
    fn a_limited_source_never_exceeds_its_rate_over_any_window() {
        let limiter = RateLimiter::new(Some(1000.0));
        assert_eq!(limiter.chunk_limit(), 50);
        let start = Instant::now();
        let times = schedule(&limiter, start, 200, 50);
        // 10,000 records at 1,000/s: the last chunk goes 9.95 s in (its
        // records are paid for at 10 s, a PACE of burst early).
        let last = times[199] - start;
        assert!((last.as_secs_f64() - 9.95).abs() < 1e-6, "{last:?}");
        for (i, a) in times.iter().enumerate() {
            for (j, b) in times.iter().enumerate().skip(i) {
                let records = (j - i + 1) * 50;
                let window = (*b - *a + PACE).as_secs_f64();
                assert!(records as f64 <= 1000.0 * window + 1e-6, "{records} in {window}s");
            }
        }
    }

    #[test]
    fn an_idle_source_gets_one_pace_of_burst_not_more() {
        let limiter = RateLimiter::new(Some(100.0));
        assert_eq!(limiter.chunk_limit(), 5, "100 records/s: 5 records per 50 ms");
        let start = Instant::now();
        // After a long idle time the first chunk goes at once, the second
        // waits for its records.
        let later = start + Duration::from_secs(60);
        assert_eq!(limiter.reserve(5, later), None);
        assert_eq!(limiter.reserve(5, later), Some(later + Duration::from_millis(50)));
    }

    #[test]
    fn the_rate_changes_and_can_be_lifted() {
        let limiter = RateLimiter::new(None);
        assert_eq!(limiter.rate(), None);
        assert_eq!(limiter.chunk_limit(), usize::MAX);
        let now = Instant::now();
        assert_eq!(limiter.reserve(1_000_000, now), None);
        limiter.set_rate(Some(20_000.0));
        assert_eq!(limiter.rate(), Some(20_000.0));
        assert_eq!(limiter.chunk_limit(), 1000);
        assert_eq!(limiter.reserve(1000, now), None);
        assert_eq!(limiter.reserve(1000, now), Some(now + Duration::from_millis(50)));
        limiter.set_rate(Some(0.5));
        assert_eq!(limiter.chunk_limit(), 1, "a chunk holds one record at least");
        limiter.set_rate(None);
        assert_eq!(limiter.reserve(1_000_000, now), None);
    }
}
