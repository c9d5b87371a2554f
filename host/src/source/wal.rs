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

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions};
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

/// Where a source's write-ahead log lives: `wal/<source>` of the
/// pipeline's checkpoint directory, opened through cap-std from the
/// tenant's root when the paths are confined (no link planted in the
/// checkpoint directory leads out of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalLocation {
    /// The checkpoint directory.
    pub checkpoint_dir: PathBuf,
    /// The root it must stay inside, if any.
    pub confined_to: Option<PathBuf>,
    /// The source's name.
    pub source: String,
}

impl WalLocation {
    /// The log's directory, for messages.
    pub fn path(&self) -> PathBuf {
        self.checkpoint_dir.join(Self::relative(&self.source))
    }

    /// The log's directory inside the checkpoint directory.
    pub fn relative(source: &str) -> PathBuf {
        Path::new("wal").join(source)
    }

    /// Opens the log's directory, making it when missing.
    pub fn open(&self) -> std::io::Result<WalDir> {
        use crate::checkpoint::storage::LocalStorage;
        let storage = match &self.confined_to {
            Some(root) => LocalStorage::confined(root, &self.checkpoint_dir)?,
            None => LocalStorage::new(&self.checkpoint_dir)?,
        };
        Ok(WalDir {
            dir: storage.subdir(&Self::relative(&self.source))?,
            path: self.path(),
        })
    }
}

/// The open directory of a write-ahead log: every segment is opened,
/// listed and removed relative to it.
#[derive(Debug)]
pub struct WalDir {
    dir: Dir,
    path: PathBuf,
}

impl WalDir {
    /// The directory `dir` itself (outside any confinement: tests and tools).
    pub fn ambient(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: Dir::open_ambient_dir(dir, cap_std::ambient_authority())?,
            path: dir.to_owned(),
        })
    }

    /// Makes its entries durable (a new segment). A cap-std `Dir` is an
    /// `O_PATH` descriptor, which cannot be synced: `.` is opened for it.
    fn sync(&self) -> std::io::Result<()> {
        self.dir.open(".")?.sync_all()
    }

    fn open_segment(&self, name: &str, options: &OpenOptions) -> std::io::Result<std::fs::File> {
        Ok(self.dir.open_with(name, options)?.into_std())
    }
}

/// An open write-ahead log.
#[derive(Debug)]
pub struct Wal {
    dir: WalDir,
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

/// The start offset of the segment named `name`, if it is one.
fn segment_start(name: &str) -> Option<u64> {
    name.strip_suffix(".wal")?.parse().ok()
}

/// The segments of the log in `dir`, by start offset, with their names.
fn segments(dir: &WalDir) -> std::io::Result<Vec<(u64, String)>> {
    let mut segments: Vec<(u64, String)> = dir
        .dir
        .entries()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some((segment_start(&name)?, name))
        })
        .collect();
    segments.sort();
    Ok(segments)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting a torn last line off.
    pub fn open(dir: WalDir, sync: WalSync) -> std::io::Result<Self> {
        let (segment_start, name) = match segments(&dir)?.pop() {
            Some(last) => last,
            None => {
                let name = segment_name(0);
                dir.dir.create(&name)?;
                dir.sync()?;
                (0, name)
            }
        };
        let path = dir.path.join(&name);
        let mut file = dir.open_segment(&name, OpenOptions::new().create(true).read(true).append(true))?;
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
            dir,
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
            self.file = self.dir.open_segment(
                &segment_name(self.end),
                OpenOptions::new().create(true).append(true),
            )?;
            self.dir.sync()?;
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

    /// The logged bytes `start..end` of the log.
    pub fn read(&self, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
        let dir = &self.dir;
        let mut out = Vec::with_capacity((end - start) as usize);
        let segments = segments(dir)?;
        for (index, (segment_start, name)) in segments.iter().enumerate() {
            let segment_end = segments.get(index + 1).map_or(u64::MAX, |next| next.0);
            if segment_end <= start || *segment_start >= end {
                continue;
            }
            let mut file = dir.open_segment(name, OpenOptions::new().read(true))?;
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
                    dir.path.display()
                ),
            ));
        }
        Ok(out)
    }

    /// Deletes the segments of source `source`'s log in `storage` (its
    /// checkpoint directory) that lie wholly before `offset`.
    pub fn truncate_before(
        storage: &dyn crate::checkpoint::storage::CheckpointStorage,
        source: &str,
        offset: u64,
    ) -> std::io::Result<()> {
        let dir = WalLocation::relative(source);
        let dir = dir.to_string_lossy();
        let mut segments: Vec<(u64, String)> = storage
            .list(&dir)?
            .into_iter()
            .filter_map(|name| Some((segment_start(&name)?, name)))
            .collect();
        segments.sort();
        for (index, (_, name)) in segments.iter().enumerate() {
            if segments.get(index + 1).is_some_and(|next| next.0 <= offset) {
                storage.remove(&format!("{dir}/{name}"))?;
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
    pub async fn open(
        location: &WalLocation,
        sync: WalSync,
        ctx: &SourceContext,
    ) -> Result<Self, IntakeError> {
        let dir = location.open().map_err(IntakeError::Wal)?;
        let wal = Wal::open(dir, sync).map_err(IntakeError::Wal)?;
        let mut chunker = ctx.chunker();
        let position = || -> super::PositionOf { Box::new(|_, offset| SourcePosition::Wal { offset }) };
        let mut from = 0;
        if let Some(replay) = &ctx.replay {
            for input in &replay.batches {
                if let BatchInput::Wal { start, end } = input {
                    let lines = wal.read(*start, *end).map_err(IntakeError::Wal)?;
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
                    location.path().display(),
                    wal.end()
                ),
            )));
        }
        // Logged but in no batch yet (received just before the crash).
        chunker.track(0, from, position());
        if wal.end() > from {
            let lines = wal.read(from, wal.end()).map_err(IntakeError::Wal)?;
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
        let open = || WalDir::ambient(dir.path()).unwrap();
        let mut wal = Wal::open(open(), WalSync::Block).unwrap();
        assert_eq!(wal.append(b"a\nbb\n").unwrap(), 5);
        assert_eq!(wal.append(b"ccc\n").unwrap(), 9);
        drop(wal);
        // A torn write: half a line at the end.
        let segment = dir.path().join(segment_name(0));
        let mut file = std::fs::OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(b"dd").unwrap();
        let mut wal = Wal::open(open(), WalSync::Block).unwrap();
        assert_eq!(wal.end(), 9);
        assert_eq!(wal.read(2, 9).unwrap(), b"bb\nccc\n");
        // A second segment, then truncation behind an offset in it.
        wal.segment_bytes = 9;
        wal.append(b"e\n").unwrap();
        assert_eq!(segments(&open()).unwrap().len(), 2);
        assert_eq!(wal.read(5, 11).unwrap(), b"ccc\ne\n");
        // Truncation goes through the checkpoint storage the log sits in.
        drop(wal);
        let checkpoint = tempfile::tempdir().unwrap();
        let logged = checkpoint.path().join("wal/lines");
        std::fs::create_dir_all(checkpoint.path().join("wal")).unwrap();
        std::fs::rename(dir.path(), &logged).unwrap();
        let storage = crate::checkpoint::storage::LocalStorage::new(checkpoint.path()).unwrap();
        Wal::truncate_before(&storage, "lines", 10).unwrap();
        let wal = Wal::open(WalDir::ambient(&logged).unwrap(), WalSync::Block).unwrap();
        assert_eq!(segments(&WalDir::ambient(&logged).unwrap()).unwrap().len(), 1);
        assert!(wal.read(5, 11).is_err());
        assert_eq!(wal.read(9, 11).unwrap(), b"e\n");
    }
}
