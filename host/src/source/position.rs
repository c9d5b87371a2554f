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
    /// The Kafka source: the next offset to read in every partition it reads
    /// (every partition appears, with its starting offset, before its first
    /// record).
    Kafka {
        /// Next offset per topic partition, sorted by topic and partition.
        offsets: Vec<PartitionOffset>,
    },
    /// The Redis Streams source: the last entry read of every stream it
    /// reads (every stream appears, with where it starts, before its first
    /// record).
    RedisStream {
        /// Per stream, sorted by stream key.
        streams: Vec<StreamCursor>,
    },
}

/// How far the Redis Streams source has read one stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamCursor {
    /// The stream's key.
    pub stream: String,
    /// The id of the last entry read (`0-0` before the first).
    pub id: String,
    /// Entries read of this stream since the pipeline's first run (counts a
    /// batch's entries, so that a replay can tell whether any are gone).
    pub read: u64,
}

/// The entries of one Redis stream a batch read: ids after `after`
/// through `through`, `entries` of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRange {
    /// The stream's key.
    pub stream: String,
    /// The id of the last entry read before the batch (exclusive).
    pub after: String,
    /// The id of the batch's last entry (inclusive).
    pub through: String,
    /// How many entries the batch read in between.
    pub entries: u64,
}

/// The next offset to read in one Kafka topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionOffset {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The next offset to read.
    pub offset: i64,
}

/// The records of one Kafka topic partition a batch read: offsets
/// `start..end` (control records of transactions included in the span).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// First offset.
    pub start: i64,
    /// One past the last offset read.
    pub end: i64,
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
    /// Offset ranges of Kafka partitions, one per partition the source
    /// reads (empty ranges included: they record where a partition stood).
    Kafka {
        /// The ranges, sorted by topic and partition.
        ranges: Vec<OffsetRange>,
    },
    /// Entry ranges of Redis streams, one per stream the source reads
    /// (empty ranges included).
    RedisStream {
        /// The ranges, sorted by stream key.
        ranges: Vec<StreamRange>,
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
            Some(SourcePosition::Kafka { .. }) => {
                // A partition starts where the last batch left it, or where
                // this batch first mentions it (the receiver announces a
                // partition with its starting offset before its records).
                let mut starts: std::collections::BTreeMap<(&str, i32), i64> = Default::default();
                let previous = self.position.iter().chain(positions);
                for position in previous {
                    if let SourcePosition::Kafka { offsets } = position {
                        for at in offsets {
                            starts.entry((&at.topic, at.partition)).or_insert(at.offset);
                        }
                    }
                }
                let last = positions.last().or(self.position.as_ref());
                let ranges = match last {
                    Some(SourcePosition::Kafka { offsets }) => offsets
                        .iter()
                        .map(|at| OffsetRange {
                            topic: at.topic.clone(),
                            partition: at.partition,
                            start: starts
                                .get(&(at.topic.as_str(), at.partition))
                                .copied()
                                .unwrap_or(at.offset),
                            end: at.offset,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if let Some(last) = positions.last() {
                    self.position = Some(last.clone());
                }
                BatchInput::Kafka { ranges }
            }
            Some(SourcePosition::RedisStream { .. }) => {
                // A stream starts where the last batch left it, or where
                // this batch first mentions it.
                let mut starts: std::collections::BTreeMap<&str, &StreamCursor> = Default::default();
                for position in self.position.iter().chain(positions) {
                    if let SourcePosition::RedisStream { streams } = position {
                        for cursor in streams {
                            starts.entry(&cursor.stream).or_insert(cursor);
                        }
                    }
                }
                let last = positions.last().or(self.position.as_ref());
                let ranges = match last {
                    Some(SourcePosition::RedisStream { streams }) => streams
                        .iter()
                        .map(|end| {
                            let start = starts.get(end.stream.as_str()).copied().unwrap_or(end);
                            StreamRange {
                                stream: end.stream.clone(),
                                after: start.id.clone(),
                                through: end.id.clone(),
                                entries: end.read.saturating_sub(start.read),
                            }
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if let Some(last) = positions.last() {
                    self.position = Some(last.clone());
                }
                BatchInput::RedisStream { ranges }
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
                BatchInput::Kafka { ranges } => {
                    progress.position = Some(SourcePosition::Kafka {
                        offsets: ranges
                            .iter()
                            .map(|range| PartitionOffset {
                                topic: range.topic.clone(),
                                partition: range.partition,
                                offset: range.end,
                            })
                            .collect(),
                    });
                }
                BatchInput::RedisStream { ranges } => {
                    let read_before = |stream: &str| match &progress.position {
                        Some(SourcePosition::RedisStream { streams }) => streams
                            .iter()
                            .find(|cursor| cursor.stream == stream)
                            .map_or(0, |cursor| cursor.read),
                        _ => 0,
                    };
                    let streams = ranges
                        .iter()
                        .map(|range| StreamCursor {
                            stream: range.stream.clone(),
                            id: range.through.clone(),
                            read: read_before(&range.stream) + range.entries,
                        })
                        .collect();
                    progress.position = Some(SourcePosition::RedisStream { streams });
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

    fn kafka(offsets: &[(&str, i32, i64)]) -> SourcePosition {
        SourcePosition::Kafka {
            offsets: offsets
                .iter()
                .map(|&(topic, partition, offset)| PartitionOffset {
                    topic: topic.into(),
                    partition,
                    offset,
                })
                .collect(),
        }
    }

    fn range(topic: &str, partition: i32, start: i64, end: i64) -> OffsetRange {
        OffsetRange {
            topic: topic.into(),
            partition,
            start,
            end,
        }
    }

    #[test]
    fn kafka_positions_become_offset_ranges_from_where_partitions_were_announced() {
        let mut progress = SourceProgress::default();
        // Partition 0 announced at 5, partition 1 at 0; then records.
        let first = progress.advance(&[
            kafka(&[("t", 0, 5), ("t", 1, 0)]),
            kafka(&[("t", 0, 9), ("t", 1, 3)]),
        ]);
        assert_eq!(
            first,
            BatchInput::Kafka {
                ranges: vec![range("t", 0, 5, 9), range("t", 1, 0, 3)]
            }
        );
        // A partition added while running joins with its announced start.
        let second = progress.advance(&[
            kafka(&[("t", 0, 9), ("t", 1, 7), ("t", 2, 0)]),
            kafka(&[("t", 0, 12), ("t", 1, 7), ("t", 2, 4)]),
        ]);
        assert_eq!(
            second,
            BatchInput::Kafka {
                ranges: vec![range("t", 0, 9, 12), range("t", 1, 3, 7), range("t", 2, 0, 4)]
            }
        );
        // No chunk: every partition keeps its place, with an empty range.
        let third = progress.advance(&[]);
        assert_eq!(
            third,
            BatchInput::Kafka {
                ranges: vec![range("t", 0, 12, 12), range("t", 1, 7, 7), range("t", 2, 4, 4)]
            }
        );
        let replay = Replay {
            progress: SourceProgress::default(),
            batches: vec![first, second, third],
            next_batch: 3,
        };
        assert_eq!(replay.progress_after(), progress);
    }

    fn cursors(at: &[(&str, &str, u64)]) -> SourcePosition {
        SourcePosition::RedisStream {
            streams: at
                .iter()
                .map(|&(stream, id, read)| StreamCursor {
                    stream: stream.into(),
                    id: id.into(),
                    read,
                })
                .collect(),
        }
    }

    fn entries(stream: &str, after: &str, through: &str, entries: u64) -> StreamRange {
        StreamRange {
            stream: stream.into(),
            after: after.into(),
            through: through.into(),
            entries,
        }
    }

    #[test]
    fn redis_stream_cursors_become_entry_ranges_with_counts() {
        // A restart: the checkpoint had read 4 entries of `a`.
        let mut progress = SourceProgress {
            position: Some(cursors(&[("a", "5-0", 4)])),
            finished_files: Vec::new(),
        };
        let start = progress.clone();
        let first = progress.advance(&[
            cursors(&[("a", "5-0", 4), ("b", "0-0", 0)]),
            cursors(&[("a", "9-1", 7), ("b", "3-0", 2)]),
        ]);
        assert_eq!(
            first,
            BatchInput::RedisStream {
                ranges: vec![entries("a", "5-0", "9-1", 3), entries("b", "0-0", "3-0", 2)]
            }
        );
        let second = progress.advance(&[]);
        assert_eq!(
            second,
            BatchInput::RedisStream {
                ranges: vec![entries("a", "9-1", "9-1", 0), entries("b", "3-0", "3-0", 0)]
            }
        );
        let replay = Replay {
            progress: start,
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
