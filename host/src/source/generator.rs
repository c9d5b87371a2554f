//! Deterministic words text: the embedded default source of the demo and
//! the benchmarks. Line `i` of seed `s` is always the same words, so a run can
//! be checked against counts computed independently (see [`line()`]).

use std::time::Duration;

use super::{BatchInput, Source, SourceContext, SourceError, SourcePosition};
use crate::config::{
    Key, KindContext, Settings, SourceConfig, SourceType, SpecError, non_negative, positive,
};

/// Settings of the generator source (`type = "generator"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorSpec {
    /// Lines to produce; unlimited when `None`.
    pub lines: Option<u64>,
    /// Lines per second; unthrottled when `None`.
    pub rate: Option<u64>,
    /// Words per line.
    pub words_per_line: usize,
    /// Seed of the word sequence.
    pub seed: u64,
    /// Lines per batch: each batch gets exactly this many (fewer only at the end).
    pub records_per_batch: Option<u64>,
}

impl SourceType for GeneratorSpec {
    const NAME: &'static str = "generator";
    const KEYS: &'static [Key] = &[
        Key::integer("lines"),
        Key::integer("rate"),
        Key::integer("words-per-line"),
        Key::integer("seed"),
        Key::integer("records-per-batch"),
    ];

    fn parse(settings: &Settings, _: &KindContext<'_>) -> Result<Self, SpecError> {
        Ok(Self {
            lines: non_negative(settings.integer("lines"), "lines")?,
            rate: positive(settings.integer("rate"), "rate", usize::MAX)?.map(|r| r as u64),
            words_per_line: positive(settings.integer("words-per-line"), "words-per-line", 10_000)?
                .unwrap_or(8),
            seed: non_negative(settings.integer("seed"), "seed")?.unwrap_or(0),
            records_per_batch: positive(
                settings.integer("records-per-batch"),
                "records-per-batch",
                1 << 40,
            )?
            .map(|n| n as u64),
        })
    }
}

impl SourceConfig for GeneratorSpec {
    fn build(&self) -> Box<dyn Source> {
        Box::new(GeneratorSource::new(self.clone()))
    }

    /// No file and no network: it makes its lines up (`Files` is the
    /// variant for reaching nothing else).
    fn reach(&self) -> crate::config::Reach {
        crate::config::Reach::Files
    }

    fn fixed_batches(&self) -> bool {
        self.records_per_batch.is_some() && self.rate.is_none()
    }

    fn endless(&self) -> Option<&'static str> {
        self.lines.is_none().then_some("is a generator without `lines`")
    }
}

/// The vocabulary lines are drawn from.
pub const WORDS: [&str; 64] = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "stream",
    "batch",
    "window",
    "state",
    "river",
    "weir",
    "water",
    "flows",
    "through",
    "gate",
    "record",
    "key",
    "value",
    "partition",
    "shuffle",
    "reduce",
    "map",
    "filter",
    "sink",
    "source",
    "plugin",
    "wasm",
    "engine",
    "spark",
    "kafka",
    "socket",
    "file",
    "line",
    "word",
    "count",
    "sum",
    "time",
    "event",
    "late",
    "early",
    "fast",
    "slow",
    "data",
    "flow",
    "checkpoint",
    "log",
    "replay",
    "exactly",
    "once",
    "at",
    "least",
    "most",
    "and",
    "or",
    "of",
    "to",
    "in",
    "a",
    "is",
    "it",
    "on",
];

/// splitmix64: a tiny, good, stable mixing function.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Writes line `index` of the sequence for `seed` into `out` (cleared first).
/// Words are skewed towards the start of [`WORDS`], as real text is.
pub fn line(seed: u64, index: u64, words_per_line: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut state = mix(seed ^ mix(index));
    for word in 0..words_per_line {
        state = mix(state);
        // Minimum of two uniform draws: a simple skew towards frequent words.
        let a = (state & 0xffff) as usize % WORDS.len();
        let b = ((state >> 16) & 0xffff) as usize % WORDS.len();
        if word > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(WORDS[a.min(b)].as_bytes());
    }
}

/// The generator receiver.
pub struct GeneratorSource {
    settings: GeneratorSpec,
}

impl GeneratorSource {
    /// A generator with `settings`.
    pub fn new(settings: GeneratorSpec) -> Self {
        Self { settings }
    }
}

#[async_trait::async_trait]
impl Source for GeneratorSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), SourceError> {
        let settings = self.settings;
        let mut chunker = ctx.chunker();
        let mut text = Vec::new();
        let position = || -> super::PositionOf { Box::new(|lines, _| SourcePosition::Generator { lines }) };
        let mut index = 0u64;
        if let Some(replay) = &ctx.replay {
            // Lines of the batches logged before a crash, batch by batch.
            let first = replay.next_batch - replay.batches.len() as u64;
            for (batch, input) in (first..).zip(&replay.batches) {
                if let BatchInput::Generator { start, end } = input {
                    chunker.track(*start, 0, position());
                    let now = ctx.timestamp(batch);
                    for line_index in *start..*end {
                        line(settings.seed, line_index, settings.words_per_line, &mut text);
                        if chunker.push(&text, now).await.is_err() {
                            return Ok(());
                        }
                    }
                    if chunker.flush().await.is_err() {
                        return Ok(());
                    }
                }
                if ctx.end_batch().await.is_err() {
                    return Ok(());
                }
            }
            if let Some(SourcePosition::Generator { lines }) = replay.progress_after().position {
                index = lines;
            }
        }
        chunker.track(index, 0, position());
        let first_index = index;
        let total = settings.lines.unwrap_or(u64::MAX);
        // With a rate, produce in 10 ms slices; without one, in whole chunks
        // and let backpressure set the pace.
        let tick = Duration::from_millis(10);
        let per_tick = settings
            .rate
            .map(|rate| (rate as f64 * tick.as_secs_f64()).max(1.0) as u64);
        let started = tokio::time::Instant::now();
        let per_batch = settings.records_per_batch.unwrap_or(u64::MAX);
        while index < total {
            if ctx.stopping() {
                break;
            }
            let left_in_unit = per_batch - index % per_batch;
            let slice = per_tick
                .unwrap_or(ctx.chunk_records as u64)
                .min(total - index)
                .min(left_in_unit);
            let now = ctx.timestamp(index / per_batch);
            for _ in 0..slice {
                line(settings.seed, index, settings.words_per_line, &mut text);
                if chunker.push(&text, now).await.is_err() {
                    return Ok(());
                }
                index += 1;
            }
            if chunker.flush().await.is_err() {
                return Ok(());
            }
            if settings.records_per_batch.is_some()
                && index.is_multiple_of(per_batch)
                && ctx.end_batch().await.is_err()
            {
                return Ok(());
            }
            if let (Some(rate), Some(_)) = (settings.rate, per_tick) {
                let due = started + Duration::from_secs_f64((index - first_index) as f64 / rate as f64);
                let mut stop = ctx.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            } else {
                tokio::task::yield_now().await;
            }
        }
        let _ = chunker.flush().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_deterministic() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        line(7, 42, 8, &mut a);
        line(7, 42, 8, &mut b);
        assert_eq!(a, b);
        assert_eq!(a.split(|&c| c == b' ').count(), 8);
        line(8, 42, 8, &mut b);
        assert_ne!(a, b);
    }
}
