//! Backpressure: the rate of each paced source, set after every batch from
//! how the batch went (Spark Streaming's `RateController` with its
//! `PIDRateEstimator`).
//!
//! Each source with `backpressure = true` has its own [`PidRateEstimator`],
//! fed after each batch with the batch's time, the records *that source*
//! delivered to it, the batch's processing time and its scheduling delay;
//! the rate it computes goes to the source's [`RateLimiter`], bounded by
//! `max-rate` when the source has one. Until the second batch with records
//! the source runs at `backpressure-initial-rate` or `max-rate` (the lower),
//! or unpaced, as in Spark.
//!
//! Backpressure acts under the processing-time trigger only: under
//! `--available-now` batches run back to back, with no interval to keep
//! up with, and deterministic batches hold fixed units (the configuration
//! refuses it there); `max-rate` paces a source under every trigger.
//! Replayed batches are not paced: after a restart the logged batches are
//! read again at full speed, and pacing starts once the last one is cut.

use std::sync::Arc;
use std::time::Duration;

use crate::source::rate::{RateLimiter, RateSpec};

/// Spark's PID rate estimator (`org.apache.spark.streaming.scheduler.rate.PIDRateEstimator`).
///
/// After each batch, with `processing_rate` = records / processing time:
///
/// ```text
/// error            = latest_rate - processing_rate
/// historical_error = scheduling_delay * processing_rate / batch_interval
/// d_error          = (error - latest_error) / seconds since the last update
/// new_rate         = max(latest_rate - kp * error - ki * historical_error - kd * d_error, min_rate)
/// ```
///
/// The first batch only records its processing rate as the latest rate;
/// batches without records, without processing time or not later than the
/// last one change nothing.
#[derive(Debug, Clone)]
pub struct PidRateEstimator {
    batch_interval_ms: f64,
    proportional: f64,
    integral: f64,
    derivative: f64,
    min_rate: f64,
    first_run: bool,
    latest_time_ms: i64,
    latest_rate: f64,
    latest_error: f64,
}

impl PidRateEstimator {
    /// Spark's default gains: proportional 1.0.
    pub const PROPORTIONAL: f64 = 1.0;
    /// Spark's default gains: integral 0.2.
    pub const INTEGRAL: f64 = 0.2;
    /// Spark's default gains: derivative 0.0.
    pub const DERIVATIVE: f64 = 0.0;

    /// An estimator with Spark's default gains for batches of
    /// `batch_interval`, never going below `min_rate` records per second.
    pub fn new(batch_interval: Duration, min_rate: f64) -> Self {
        Self::with_gains(
            batch_interval,
            Self::PROPORTIONAL,
            Self::INTEGRAL,
            Self::DERIVATIVE,
            min_rate,
        )
    }

    /// An estimator with the given gains (each at least 0) and minimum rate
    /// (above 0).
    pub fn with_gains(
        batch_interval: Duration,
        proportional: f64,
        integral: f64,
        derivative: f64,
        min_rate: f64,
    ) -> Self {
        debug_assert!(proportional >= 0.0 && integral >= 0.0 && derivative >= 0.0 && min_rate > 0.0);
        Self {
            batch_interval_ms: (batch_interval.as_secs_f64() * 1e3).max(1e-3),
            proportional,
            integral,
            derivative,
            min_rate,
            first_run: true,
            latest_time_ms: -1,
            latest_rate: -1.0,
            latest_error: -1.0,
        }
    }

    /// The rate after a batch at `time_ms` (milliseconds since the epoch)
    /// that got `records` records, took `processing` and started
    /// `scheduling_delay` after it was due; `None` when this batch sets no
    /// rate.
    pub fn compute(
        &mut self,
        time_ms: i64,
        records: u64,
        processing: Duration,
        scheduling_delay: Duration,
    ) -> Option<f64> {
        let processing_ms = processing.as_secs_f64() * 1e3;
        if time_ms <= self.latest_time_ms || records == 0 || processing_ms <= 0.0 {
            return None;
        }
        let since_update = (time_ms - self.latest_time_ms) as f64 / 1e3;
        let processing_rate = records as f64 / processing_ms * 1e3;
        let error = self.latest_rate - processing_rate;
        let historical_error =
            scheduling_delay.as_secs_f64() * 1e3 * processing_rate / self.batch_interval_ms;
        let d_error = (error - self.latest_error) / since_update;
        let new_rate = (self.latest_rate
            - self.proportional * error
            - self.integral * historical_error
            - self.derivative * d_error)
            .max(self.min_rate);
        self.latest_time_ms = time_ms;
        if self.first_run {
            self.latest_rate = processing_rate;
            self.latest_error = 0.0;
            self.first_run = false;
            None
        } else {
            self.latest_rate = new_rate;
            self.latest_error = error;
            Some(new_rate)
        }
    }
}

/// One source's pacing.
#[derive(Debug)]
struct SourceRate {
    limiter: Arc<RateLimiter>,
    max_rate: Option<f64>,
    /// The rate pacing starts at.
    initial_rate: Option<f64>,
    estimator: Option<PidRateEstimator>,
    /// The lowest rate backpressure set, and how many times it set one.
    lowest: Option<f64>,
    updates: u64,
}

/// What a source's pacing did over a run, for the run summary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateReport {
    /// The source's `max-rate`.
    pub max_rate: Option<f64>,
    /// The rate it was held to at the end (`None`: unlimited).
    pub rate: Option<f64>,
    /// The lowest rate backpressure set.
    pub lowest: Option<f64>,
    /// How many times backpressure set a rate.
    pub updates: u64,
}

/// The pacing of every source of a pipeline, in source order (`None` for
/// sources that are not paced).
#[derive(Debug)]
pub(crate) struct SourceRates {
    sources: Vec<Option<SourceRate>>,
    /// False while logged batches are replayed.
    pacing: bool,
}

impl SourceRates {
    /// The pacing of sources with `specs` in a pipeline whose batches come
    /// every `batch_interval` (`None`: no interval, so no backpressure);
    /// with `replaying`, no source is paced until [`SourceRates::start`].
    pub(crate) fn new(specs: &[RateSpec], batch_interval: Option<Duration>, replaying: bool) -> Self {
        let sources = specs
            .iter()
            .map(|spec| {
                let max_rate = spec.max_rate.map(|r| r as f64);
                let estimator = batch_interval
                    .zip(spec.backpressure_min_rate)
                    .map(|(interval, min)| PidRateEstimator::new(interval, min as f64));
                if max_rate.is_none() && estimator.is_none() {
                    return None;
                }
                // The initial rate is backpressure's: without an estimator
                // the source runs at `max-rate`.
                let initial = estimator
                    .as_ref()
                    .and(spec.backpressure_initial_rate)
                    .map(|r| r as f64);
                let initial_rate = match (initial, max_rate) {
                    (Some(initial), Some(max)) => Some(initial.min(max)),
                    (initial, max) => initial.or(max),
                };
                Some(SourceRate {
                    limiter: Arc::new(RateLimiter::new(if replaying { None } else { initial_rate })),
                    max_rate,
                    initial_rate,
                    estimator,
                    lowest: None,
                    updates: 0,
                })
            })
            .collect();
        Self {
            sources,
            pacing: !replaying,
        }
    }

    /// The token bucket of source `index`, if it is paced.
    pub(crate) fn limiter(&self, index: usize) -> Option<Arc<RateLimiter>> {
        self.sources[index].as_ref().map(|source| source.limiter.clone())
    }

    /// Starts pacing (after the replayed batches), at the initial rate;
    /// true when pacing starts now (false when it had started).
    pub(crate) fn start(&mut self) -> bool {
        if std::mem::replace(&mut self.pacing, true) {
            return false;
        }
        for source in self.sources.iter_mut().flatten() {
            source.limiter.set_rate(source.initial_rate);
        }
        true
    }

    /// Feeds a completed batch to every estimator: its time, the records of
    /// each source, its processing time and scheduling delay. Returns true
    /// when a rate changed.
    pub(crate) fn batch_completed(
        &mut self,
        time_ms: i64,
        per_source: &[usize],
        processing: Duration,
        scheduling_delay: Duration,
    ) -> bool {
        if !self.pacing {
            return false;
        }
        let mut changed = false;
        for (source, &records) in self.sources.iter_mut().zip(per_source) {
            let Some(source) = source else { continue };
            let Some(estimator) = &mut source.estimator else {
                continue;
            };
            let Some(rate) = estimator.compute(time_ms, records as u64, processing, scheduling_delay) else {
                continue;
            };
            // Spark's `RateLimiter.updateRate`: bounded by the maximum.
            let rate = source.max_rate.map_or(rate, |max| rate.min(max));
            source.limiter.set_rate(Some(rate));
            source.lowest = Some(source.lowest.map_or(rate, |low| low.min(rate)));
            source.updates += 1;
            changed = true;
        }
        changed
    }

    /// The rate each source is held to now (`None`: unlimited).
    pub(crate) fn rates(&self) -> Vec<Option<f64>> {
        self.sources
            .iter()
            .map(|source| source.as_ref().and_then(|s| s.limiter.rate()))
            .collect()
    }

    /// What each source's pacing did (`None`: not paced).
    pub(crate) fn reports(&self) -> Vec<Option<RateReport>> {
        self.sources
            .iter()
            .map(|source| {
                source.as_ref().map(|s| RateReport {
                    max_rate: s.max_rate,
                    rate: s.limiter.rate(),
                    lowest: s.lowest,
                    updates: s.updates,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    /// Values worked out by hand from Spark's formula (interval 1 s,
    /// kp 1.0, ki 0.2, kd 0.0, min rate 100).
    #[test]
    fn the_pid_estimator_follows_sparks_formula() {
        let mut pid = PidRateEstimator::new(ms(1000), 100.0);
        // First batch: 5,000 records in 500 ms, a processing rate of 10,000/s,
        // recorded as the latest rate; no rate yet.
        assert_eq!(pid.compute(1_000, 5_000, ms(500), ms(0)), None);
        // Second: 3,000 records in 1,500 ms (2,000/s), 500 ms late:
        // error = 10,000 - 2,000 = 8,000; historical = 500 * 2,000 / 1,000
        // = 1,000; new = 10,000 - 8,000 - 0.2 * 1,000 = 1,800.
        let second = pid.compute(2_000, 3_000, ms(1_500), ms(500)).unwrap();
        assert!(close(second, 1_800.0), "{second}");
        // Third: 1,800 records in 900 ms (2,000/s), on time: error = -200,
        // historical = 0; new = 1,800 + 200 = 2,000.
        let third = pid.compute(3_000, 1_800, ms(900), ms(0)).unwrap();
        assert!(close(third, 2_000.0), "{third}");
        // Fourth: 2,000 records in 1,250 ms (1,600/s), 250 ms late:
        // error = 400, historical = 250 * 1,600 / 1,000 = 400;
        // new = 2,000 - 400 - 80 = 1,520.
        let fourth = pid.compute(4_000, 2_000, ms(1_250), ms(250)).unwrap();
        assert!(close(fourth, 1_520.0), "{fourth}");
        // A collapse of throughput stops at the minimum rate: 10 records in
        // 1 s, 5 s late: 1,520 - 1,510 - 0.2 * 50 = 0 → 100.
        let floor = pid.compute(5_000, 10, ms(1_000), ms(5_000)).unwrap();
        assert!(close(floor, 100.0), "{floor}");
    }

    #[test]
    fn the_pid_estimator_ignores_empty_instant_and_old_batches() {
        let mut pid = PidRateEstimator::new(ms(1000), 100.0);
        assert_eq!(pid.compute(1_000, 0, ms(10), ms(0)), None, "no records");
        assert_eq!(pid.compute(1_000, 10, ms(0), ms(0)), None, "no processing time");
        assert_eq!(pid.compute(1_000, 1_000, ms(100), ms(0)), None, "the first batch");
        assert_eq!(pid.compute(1_000, 1_000, ms(100), ms(0)), None, "not later");
        assert_eq!(pid.compute(900, 1_000, ms(100), ms(0)), None, "earlier");
        let rate = pid.compute(2_000, 1_000, ms(100), ms(0)).unwrap();
        assert!(close(rate, 10_000.0), "{rate}");
    }

    #[test]
    fn the_derivative_term_uses_the_time_since_the_last_update() {
        // kd = 0.5 (Spark's default is 0): with error going from 0 to
        // 10,000 - 4,000 = 6,000 over 2 s, d_error = 3,000; new = 10,000 -
        // 6,000 - 0 - 1,500 = 2,500.
        let mut pid = PidRateEstimator::with_gains(ms(1000), 1.0, 0.2, 0.5, 100.0);
        assert_eq!(pid.compute(1_000, 1_000, ms(100), ms(0)), None);
        let rate = pid.compute(3_000, 4_000, ms(1_000), ms(0)).unwrap();
        assert!(close(rate, 2_500.0), "{rate}");
    }

    #[test]
    fn backpressure_is_bounded_by_max_rate_and_waits_for_the_replay() {
        let spec = RateSpec {
            max_rate: Some(5_000),
            backpressure_min_rate: Some(100),
            backpressure_initial_rate: None,
        };
        let mut rates = SourceRates::new(&[spec, RateSpec::default()], Some(ms(1000)), true);
        assert!(rates.limiter(1).is_none(), "an unpaced source has no bucket");
        assert_eq!(rates.rates(), [None, None], "not paced while replaying");
        assert!(!rates.batch_completed(1_000, &[1_000, 5], ms(100), ms(0)));
        assert!(rates.start());
        assert!(!rates.start(), "once");
        assert_eq!(rates.rates(), [Some(5_000.0), None]);
        // 1,000 records in 100 ms: 10,000/s, then 20,000/s: bounded by 5,000.
        assert!(!rates.batch_completed(2_000, &[1_000, 5], ms(100), ms(0)));
        assert!(rates.batch_completed(3_000, &[2_000, 5], ms(100), ms(0)));
        assert_eq!(rates.rates(), [Some(5_000.0), None]);
        // 1,000 records in 1 s, on time: 10,000 - 9,000 = 1,000.
        assert!(rates.batch_completed(4_000, &[1_000, 5], ms(1_000), ms(0)));
        assert_eq!(rates.rates(), [Some(1_000.0), None]);
        let report = rates.reports()[0].unwrap();
        assert_eq!(report.lowest, Some(1_000.0));
        assert_eq!(report.updates, 2);
        assert_eq!(rates.reports()[1], None);
    }

    #[test]
    fn pacing_starts_at_the_initial_rate_bounded_by_max_rate() {
        let spec = |initial, max| RateSpec {
            max_rate: max,
            backpressure_min_rate: Some(100),
            backpressure_initial_rate: initial,
        };
        let specs = [
            spec(Some(1_000), None),
            spec(Some(1_000), Some(500)),
            spec(None, Some(500)),
            spec(None, None),
        ];
        let rates = SourceRates::new(&specs, Some(ms(1000)), false);
        assert_eq!(rates.rates(), [Some(1_000.0), Some(500.0), Some(500.0), None]);
        assert!(
            rates.limiter(3).is_some(),
            "backpressure paces a source without max-rate"
        );
        // Without an interval (--available-now) there is no backpressure:
        // only `max-rate` paces.
        let rates = SourceRates::new(&specs, None, false);
        assert_eq!(rates.rates(), [None, Some(500.0), Some(500.0), None]);
        assert!(rates.limiter(0).is_none() && rates.limiter(3).is_none());
    }
}
