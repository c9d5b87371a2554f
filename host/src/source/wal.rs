//! The write-ahead log of receivers that cannot rewind (socket, stdin), as
//! Spark's `receiver.writeAheadLog.enable`: complete lines are appended to a
//! log in the checkpoint directory — and synced, per the `wal-sync` policy —
//! before they count as received (before a socket producer gets its ack and
//! before they reach the batcher). Positions are byte offsets in the log, so
//! a batch's input is a range of it, and recovery reads the same range again.
//!
//! The log is a directory of segments named by the offset they start at. A
//! torn last line (a crash during a write) is cut off when the log is
//! opened; segments wholly behind the oldest kept checkpoint are deleted.

use crate::checkpoint::storage::{create_dir_durably, sync_dir};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Closed, LineChunker, SourceContext, SourcePosition};
use crate::source::BatchInput;

/// A new segment is started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;

/// When appended lines are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSync {
    /// After every block of lines, before it is acknowledged: nothing
    /// acknowledged is lost even if the machine loses power.
    Block,
    /// At most this long after a block; a block is acknowledged once it is
    /// written (it survives the process being killed, not a power loss).
    Interval(Duration),
}

/// An open write-ahead log.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: std::fs::File,
    segment_start: u64,
    segment_bytes: u64,
    end: u64,
    sync: WalSync,
    last_sync: Instant,
    dirty: bool,
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.wal")
}

/// The segments of the log in `dir`, by start offset.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segments: Vec<(u64, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let start = path.file_name()?.to_str()?.strip_suffix(".wal")?.parse().ok()?;
                Some((start, path))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    segments.sort();
    Ok(segments)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting a torn last line off.
    pub fn open(dir: &Path, sync: WalSync) -> std::io::Result<Self> {
        create_dir_durably(dir)?;
        let (segment_start, path) = match segments(dir)?.pop() {
            Some(last) => last,
            None => {
                let path = dir.join(segment_name(0));
                std::fs::File::create(&path)?;
                sync_dir(dir)?;
                (0, path)
            }
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut contents = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut contents)?;
        let complete = contents.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < contents.len() {
            tracing::warn!(
                wal = %path.display(),
                "cutting {} bytes of a line torn by a crash off the write-ahead log",
                contents.len() - complete
            );
            file.set_len(complete as u64)?;
            file.sync_all()?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            file,
            segment_start,
            segment_bytes: SEGMENT_BYTES,
            end: segment_start + complete as u64,
            sync,
            last_sync: Instant::now(),
            dirty: false,
        })
    }

    /// Offset just past the last line logged.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends complete lines (`lines` ends with `\n`) and syncs per the
    /// policy. Returns the new end offset.
    pub fn append(&mut self, lines: &[u8]) -> std::io::Result<u64> {
        debug_assert!(lines.last() == Some(&b'\n'));
        if self.end - self.segment_start >= self.segment_bytes {
            self.file.sync_all()?;
            self.segment_start = self.end;
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(segment_name(self.end)))?;
            sync_dir(&self.dir)?;
        }
        if let Err(error) = self.file.write_all(lines) {
            // Whatever part was written is a torn line: cut it off so the
            // log stays line-aligned.
            let _ = self.file.set_len(self.end - self.segment_start);
            return Err(error);
        }
        self.end += lines.len() as u64;
        self.dirty = true;
        match self.sync {
            WalSync::Block => self.sync_now()?,
            WalSync::Interval(interval) if self.last_sync.elapsed() >= interval => self.sync_now()?,
            WalSync::Interval(_) => {}
        }
        Ok(self.end)
    }

    fn sync_now(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The logged bytes `start..end` of the log in `dir`.
    pub fn read(dir: &Path, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity((end - start) as usize);
        let segments = segments(dir)?;
        for (index, (segment_start, path)) in segments.iter().enumerate() {
            let segment_end = segments.get(index + 1).map_or(u64::MAX, |next| next.0);
            if segment_end <= start || *segment_start >= end {
                continue;
            }
            let mut file = std::fs::File::open(path)?;
            let from = start.max(*segment_start);
            file.seek(SeekFrom::Start(from - segment_start))?;
            let want = end.min(segment_end) - from;
            let mut taken = file.take(want);
            taken.read_to_end(&mut out)?;
        }
        if out.len() as u64 != end - start {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the write-ahead log in {} ends before offset {end} (it was truncated or lost)",
                    dir.display()
                ),
            ));
        }
        Ok(out)
    }

    /// Deletes the segments of the log in `dir` that lie wholly before `offset`.
    pub fn truncate_before(dir: &Path, offset: u64) -> std::io::Result<()> {
        let segments = segments(dir)?;
        for (index, (_, path)) in segments.iter().enumerate() {
            if segments.get(index + 1).is_some_and(|next| next.0 <= offset) {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

/// Cuts a byte stream into blocks of complete lines for the log: what
/// follows the last line end waits for the next read.
#[derive(Debug, Default)]
pub struct CompleteLines {
    partial: Vec<u8>,
}

impl CompleteLines {
    /// The complete lines `bytes` finishes (with what was kept from
    /// before), each ending with `\n`; `None` while no line is complete.
    pub fn push(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let Some(last) = memchr::memrchr(b'\n', bytes) else {
            self.partial.extend_from_slice(bytes);
            return None;
        };
        self.partial.extend_from_slice(&bytes[..=last]);
        Some(std::mem::replace(&mut self.partial, bytes[last + 1..].to_vec()))
    }

    /// At the end of the input (and only there: a line cut by a stop or an
    /// error is not a line): the last line without its end, ended.
    pub fn finish(self) -> Option<Vec<u8>> {
        let mut line = self.partial;
        (!line.is_empty()).then(|| {
            line.push(b'\n');
            line
        })
    }
}

/// A receiver's intake through its write-ahead log: lines are logged, then
/// handed to the batcher in chunks whose positions are log offsets.
pub struct LoggedIntake {
    wal: Wal,
    chunker: LineChunker,
}

impl std::fmt::Debug for LoggedIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedIntake")
            .field("wal", &self.wal)
            .finish_non_exhaustive()
    }
}

/// What went wrong when taking lines in.
#[derive(Debug)]
pub enum IntakeError {
    /// The pipeline is gone.
    Closed,
    /// The log could not be written or read.
    Wal(std::io::Error),
}

impl From<Closed> for IntakeError {
    fn from(_: Closed) -> Self {
        Self::Closed
    }
}

impl LoggedIntake {
    /// Opens the log in `dir`; first replays what `ctx.replay` asks for (the
    /// logged batches, each followed by a batch end) and hands over what was
    /// logged after them, then is ready for new lines.
    pub async fn open(dir: &Path, sync: WalSync, ctx: &SourceContext) -> Result<Self, IntakeError> {
        let wal = Wal::open(dir, sync).map_err(IntakeError::Wal)?;
        let mut chunker = ctx.chunker();
        let position = || -> super::PositionOf { Box::new(|_, offset| SourcePosition::Wal { offset }) };
        let mut from = 0;
        if let Some(replay) = &ctx.replay {
            for input in &replay.batches {
                if let BatchInput::Wal { start, end } = input {
                    let lines = Wal::read(dir, *start, *end).map_err(IntakeError::Wal)?;
                    chunker.track(0, *start, position());
                    chunker.push_bytes(&lines, super::now_ms()).await?;
                    chunker.finish_lines(super::now_ms()).await?;
                }
                ctx.end_batch().await?;
            }
            if let Some(SourcePosition::Wal { offset }) = replay.progress_after().position {
                from = offset;
            }
        }
        if from > wal.end() {
            return Err(IntakeError::Wal(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the write-ahead log in {} ends at offset {}, before the recorded position {from}: its tail was lost (a power loss with an interval wal-sync?)",
                    dir.display(),
                    wal.end()
                ),
            )));
        }
        // Logged but in no batch yet (received just before the crash).
        chunker.track(0, from, position());
        if wal.end() > from {
            let lines = Wal::read(dir, from, wal.end()).map_err(IntakeError::Wal)?;
            chunker.push_bytes(&lines, super::now_ms()).await?;
            chunker.finish_lines(super::now_ms()).await?;
        }
        Ok(Self { wal, chunker })
    }

    /// Logs `lines` (complete lines, each ending with `\n`) and hands them
    /// to the batcher as one chunk.
    pub async fn take(&mut self, lines: &[u8], timestamp: i64) -> Result<(), IntakeError> {
        self.wal.append(lines).map_err(IntakeError::Wal)?;
        self.chunker.push_bytes(lines, timestamp).await?;
        self.chunker.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_wait_for_their_end() {
        let mut lines = CompleteLines::default();
        assert_eq!(lines.push(b"ab"), None);
        assert_eq!(lines.push(b"c\nd\ne").as_deref(), Some(&b"abc\nd\n"[..]));
        assert_eq!(lines.finish().as_deref(), Some(&b"e\n"[..]));
        assert_eq!(CompleteLines::default().finish(), None);
    }

    #[test]
    fn the_log_reads_back_ranges_across_segments_and_cuts_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), WalSync::Block).unwrap();
        assert_eq!(wal.append(b"a\nbb\n").unwrap(), 5);
        assert_eq!(wal.append(b"ccc\n").unwrap(), 9);
        drop(wal);
        // A torn write: half a line at the end.
        let segment = dir.path().join(segment_name(0));
        let mut file = std::fs::OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(b"dd").unwrap();
        let mut wal = Wal::open(dir.path(), WalSync::Block).unwrap();
        assert_eq!(wal.end(), 9);
        assert_eq!(Wal::read(dir.path(), 2, 9).unwrap(), b"bb\nccc\n");
        // A second segment, then truncation behind an offset in it.
        wal.segment_bytes = 9;
        wal.append(b"e\n").unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
        assert_eq!(Wal::read(dir.path(), 5, 11).unwrap(), b"ccc\ne\n");
        Wal::truncate_before(dir.path(), 10).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        assert!(Wal::read(dir.path(), 5, 11).is_err());
        assert_eq!(Wal::read(dir.path(), 9, 11).unwrap(), b"e\n");
    }
}
