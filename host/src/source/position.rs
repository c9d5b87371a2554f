//! Where a source is: every chunk a receiver hands over carries the source's
//! position just after it, so the engine can log exactly which input each
//! batch holds, checkpoint where each source stands, and after a crash ask
//! the source to read the same input again ([`Replay`]).

use serde::{Deserialize, Serialize};

/// A source's position after some chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourcePosition {
    /// Generator lines produced so far.
    Generator {
        /// Lines produced.
        lines: u64,
    },
    /// The files source: how far into which file.
    File {
        /// File name in the watched directory.
        name: String,
        /// Bytes of the file consumed into complete records.
        offset: u64,
    },
    /// A source that logs what it receives: how far into its write-ahead log.
    Wal {
        /// Bytes of the log consumed into complete records.
        offset: u64,
    },
}

/// A piece of a file a batch read: `start..end` bytes of `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSegment {
    /// File name in the watched directory.
    pub name: String,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// What one source contributed to one batch, enough to read it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BatchInput {
    /// Generator lines `start..end`.
    Generator {
        /// First line.
        start: u64,
        /// One past the last line.
        end: u64,
    },
    /// Pieces of files, in reading order.
    Files {
        /// The pieces.
        segments: Vec<FileSegment>,
    },
    /// Write-ahead log bytes `start..end`.
    Wal {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// A source that keeps no position (it cannot be replayed).
    Untracked,
}

/// Where a source stands at a batch boundary: the position after the last
/// batch, plus what a files source has finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// The position after the last chunk taken (none before the first).
    pub position: Option<SourcePosition>,
    /// Files source: files read to the end (or moved past).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finished_files: Vec<String>,
}

impl SourceProgress {
    /// The input of a batch whose chunks ended at `positions` (in order),
    /// moving this progress on past them.
    pub fn advance(&mut self, positions: &[SourcePosition]) -> BatchInput {
        match positions.first().or(self.position.as_ref()) {
            None => BatchInput::Untracked,
            Some(SourcePosition::Generator { .. }) => {
                let start = match &self.position {
                    Some(SourcePosition::Generator { lines }) => *lines,
                    _ => 0,
                };
                let end = match positions.last() {
                    Some(SourcePosition::Generator { lines }) => *lines,
                    _ => start,
                };
                if let Some(last) = positions.last() {
                    self.position = Some(last.clone());
                }
                BatchInput::Generator { start, end }
            }
            Some(SourcePosition::Wal { .. }) => {
                let start = match &self.position {
                    Some(SourcePosition::Wal { offset }) => *offset,
                    _ => 0,
                };
                let end = match positions.last() {
                    Some(SourcePosition::Wal { offset }) => *offset,
                    _ => start,
                };
                if let Some(last) = positions.last() {
                    self.position = Some(last.clone());
                }
                BatchInput::Wal { start, end }
            }
            Some(SourcePosition::File { .. }) => {
                let mut segments: Vec<FileSegment> = Vec::new();
                for position in positions {
                    let SourcePosition::File { name, offset } = position else {
                        continue;
                    };
                    let start = match &self.position {
                        Some(SourcePosition::File {
                            name: current,
                            offset,
                        }) if current == name => *offset,
                        Some(SourcePosition::File { name: current, .. }) => {
                            self.finished_files.push(current.clone());
                            0
                        }
                        _ => 0,
                    };
                    match segments.last_mut() {
                        Some(last) if last.name == *name && last.end == start => last.end = *offset,
                        _ => segments.push(FileSegment {
                            name: name.clone(),
                            start,
                            end: *offset,
                        }),
                    }
                    self.position = Some(position.clone());
                }
                BatchInput::Files { segments }
            }
        }
    }
}

/// What a source must read again after a restart, and where it then goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Where the source stood at the restored checkpoint.
    pub progress: SourceProgress,
    /// The input of each batch logged after the checkpoint, in batch order:
    /// the source delivers each one followed by a batch end, before anything new.
    pub batches: Vec<BatchInput>,
    /// Id of the first batch after the replayed ones (units of deterministic
    /// sources are counted from it).
    pub next_batch: u64,
}

impl Replay {
    /// Where the source stands after the replayed batches.
    pub fn progress_after(&self) -> SourceProgress {
        let mut progress = self.progress.clone();
        for input in &self.batches {
            match input {
                BatchInput::Generator { end, .. } => {
                    progress.position = Some(SourcePosition::Generator { lines: *end });
                }
                BatchInput::Wal { end, .. } => progress.position = Some(SourcePosition::Wal { offset: *end }),
                BatchInput::Files { segments } => {
                    let positions: Vec<SourcePosition> = segments
                        .iter()
                        .map(|s| SourcePosition::File {
                            name: s.name.clone(),
                            offset: s.end,
                        })
                        .collect();
                    progress.advance(&positions);
                }
                BatchInput::Untracked => {}
            }
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, offset: u64) -> SourcePosition {
        SourcePosition::File {
            name: name.into(),
            offset,
        }
    }

    #[test]
    fn file_positions_become_segments_and_finished_files() {
        let mut progress = SourceProgress::default();
        let first = progress.advance(&[file("a", 10), file("a", 25), file("b", 5)]);
        assert_eq!(
            first,
            BatchInput::Files {
                segments: vec![
                    FileSegment {
                        name: "a".into(),
                        start: 0,
                        end: 25
                    },
                    FileSegment {
                        name: "b".into(),
                        start: 0,
                        end: 5
                    },
                ]
            }
        );
        assert_eq!(progress.finished_files, vec!["a".to_owned()]);
        let second = progress.advance(&[file("b", 9)]);
        assert_eq!(
            second,
            BatchInput::Files {
                segments: vec![FileSegment {
                    name: "b".into(),
                    start: 5,
                    end: 9
                }]
            }
        );
        let replay = Replay {
            progress: SourceProgress::default(),
            batches: vec![first, second],
            next_batch: 2,
        };
        assert_eq!(replay.progress_after(), progress);
    }

    #[test]
    fn generator_positions_are_line_ranges() {
        let mut progress = SourceProgress::default();
        let positions = [
            SourcePosition::Generator { lines: 100 },
            SourcePosition::Generator { lines: 250 },
        ];
        assert_eq!(
            progress.advance(&positions),
            BatchInput::Generator { start: 0, end: 250 }
        );
        assert_eq!(
            progress.advance(&[]),
            BatchInput::Generator { start: 250, end: 250 }
        );
    }
}
