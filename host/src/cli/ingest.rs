//! `weir bench --suite ingest`: how fast lines come in over a loopback TCP
//! socket. A feeder process of its own (`weir bench-feeder`, hidden) listens
//! on an ephemeral port of 127.0.0.1, accepts one connection and writes
//! benchmark text to it as fast as it can; the pipeline is `socket` (connect
//! mode, like Spark's `socketTextStream`) → `split-words` (Wasm) →
//! reduce-by-key count, in this process.
//!
//! The feeder writes a block of [`BLOCK_LINES`] generated lines (the first
//! lines of the corpus, about 15 MB of `zipf` text) over and over, so that
//! generating text does not compete with the pipeline for the cores; the
//! bench builds the same block, so it knows how many words any number of
//! lines holds, and checks the counts against it.
//!
//! Two runs:
//!
//! - **1 s batches** (processing time, as a streaming job runs): the
//!   pipeline runs for a fixed time and is then stopped gracefully; lines
//!   ingested per second is the lines received over that time (a graceful
//!   stop processes everything received, and the line the stop cut off as
//!   far as it came: its words are checked to be at most the whole line's).
//! - **available-now**: a fixed number of lines, batches back to back, timed
//!   from the pipeline's start to its end (after the feeder closed and every
//!   line was counted).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use weir::engine::Engine;
use weir::pipeline::{RunOptions, StopMode};

use super::bench::{BatchCollector, Spread, TotalSink, prepare, wordcount_toml};
use super::corpus::{Corpus, CorpusKind};
use super::process::{ChildUsage, peak_rss, reset_peak_rss, wait_measured};

/// Lines of the block the feeder repeats.
pub const BLOCK_LINES: u64 = 1 << 18;

/// The feeder's text: the first [`BLOCK_LINES`] lines of a corpus, and the
/// words before each line.
pub struct FeedText {
    text: Vec<u8>,
    /// Byte offset after line `i` (its newline included).
    line_ends: Vec<usize>,
    /// Words in lines `0..i`, for `i` in `0..=BLOCK_LINES`.
    words_before: Vec<u64>,
}

impl FeedText {
    /// The block of `corpus`.
    pub fn new(corpus: &Corpus) -> Self {
        let mut text = Vec::with_capacity(BLOCK_LINES as usize * 64);
        let mut line_ends = Vec::with_capacity(BLOCK_LINES as usize);
        let mut words_before = Vec::with_capacity(BLOCK_LINES as usize + 1);
        let mut words = 0;
        words_before.push(0);
        for index in 0..BLOCK_LINES {
            words += corpus.append_lines(index, index + 1, &mut text);
            line_ends.push(text.len());
            words_before.push(words);
        }
        Self {
            text,
            line_ends,
            words_before,
        }
    }

    /// The first `lines` lines of the block (at most all of it).
    pub fn first_lines(&self, lines: u64) -> &[u8] {
        match lines.min(BLOCK_LINES) {
            0 => &[],
            n => &self.text[..self.line_ends[n as usize - 1]],
        }
    }

    /// Words in the first `lines` lines of the feeder's stream (the block
    /// over and over).
    pub fn words_in_first(&self, lines: u64) -> u64 {
        let (blocks, rest) = (lines / BLOCK_LINES, lines % BLOCK_LINES);
        blocks * self.words_before[BLOCK_LINES as usize] + self.words_before[rest as usize]
    }
}

/// `weir bench-feeder`: listens on an ephemeral port of 127.0.0.1, prints
/// `listening ADDRESS` on `out`, accepts one connection and writes `lines`
/// lines of `corpus` (without end when `None`) to it as fast as it can,
/// then closes it and prints `sent LINES lines in SECONDS s`. A reader that
/// goes away ends it too.
pub fn feed(corpus: CorpusKind, lines: Option<u64>, mut out: impl Write) -> anyhow::Result<()> {
    let text = FeedText::new(&Corpus::new(corpus, 0));
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
    writeln!(out, "listening {}", listener.local_addr()?)?;
    out.flush()?;
    let (mut stream, _) = listener.accept().context("cannot accept the reader")?;
    let started = Instant::now();
    let limit = lines.unwrap_or(u64::MAX);
    let mut sent = 0u64;
    while sent < limit {
        let block = (limit - sent).min(BLOCK_LINES);
        match stream.write_all(text.first_lines(block)) {
            Ok(()) => sent += block,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                writeln!(out, "the reader left after at most {sent} lines")?;
                return Ok(());
            }
            Err(error) => return Err(error).context("cannot write to the reader"),
        }
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .context("cannot close the connection")?;
    writeln!(
        out,
        "sent {sent} lines in {:.3} s",
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// How the ingest pipeline cuts batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// A batch every interval, for a fixed time.
    Interval {
        /// The batch interval.
        interval: Duration,
        /// How long the pipeline runs.
        duration: Duration,
    },
    /// Back to back over a fixed number of lines.
    AvailableNow {
        /// Lines the feeder sends.
        lines: u64,
    },
}

/// What one ingest run measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// How it ran.
    pub mode: IngestMode,
    /// Lines received (and counted).
    pub lines: u64,
    /// Words counted: the words of those lines (the last one maybe cut
    /// off by the stop).
    pub words: u64,
    /// The time the lines came in over (see the module's documentation).
    pub elapsed: Duration,
    /// Lines per batch, of the batches but the first and the last.
    pub lines_per_batch: Spread<u64>,
    /// Batches run.
    pub batches: usize,
    /// Processing time of the batches.
    pub processing: Spread,
    /// Peak resident memory of this process during the run.
    pub peak_rss: u64,
    /// The feeder's time, CPU time and memory.
    pub feeder: ChildUsage,
}

impl IngestReport {
    /// Lines received per second.
    pub fn lines_per_second(&self) -> f64 {
        self.lines as f64 / self.elapsed.as_secs_f64()
    }

    /// Words counted per second.
    pub fn words_per_second(&self) -> f64 {
        self.words as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the ingest benchmark once in `mode`: the feeder (`weir` with the
/// hidden `bench-feeder` command) writing `corpus`, the pipeline on
/// `engine` with `partitions` partitions and the `split-words` component at
/// `plugin`.
pub fn ingest(
    engine: &Engine,
    weir: &Path,
    plugin: &Path,
    corpus: CorpusKind,
    partitions: usize,
    mode: IngestMode,
) -> anyhow::Result<IngestReport> {
    let text = FeedText::new(&Corpus::new(corpus, 0));
    let mut command = Command::new(weir);
    command.args(["bench-feeder", "--corpus", corpus.name()]);
    if let IngestMode::AvailableNow { lines } = mode {
        command.arg("--lines").arg(lines.to_string());
    }
    let started = Instant::now();
    let mut feeder = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start the feeder {}", weir.display()))?;
    let mut said = BufReader::new(feeder.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    let read = said.read_line(&mut first);
    let Some(address) = first.trim().strip_prefix("listening ").filter(|_| read.is_ok()) else {
        let _ = feeder.kill();
        let _ = wait_measured(feeder, started);
        return Err(anyhow!("the feeder did not start: {first:?} {read:?}"));
    };
    let interval = match mode {
        IngestMode::Interval { interval, .. } => humantime::format_duration(interval).to_string(),
        IngestMode::AvailableNow { .. } => "1s".to_owned(),
    };
    let pipeline = wordcount_toml(
        "bench-ingest",
        &interval,
        partitions,
        plugin,
        &format!("type = \"socket\"\naddress = \"{address}\""),
    );
    let counted = Arc::new(AtomicU64::new(0));
    let run = || -> anyhow::Result<_> {
        let prepared = prepare(
            engine,
            &pipeline,
            false,
            "counts",
            Box::new(TotalSink(counted.clone())),
        )?;
        reset_peak_rss();
        let started = Instant::now();
        let handle = engine.start(
            prepared,
            RunOptions {
                available_now: matches!(mode, IngestMode::AvailableNow { .. }),
                ..RunOptions::default()
            },
        )?;
        let collector = BatchCollector::start(&handle);
        let elapsed = match mode {
            IngestMode::Interval { duration, .. } => {
                std::thread::sleep(duration);
                let elapsed = started.elapsed();
                handle.stop(StopMode::Graceful);
                handle.wait()?;
                elapsed
            }
            IngestMode::AvailableNow { .. } => {
                handle.wait()?;
                started.elapsed()
            }
        };
        Ok((elapsed, collector.finish().0, peak_rss()))
    };
    let outcome = run();
    if outcome.is_err() {
        let _ = feeder.kill();
    }
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut said, &mut rest);
    let feeder = wait_measured(feeder, started).context("cannot wait for the feeder")?;
    let (elapsed, batches, peak_rss) = outcome?;
    if feeder.exit_code != Some(0) {
        return Err(anyhow!("the feeder failed: {rest}"));
    }
    let lines: u64 = batches.iter().map(|report| report.records_in).sum();
    let counted = counted.load(Ordering::Relaxed);
    let words = text.words_in_first(lines);
    let expected = match mode {
        IngestMode::AvailableNow { lines: sent } => {
            if lines != sent {
                return Err(anyhow!(
                    "the feeder sent {sent} lines, the pipeline received {lines}"
                ));
            }
            words..=words
        }
        // A stop drops the line it cut off: every line received is whole.
        IngestMode::Interval { .. } => words..=words,
    };
    if !expected.contains(&counted) {
        return Err(anyhow!(
            "the ingest run counted {counted} words in {lines} lines instead of {words}"
        ));
    }
    let middle = batches.get(1..batches.len().saturating_sub(1)).unwrap_or(&[]);
    Ok(IngestReport {
        mode,
        lines,
        words: counted,
        elapsed,
        lines_per_batch: Spread::of(middle.iter().map(|report| report.records_in).collect()),
        batches: batches.len(),
        processing: Spread::of(batches.iter().map(|report| report.processing_time).collect()),
        peak_rss,
        feeder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feeders_stream_has_the_counted_words() {
        let corpus = Corpus::new(CorpusKind::Zipf, 0);
        let text = FeedText::new(&corpus);
        let mut expected = Vec::new();
        let words = corpus.append_lines(0, 1_000, &mut expected);
        assert_eq!(text.first_lines(1_000), &expected[..]);
        assert_eq!(text.words_in_first(1_000), words);
        let block = text.words_in_first(BLOCK_LINES);
        assert_eq!(text.words_in_first(2 * BLOCK_LINES + 1_000), 2 * block + words);
        assert_eq!(text.first_lines(0), b"");
        assert_eq!(text.first_lines(u64::MAX).len(), text.text.len());
    }

    #[test]
    fn the_feeder_writes_its_lines_and_closes() {
        let (tx, rx) = std::sync::mpsc::channel();
        struct Lines(std::sync::mpsc::Sender<String>, Vec<u8>);
        impl Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.1.extend_from_slice(bytes);
                while let Some(end) = self.1.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.1.drain(..=end).collect();
                    let _ = self.0.send(String::from_utf8_lossy(&line).trim().to_owned());
                }
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let feeder =
            std::thread::spawn(move || feed(CorpusKind::Words64, Some(300_000), Lines(tx, Vec::new())));
        let first = rx.recv().unwrap();
        let address = first.strip_prefix("listening ").unwrap();
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        let mut received = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut received).unwrap();
        feeder.join().unwrap().unwrap();
        assert!(rx.recv().unwrap().starts_with("sent 300000 lines"));
        assert_eq!(received.iter().filter(|&&b| b == b'\n').count(), 300_000);
        let text = FeedText::new(&Corpus::new(CorpusKind::Words64, 0));
        assert_eq!(&received[..text.text.len()], &text.text[..]);
        let words = received
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .count();
        assert_eq!(words as u64, text.words_in_first(300_000));
    }
}
