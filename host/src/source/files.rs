//! Lines of every file that appears in a directory (Spark's
//! `textFileStream`).
//!
//! The directory is looked at every `poll-interval`; each regular file whose name
//! matches the glob and does not start with `.` is read once, line by line, in
//! name order. A look is one `stat` of the directory: it is listed only when
//! its modification time says it may have changed ([`Listing`]), so hundreds
//! of idle sources cost next to nothing. Files are expected to be moved into the directory atomically
//! (written elsewhere or under a dot-name, then renamed). Files present at
//! start are read too. A file that cannot be read is reported and skipped; the
//! others go on.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cap_std::fs::Dir;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{BatchInput, Closed, Source, SourceContext, SourceError, SourcePosition};
use crate::config::{
    DirPath, Key, KindContext, Settings, SourceConfig, SourceType, SpecError, duration, positive, required,
};

/// Settings of the files source (`type = "files"`).
#[derive(Debug, Clone)]
pub struct FilesSpec {
    /// The directory (opened through cap-std: files are read from inside it only).
    pub dir: DirPath,
    /// Which file names to read.
    pub glob: glob::Pattern,
    /// How often to look for new files.
    pub poll_interval: Duration,
    /// At most this many files per batch (Spark's `maxFilesPerTrigger`);
    /// under deterministic time, exactly this many (fewer only at the end).
    pub max_files_per_batch: Option<u64>,
}

impl SourceType for FilesSpec {
    const NAME: &'static str = "files";
    const KEYS: &'static [Key] = &[
        Key::text("path"),
        Key::text("glob"),
        Key::text("poll-interval"),
        Key::integer("max-files-per-batch"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let dir = required(settings.text("path"), "path", cx.offset, "a files source")?;
        let glob = match settings.text("glob") {
            Some(pattern) => glob::Pattern::new(pattern.get_ref()).map_err(|e| {
                (
                    pattern.span().start,
                    format!("invalid glob `{}`: {e}", pattern.get_ref()),
                )
            })?,
            None => glob::Pattern::new("*").expect("valid pattern"),
        };
        let poll_interval = match settings.text("poll-interval") {
            Some(text) => duration(text)?,
            None => Duration::from_millis(100),
        };
        Ok(Self {
            dir: cx.dir(dir, "path")?,
            glob,
            poll_interval,
            max_files_per_batch: positive(
                settings.integer("max-files-per-batch"),
                "max-files-per-batch",
                1 << 30,
            )?
            .map(|n| n as u64),
        })
    }
}

impl SourceConfig for FilesSpec {
    fn build(&self) -> Box<dyn Source> {
        Box::new(FilesSource::new(self.clone()))
    }

    /// The files of its directory, inside the pipeline's paths.
    fn reach(&self) -> crate::config::Reach {
        crate::config::Reach::Files
    }

    fn fixed_batches(&self) -> bool {
        self.max_files_per_batch.is_some()
    }
}

/// When a directory was last listed, to tell from one `stat` whether it
/// must be listed again. Adding, removing or renaming an entry sets the
/// directory's modification time to the (coarse) clock, so a time that has
/// not moved since a listing that began [`Listing::SETTLED`] after it means
/// no entry came since. A listing closer to the time than that (a change
/// may have landed in the same clock tick, and some file systems keep whole
/// seconds, or two) does not count, nor does one that failed, and the
/// directory is listed in full every [`Listing::FULL_EVERY`] looks whatever
/// its time says, for file systems that do not keep it.
#[derive(Debug, Default)]
struct Listing {
    /// The directory's modification time at the last listing, and when
    /// that listing began.
    last: Option<(SystemTime, SystemTime)>,
    /// The same for the listing under way.
    pending: Option<(SystemTime, SystemTime)>,
    /// Looks since the last listing.
    looks: u32,
}

impl Listing {
    /// How long after a modification time a listing must begin for the time to be trusted.
    const SETTLED: Duration = Duration::from_secs(2);
    /// A full listing at least this often (in looks).
    const FULL_EVERY: u32 = 30;

    /// Whether `dir` must be listed now; if so, call [`Listing::listed`]
    /// once it was.
    fn due(&mut self, dir: &Dir) -> bool {
        let now = SystemTime::now();
        let modified = dir
            .dir_metadata()
            .and_then(|meta| meta.modified())
            .map(cap_std::time::SystemTime::into_std)
            .ok();
        self.looks += 1;
        let unchanged = match (self.last, modified) {
            (Some((then, listed)), Some(modified)) => {
                modified == then && listed.duration_since(modified).is_ok_and(|d| d >= Self::SETTLED)
            }
            _ => false,
        };
        if unchanged && self.looks < Self::FULL_EVERY {
            return false;
        }
        self.looks = 0;
        self.last = None;
        self.pending = modified.map(|modified| (modified, now));
        true
    }

    /// The listing [`Listing::due`] asked for succeeded.
    fn listed(&mut self) {
        self.last = self.pending.take();
    }
}

/// A directory receiver.
pub struct FilesSource {
    dir: DirPath,
    glob: glob::Pattern,
    poll_interval: Duration,
    max_files_per_batch: Option<u64>,
}

impl FilesSource {
    /// Watches a directory as `settings` say.
    pub fn new(settings: FilesSpec) -> Self {
        Self {
            dir: settings.dir,
            glob: settings.glob,
            poll_interval: settings.poll_interval,
            max_files_per_batch: settings.max_files_per_batch,
        }
    }

    /// New files to read in `dir`, in name order.
    async fn list(&self, dir: &Arc<Dir>, seen: &HashSet<OsString>) -> std::io::Result<Vec<OsString>> {
        let (dir, glob, seen) = (dir.clone(), self.glob.clone(), seen.clone());
        let listed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<OsString>> {
            let mut names = Vec::new();
            for entry in dir.entries()? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(text) = name.to_str() else { continue };
                if text.starts_with('.') || !glob.matches(text) || seen.contains(&name) {
                    continue;
                }
                if entry.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        });
        listed.await.map_err(std::io::Error::other)?
    }
}

/// Reads bytes `start..end` of file `name` (to its end when `end` is
/// `None`) into chunks whose positions are offsets in that file.
/// `Ok(Err(_))`: the file could not be read. Records are stamped with the
/// time of `unit` ([`SourceContext::timestamp`]: the wall clock without a
/// deterministic clock).
async fn read_file(
    dir: &Arc<Dir>,
    name: &str,
    range: (u64, Option<u64>),
    ctx: &SourceContext,
    unit: u64,
) -> Result<std::io::Result<u64>, Closed> {
    let stamp = || ctx.timestamp(unit);
    let (start, end) = range;
    // Opened through the directory: a link out of it is refused.
    let opened = {
        let (dir, name) = (dir.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || dir.open(&name).map(|file| file.into_std()))
            .await
            .map_err(std::io::Error::other)
            .and_then(|opened| opened)
    };
    let mut file = match opened {
        Ok(file) => tokio::fs::File::from_std(file),
        Err(error) => return Ok(Err(error)),
    };
    if start > 0
        && let Err(error) = file.seek(std::io::SeekFrom::Start(start)).await
    {
        return Ok(Err(error));
    }
    let mut chunker = ctx.chunker();
    let file_name = name.to_owned();
    chunker.track(
        0,
        start,
        Box::new(move |_, offset| SourcePosition::File {
            name: file_name.clone(),
            offset,
        }),
    );
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let want = match end {
            Some(end) => (end.saturating_sub(start + total) as usize).min(buffer.len()),
            None => buffer.len(),
        };
        if want == 0 {
            break;
        }
        match file.read(&mut buffer[..want]).await {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                chunker.push_bytes(&buffer[..n], stamp()).await?;
            }
            Err(error) => {
                // Complete lines before the failure are delivered; a line cut
                // by the failure is not (it would be a truncated record).
                chunker.flush().await?;
                return Ok(Err(std::io::Error::new(
                    error.kind(),
                    format!("{error} (after {total} bytes)"),
                )));
            }
        }
    }
    chunker.finish_lines(stamp()).await?;
    if total == 0 && start == 0 && end.is_none() {
        chunker.mark_position().await?;
    }
    Ok(Ok(total))
}

#[async_trait::async_trait]
impl Source for FilesSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> Result<(), SourceError> {
        let shown = self.dir.path().to_owned();
        let dir = match self.dir.open(false) {
            Ok(dir) => Arc::new(dir),
            Err(error) => {
                return Err(ctx.error(format!("cannot watch {}: {error}", shown.display())));
            }
        };
        let mut seen: HashSet<OsString> = HashSet::new();
        // Files read in the current batch unit, and units completed.
        let (mut in_unit, mut unit) = (0u64, 0u64);
        if let Some(replay) = ctx.replay.clone() {
            // The file pieces of the batches logged before a crash, batch by
            // batch; then the rest of the file the last one stopped in.
            let first = replay.next_batch - replay.batches.len() as u64;
            for (batch, input) in (first..).zip(&replay.batches) {
                if let BatchInput::Files { segments } = input {
                    for segment in segments {
                        let range = (segment.start, Some(segment.end));
                        match read_file(&dir, &segment.name, range, &ctx, batch).await {
                            Err(Closed) => return Ok(()),
                            Ok(Ok(bytes)) if bytes == segment.end - segment.start => {}
                            Ok(Ok(bytes)) => {
                                return Err(ctx.error(format!(
                                    "cannot replay batch {batch}: {} has {bytes} bytes from offset {} where the batch log says {} (files must not change once in the directory)",
                                    shown.join(&segment.name).display(),
                                    segment.start,
                                    segment.end - segment.start
                                )));
                            }
                            Ok(Err(error)) => {
                                return Err(ctx.error(format!(
                                    "cannot read {} again to replay batch {batch}: {error}",
                                    shown.join(&segment.name).display()
                                )));
                            }
                        }
                    }
                }
                if ctx.end_batch().await.is_err() {
                    return Ok(());
                }
            }
            let progress = replay.progress_after();
            seen.extend(progress.finished_files.iter().map(OsString::from));
            if let Some(SourcePosition::File { name, offset }) = progress.position {
                match read_file(&dir, &name, (offset, None), &ctx, replay.next_batch).await {
                    Err(Closed) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(
                        source = %ctx.name, file = %name,
                        "cannot read the rest of the file being read before the restart: {error}"
                    ),
                }
                seen.insert(OsString::from(name));
            }
            unit = replay.next_batch;
        }
        let mut listing = Listing::default();
        loop {
            if !ctx.available_now && !listing.due(&dir) {
                tokio::select! {
                    _ = tokio::time::sleep(self.poll_interval) => {}
                    _ = ctx.stopped() => return Ok(()),
                }
                continue;
            }
            match self.list(&dir, &seen).await {
                Ok(names) => {
                    listing.listed();
                    for name in names {
                        if ctx.stopping() {
                            return Ok(());
                        }
                        let path = shown.join(&name);
                        let Some(text_name) = name.to_str() else { continue };
                        match read_file(&dir, text_name, (0, None), &ctx, unit).await {
                            Err(Closed) => return Ok(()),
                            Ok(Ok(bytes)) => {
                                tracing::debug!(source = %ctx.name, file = %path.display(), bytes, "read file")
                            }
                            Ok(Err(error)) => tracing::warn!(
                                source = %ctx.name, file = %path.display(),
                                "cannot read file, skipping it: {error}"
                            ),
                        }
                        seen.insert(name);
                        in_unit += 1;
                        if self.max_files_per_batch == Some(in_unit) {
                            if ctx.end_batch().await.is_err() {
                                return Ok(());
                            }
                            (in_unit, unit) = (0, unit + 1);
                        }
                    }
                }
                Err(error) => tracing::warn!(
                    source = %ctx.name, dir = %shown.display(),
                    "cannot list the directory: {error}"
                ),
            }
            if ctx.available_now {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = ctx.stopped() => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_modified(path: &std::path::Path, ago: Duration) {
        let dir = std::fs::File::open(path).unwrap();
        dir.set_modified(SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn a_directory_is_listed_again_only_when_its_time_moves_or_is_too_recent_to_trust() {
        let temp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(temp.path(), cap_std::ambient_authority()).unwrap();
        let mut listing = Listing::default();
        let look = |listing: &mut Listing| {
            let due = listing.due(&dir);
            if due {
                listing.listed();
            }
            due
        };
        set_modified(temp.path(), Duration::from_secs(10));
        assert!(look(&mut listing), "the first look lists");
        assert!(!look(&mut listing), "an old, unmoved time is trusted");
        // A new entry moves the time; so recent a time is not trusted.
        std::fs::write(temp.path().join("a.txt"), "a\n").unwrap();
        assert!(look(&mut listing));
        assert!(look(&mut listing));
        set_modified(temp.path(), Duration::from_secs(5));
        assert!(look(&mut listing), "a time that moved (even back) lists");
        // A listing that failed does not count.
        set_modified(temp.path(), Duration::from_secs(8));
        assert!(listing.due(&dir));
        assert!(look(&mut listing), "listed again after a failed listing");
        // Nothing moves: a full listing every FULL_EVERY looks all the same.
        let skipped = (0..Listing::FULL_EVERY)
            .take_while(|_| !look(&mut listing))
            .count();
        assert_eq!(skipped as u32, Listing::FULL_EVERY - 1);
    }
}
