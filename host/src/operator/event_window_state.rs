//! One partition's state of an event-time window stage
//! ([`super::event_window::EventTimeWindow`]): per open window (by its
//! start), each key's reduction so far, in a [`RunningResult`] changed in
//! place for the keys a batch brings.
//!
//! **Spilling.** The windows are kept in memory up to the partition's share
//! of the stage's `state-memory`; past it the windows with the oldest starts
//! spill to disk whole, one file each (the newest windows take most records;
//! an old one waits for the watermark and only the records that arrive out
//! of order, yet not behind the watermark, touch it). A spilled window
//! comes back to memory when a record touches it, or when it closes in
//! `append` mode (to be emitted).
//!
//! **Checkpoints** are incremental ([`crate::checkpoint::incremental`]): a
//! partition's entries are its windows' keys, keyed `0x00` + the window's
//! start (big endian with the sign bit flipped, so in start order) + `0x00`
//! for a record without a key or `0x01` and the key, valued the record's
//! timestamp and value; and one entry `0x01` with the stage's largest
//! timestamp seen and its watermark. A part lists the keys touched since
//! the previous part (tracked as window start and key hash) and removes the
//! keys of the windows closed since, so its size follows the records, not
//! the windows.

use std::collections::BTreeMap;
use std::io::Write;

use super::running::{RunningEntry, RunningResult, key_hash};
use super::window_state::{SpillPlace, SpilledBatch, spill_path};
use crate::checkpoint::incremental::PartWriter;
use crate::record::Batch;
use crate::state::StateError;

/// The first byte of a window key's entry.
const WINDOW_TAG: u8 = 0;
/// The first byte (and the whole key) of the watermark's entry.
const WATERMARK_TAG: u8 = 1;
/// Bookkeeping bytes counted per key touched since the last part.
const TOUCHED_ENTRY_BYTES: usize = 24;
/// Bookkeeping bytes counted per key of a window closed since the last part
/// (besides the key).
const CLOSED_ENTRY_BYTES: usize = 16;
/// Bookkeeping bytes counted per spilled window closed since the last part
/// (its keys stay in its file).
const CLOSED_SPILLED_BYTES: usize = 64;

fn write_error(error: std::io::Error) -> StateError {
    StateError(format!(
        "cannot write the event-time window's checkpoint part: {error}"
    ))
}

/// An open window: one record per key.
#[derive(Debug)]
enum OpenWindow {
    /// Held in memory.
    Memory(RunningResult),
    /// Spilled to disk.
    Disk(SpilledBatch),
}

impl OpenWindow {
    fn memory_bytes(&self) -> usize {
        match self {
            OpenWindow::Memory(result) => result.memory_bytes(),
            OpenWindow::Disk(_) => 0,
        }
    }

    fn keys(&self) -> usize {
        match self {
            OpenWindow::Memory(result) => result.len(),
            OpenWindow::Disk(spilled) => spilled.records(),
        }
    }

    /// The window's records, read back from disk when spilled.
    fn result(&self) -> Result<std::borrow::Cow<'_, RunningResult>, StateError> {
        match self {
            OpenWindow::Memory(result) => Ok(std::borrow::Cow::Borrowed(result)),
            OpenWindow::Disk(spilled) => Ok(std::borrow::Cow::Owned(result_of(&spilled.load()?))),
        }
    }
}

/// A window's result from its records.
fn result_of(records: &Batch) -> RunningResult {
    let mut result = RunningResult::default();
    for record in records {
        result.set(record.key, record.value, record.timestamp, 1);
    }
    result
}

/// The keys of a window closed since the last checkpoint part, which the
/// next part removes.
#[derive(Debug)]
enum ClosedWindow {
    /// The keys, with empty values.
    Keys(Batch),
    /// The window's spill file, read when the part is written.
    Spilled(SpilledBatch),
}

/// What changed in a partition since the last checkpoint part.
#[derive(Debug, Default)]
struct Changes {
    /// Window start and key hash of every key touched since.
    touched: hashbrown::HashSet<(i64, u64), foldhash::fast::FixedState>,
    /// The windows closed since.
    closed: Vec<(i64, ClosedWindow)>,
    /// Memory counted for `touched` and `closed`.
    bytes: usize,
}

/// The stage's progress in event time, checkpointed with its windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventClock {
    /// The largest timestamp seen.
    pub max_seen: i64,
    /// Records older than this are late.
    pub watermark: i64,
}

/// One partition's open windows. They change only through
/// [`EventWindows::apply`] and [`EventWindows::close`] (and restores),
/// which keep the changes for the next checkpoint part.
#[derive(Debug, Default)]
pub struct EventWindows {
    windows: BTreeMap<i64, OpenWindow>,
    /// Since the last checkpoint part; `None` when not known (the next part
    /// lists the whole partition).
    changes: Option<Changes>,
    /// Set once a spill failed (warned about once; the windows stay in memory).
    spill_failed: bool,
}

impl EventWindows {
    /// Starts of the open windows, oldest first.
    pub fn starts(&self) -> impl Iterator<Item = i64> + '_ {
        self.windows.keys().copied()
    }

    /// Brings window `start` back to memory when it is spilled. It changes
    /// nothing else: a batch loads the windows it needs before any call.
    pub fn load(&mut self, start: i64) -> Result<(), StateError> {
        if let Some(window) = self.windows.get_mut(&start)
            && let OpenWindow::Disk(spilled) = window
        {
            *window = OpenWindow::Memory(result_of(&spilled.load()?));
        }
        Ok(())
    }

    /// Window `start`'s result, when open and in memory ([`EventWindows::load`]).
    pub fn window(&self, start: i64) -> Option<&RunningResult> {
        match self.windows.get(&start) {
            Some(OpenWindow::Memory(result)) => Some(result),
            _ => None,
        }
    }

    /// Sets the keys of `merged` in window `start` (opened when new).
    /// `touch_limit` bounds the memory of what is tracked for the next
    /// checkpoint part (past it, the part lists the partition whole).
    pub fn apply(&mut self, start: i64, merged: &Batch, touch_limit: usize) -> Result<(), StateError> {
        self.load(start)?;
        let window = self
            .windows
            .entry(start)
            .or_insert_with(|| OpenWindow::Memory(RunningResult::default()));
        let OpenWindow::Memory(result) = window else {
            unreachable!("loaded above");
        };
        for record in merged {
            result.set(record.key, record.value, record.timestamp, 1);
            if let Some(changes) = &mut self.changes
                && changes.touched.insert((start, key_hash(record.key)))
            {
                changes.bytes += TOUCHED_ENTRY_BYTES;
            }
        }
        self.check_tracked(touch_limit);
        Ok(())
    }

    /// Closes window `start`. With `emit`, returns its result (read back
    /// when spilled); without, a spilled window is not read: its file
    /// lists the keys the next checkpoint part removes.
    pub fn close(
        &mut self,
        start: i64,
        emit: bool,
        touch_limit: usize,
    ) -> Result<Option<RunningResult>, StateError> {
        if emit {
            self.load(start)?;
        }
        let closed = match self.windows.remove(&start) {
            None => return Ok(None),
            Some(OpenWindow::Memory(result)) => {
                let keys = self.changes.as_mut().map(|changes| {
                    let mut keys = Batch::with_capacity(result.len(), 0);
                    for entry in result.iter() {
                        keys.push(entry.key(), b"", 0);
                        changes.bytes += CLOSED_ENTRY_BYTES + entry.key().map_or(0, <[u8]>::len);
                    }
                    ClosedWindow::Keys(keys)
                });
                (keys, Some(result))
            }
            Some(OpenWindow::Disk(spilled)) => {
                let keys = self.changes.as_mut().map(|changes| {
                    changes.bytes += CLOSED_SPILLED_BYTES;
                    ClosedWindow::Spilled(spilled)
                });
                (keys, None)
            }
        };
        let (keys, result) = closed;
        if let (Some(changes), Some(keys)) = (&mut self.changes, keys) {
            changes.closed.push((start, keys));
        }
        self.check_tracked(touch_limit);
        Ok(result.filter(|_| emit))
    }

    fn check_tracked(&mut self, touch_limit: usize) {
        if self
            .changes
            .as_ref()
            .is_some_and(|changes| changes.bytes > touch_limit)
        {
            self.changes = None;
        }
    }

    /// Keys in open windows, and those of them on disk.
    pub fn keys(&self) -> (usize, usize) {
        let mut keys = (0, 0);
        for window in self.windows.values() {
            keys.0 += window.keys();
            if matches!(window, OpenWindow::Disk(_)) {
                keys.1 += window.keys();
            }
        }
        keys
    }

    /// Bytes the partition holds in memory: its windows and what it tracks
    /// for the next checkpoint part.
    pub fn memory_bytes(&self) -> usize {
        self.windows_bytes() + self.changes.as_ref().map_or(0, |changes| changes.bytes)
    }

    fn windows_bytes(&self) -> usize {
        self.windows.values().map(OpenWindow::memory_bytes).sum()
    }

    /// Spills the windows with the oldest starts held in memory until they
    /// fit `place.budget` (or none is left in memory). What is tracked for
    /// the next part is bounded apart (the touch limit), so that it never
    /// pushes every window out. A spill that fails leaves the window in
    /// memory, warned about once: nothing is lost, the memory bound is not
    /// kept.
    pub fn spill_over(&mut self, place: SpillPlace<'_>, stage: &str) {
        let mut held = self.windows_bytes();
        for (start, window) in self.windows.iter_mut() {
            if held <= place.budget {
                break;
            }
            let OpenWindow::Memory(result) = window else {
                continue;
            };
            let stem = format!("event-window-partition-{:05}-start-{start}", place.partition);
            match SpilledBatch::write(spill_path(place.dir, &stem), &result.to_batch(None)) {
                Ok(spilled) => {
                    held -= result.memory_bytes();
                    *window = OpenWindow::Disk(spilled);
                }
                Err(error) => {
                    if !self.spill_failed {
                        tracing::warn!(stage, %error, "event-time windows stay in memory");
                        self.spill_failed = true;
                    }
                    return;
                }
            }
        }
    }

    /// Writes the partition's section of a checkpoint part: its changes
    /// since the last part when known, otherwise every entry; then `clock`.
    /// Changes are then counted from now.
    pub fn write_section<W: Write>(
        &mut self,
        out: &mut PartWriter<W>,
        clock: EventClock,
    ) -> Result<(), StateError> {
        let result = match self.changes.take() {
            Some(changes) => self.write_changes(&changes, out, clock),
            None => self.write_complete(out, clock),
        };
        if result.is_ok() {
            self.changes = Some(Changes::default());
        }
        result
    }

    /// Forgets the changes: the next part lists the whole partition.
    pub fn forget_changes(&mut self) {
        self.changes = None;
    }

    fn write_changes<W: Write>(
        &self,
        changes: &Changes,
        out: &mut PartWriter<W>,
        clock: EventClock,
    ) -> Result<(), StateError> {
        out.begin(false).map_err(write_error)?;
        /// What a part says of one window.
        enum Written<'c> {
            /// Closed: its keys are removed.
            Closed(&'c ClosedWindow),
            /// Open: the keys of these hashes are put.
            Touched(Vec<u64>),
        }
        let mut windows: BTreeMap<i64, Written<'_>> = BTreeMap::new();
        for (start, keys) in &changes.closed {
            windows.insert(*start, Written::Closed(keys));
        }
        for (start, hash) in &changes.touched {
            // A closed window is never touched again: its touches came before.
            if self.windows.contains_key(start) {
                match windows
                    .entry(*start)
                    .or_insert_with(|| Written::Touched(Vec::new()))
                {
                    Written::Touched(hashes) => hashes.push(*hash),
                    Written::Closed(_) => {}
                }
            }
        }
        // Window by window in start order, each window's keys in order
        // (which is the entries' byte order).
        let (mut key, mut value) = (Vec::new(), Vec::new());
        for (start, written) in windows {
            match written {
                Written::Closed(closed) => {
                    let loaded;
                    let keys = match closed {
                        ClosedWindow::Keys(keys) => keys,
                        ClosedWindow::Spilled(spilled) => {
                            loaded = spilled.load()?;
                            &loaded
                        }
                    };
                    let mut keys: Vec<Option<&[u8]>> = keys.iter().map(|record| record.key).collect();
                    keys.sort_unstable();
                    for record_key in keys {
                        window_key(&mut key, start, record_key);
                        out.remove(&key).map_err(write_error)?;
                    }
                }
                Written::Touched(hashes) => {
                    let result = self.windows[&start].result()?;
                    let mut entries: Vec<&RunningEntry> =
                        hashes.iter().flat_map(|hash| result.with_hash(*hash)).collect();
                    entries.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
                    for entry in entries {
                        window_key(&mut key, start, entry.key());
                        window_value(&mut value, entry);
                        out.put(&key, &value).map_err(write_error)?;
                    }
                }
            }
        }
        out.put(&[WATERMARK_TAG], &clock_value(clock))
            .map_err(write_error)
    }

    fn write_complete<W: Write>(&self, out: &mut PartWriter<W>, clock: EventClock) -> Result<(), StateError> {
        out.begin(true).map_err(write_error)?;
        // Window by window in start order, each window's keys in order.
        let (mut key, mut value) = (Vec::new(), Vec::new());
        for (start, window) in &self.windows {
            let result = window.result()?;
            let mut entries: Vec<&RunningEntry> = result.iter().collect();
            entries.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
            for entry in entries {
                window_key(&mut key, *start, entry.key());
                window_value(&mut value, entry);
                out.put(&key, &value).map_err(write_error)?;
            }
        }
        out.put(&[WATERMARK_TAG], &clock_value(clock))
            .map_err(write_error)
    }
}

/// The entry key of `key` in window `start`, into `out`. Entry keys sort as
/// (start, key) do, a record without a key first.
fn window_key(out: &mut Vec<u8>, start: i64, key: Option<&[u8]>) {
    out.clear();
    out.push(WINDOW_TAG);
    out.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    match key {
        None => out.push(0),
        Some(key) => {
            out.push(1);
            out.extend_from_slice(key);
        }
    }
}

/// The entry value of `entry`, into `out`: timestamp, then value.
fn window_value(out: &mut Vec<u8>, entry: &RunningEntry) {
    out.clear();
    out.extend_from_slice(&entry.timestamp.to_le_bytes());
    out.extend_from_slice(entry.value());
}
fn clock_value(clock: EventClock) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&clock.max_seen.to_le_bytes());
    out[8..].copy_from_slice(&clock.watermark.to_le_bytes());
    out
}

/// Builds a partition's windows back from its entries in a checkpoint
/// chain, in key order (so window by window), spilling the oldest windows
/// past the budget as they come.
#[derive(Debug)]
pub struct Restorer<'a> {
    state: EventWindows,
    /// The window being read, and its start.
    current: Option<(i64, RunningResult)>,
    clock: Option<EventClock>,
    place: SpillPlace<'a>,
    stage: &'a str,
}

impl<'a> Restorer<'a> {
    /// An empty partition of stage `stage` that spills to `place`.
    pub fn new(place: SpillPlace<'a>, stage: &'a str) -> Self {
        Self {
            state: EventWindows::default(),
            current: None,
            clock: None,
            place,
            stage,
        }
    }

    /// Takes the next entry of the chain.
    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match key {
            [WINDOW_TAG, rest @ ..] if rest.len() >= 9 && value.len() >= 8 => {
                let start = (u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
                let record_key = match rest[8] {
                    0 if rest.len() == 9 => None,
                    1 => Some(&rest[9..]),
                    marker => {
                        return Err(format!(
                            "an event-time window entry with a key marker of {marker}"
                        ));
                    }
                };
                let timestamp = i64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
                if self
                    .current
                    .as_ref()
                    .is_some_and(|(current, _)| *current != start)
                {
                    self.end_window();
                }
                let (_, result) = self
                    .current
                    .get_or_insert_with(|| (start, RunningResult::default()));
                result.set(record_key, &value[8..], timestamp, 1);
            }
            [WATERMARK_TAG] if value.len() == 16 => {
                self.clock = Some(EventClock {
                    max_seen: i64::from_le_bytes(value[..8].try_into().expect("8 bytes")),
                    watermark: i64::from_le_bytes(value[8..].try_into().expect("8 bytes")),
                });
            }
            _ => {
                return Err(format!(
                    "an event-time window entry with a key of {} bytes and a value of {} is not one this version writes",
                    key.len(),
                    value.len()
                ));
            }
        }
        Ok(())
    }

    fn end_window(&mut self) {
        if let Some((start, result)) = self.current.take() {
            self.state.windows.insert(start, OpenWindow::Memory(result));
            self.state.spill_over(self.place, self.stage);
        }
    }

    /// The partition's windows, counting changes from now, and the clock
    /// its entries carried.
    pub fn finish(mut self) -> (EventWindows, Option<EventClock>) {
        self.end_window();
        self.state.changes = Some(Changes::default());
        (self.state, self.clock)
    }
}

/// A partition's windows as checkpoints wrote them whole before event-time
/// window state was incremental (window start → records); the next part
/// lists them whole.
pub fn from_whole(windows: BTreeMap<i64, Batch>, place: SpillPlace<'_>, stage: &str) -> EventWindows {
    let mut state = EventWindows::default();
    for (start, records) in windows {
        state
            .windows
            .insert(start, OpenWindow::Memory(result_of(&records)));
        state.spill_over(place, stage);
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::incremental::{Merge, PartReader};

    fn records(keys: &[&str], value: &str) -> Batch {
        let mut out = Batch::new();
        for (i, key) in keys.iter().enumerate() {
            out.push(Some(key.as_bytes()), value.as_bytes(), i as i64);
        }
        out
    }

    fn part_of(state: &mut EventWindows, clock: EventClock) -> Vec<u8> {
        let mut part = PartWriter::new(Vec::new(), 1).unwrap();
        state.write_section(&mut part, clock).unwrap();
        part.finish().unwrap().0
    }

    fn restored(parts: &[Vec<u8>], place: SpillPlace<'_>) -> (EventWindows, Option<EventClock>) {
        let readers = parts
            .iter()
            .map(|part| PartReader::new(std::io::Cursor::new(part.clone())).unwrap())
            .collect();
        let mut merge = Merge::new(readers).unwrap();
        let mut restorer = Restorer::new(place, "test");
        assert_eq!(merge.next_partition().unwrap(), Some(0));
        while let Some((key, value)) = merge.next_entry().unwrap() {
            restorer.entry(&key, &value).unwrap();
        }
        restorer.finish()
    }

    /// Key, value and timestamp of a window's record.
    type Record = (Option<Vec<u8>>, Vec<u8>, i64);

    /// Every window's records, sorted, read back from disk where spilled.
    fn contents(state: &EventWindows) -> Vec<(i64, Vec<Record>)> {
        state
            .windows
            .iter()
            .map(|(start, window)| {
                let mut records: Vec<_> = window
                    .result()
                    .unwrap()
                    .iter()
                    .map(|e| (e.key().map(<[u8]>::to_vec), e.value().to_vec(), e.timestamp))
                    .collect();
                records.sort();
                (*start, records)
            })
            .collect()
    }

    #[test]
    fn a_chain_of_parts_restores_open_windows_and_the_clock_spilled_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let place = |partition, budget| SpillPlace {
            dir: dir.path(),
            partition,
            budget,
        };
        for (budget, every) in [(1 << 20, 1), (0, 1), (1 << 20, 3), (0, 3)] {
            let mut state = EventWindows::default();
            let mut parts = Vec::new();
            // Windows -10, 0 and 10 open, -10 closes, 0 changes, 20 opens.
            let steps: [&[(i64, &[&str], &str)]; 4] = [
                &[(-10, &["a", "b"], "1"), (0, &["a"], "1")],
                &[(0, &["a", "c"], "2"), (10, &["d"], "1")],
                &[(10, &["d"], "5")],
                &[(20, &["e"], "1")],
            ];
            for (step, changes) in steps.iter().enumerate() {
                for (start, keys, value) in changes.iter() {
                    state.apply(*start, &records(keys, value), 1 << 20).unwrap();
                }
                if step == 2 {
                    let closed = state.close(-10, true, 1 << 20).unwrap().unwrap();
                    assert_eq!(closed.len(), 2);
                }
                state.spill_over(place(0, budget), "test");
                let clock = EventClock {
                    max_seen: step as i64,
                    watermark: step as i64 - 5,
                };
                if step % every == 0 || step == steps.len() - 1 {
                    parts.push(part_of(&mut state, clock));
                }
            }
            assert_eq!(state.starts().collect::<Vec<_>>(), vec![0, 10, 20]);
            assert_eq!(state.keys().1 > 0, budget == 0);
            for restore_budget in [1 << 20, 0] {
                let (back, clock) = restored(&parts, place(1, restore_budget));
                assert_eq!(
                    contents(&back),
                    contents(&state),
                    "budget {budget}, every {every}"
                );
                assert_eq!(
                    clock,
                    Some(EventClock {
                        max_seen: 3,
                        watermark: -2
                    })
                );
                assert_eq!(back.keys().1 == back.keys().0, restore_budget == 0);
            }
        }
    }

    #[test]
    fn a_part_of_changes_lists_the_touched_keys_and_removes_closed_windows() {
        let mut state = EventWindows::default();
        let clock = EventClock {
            max_seen: 0,
            watermark: 0,
        };
        state.apply(0, &records(&["a", "b", "c"], "1"), 1 << 20).unwrap();
        state.apply(10, &records(&["a"], "1"), 1 << 20).unwrap();
        let first = part_of(&mut state, clock);
        assert!(
            PartReader::new(std::io::Cursor::new(first))
                .unwrap()
                .begin()
                .unwrap()
        );
        state.apply(10, &records(&["b"], "2"), 1 << 20).unwrap();
        state.close(0, true, 1 << 20).unwrap();
        let changes = part_of(&mut state, clock);
        let mut reader = PartReader::new(std::io::Cursor::new(changes)).unwrap();
        assert!(!reader.begin().unwrap());
        let mut seen = 0;
        while reader.next_change().unwrap().is_some() {
            seen += 1;
        }
        // Three removed (window 0), one put (b in window 10), the clock.
        assert_eq!(seen, 3 + 1 + 1);
    }

    #[test]
    fn a_spilled_window_closed_unread_has_its_keys_removed_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let place = SpillPlace {
            dir: dir.path(),
            partition: 0,
            budget: 0,
        };
        let clock = EventClock {
            max_seen: 0,
            watermark: 0,
        };
        let mut state = EventWindows::default();
        state.apply(0, &records(&["a", "b"], "1"), 1 << 20).unwrap();
        state.apply(10, &records(&["c"], "1"), 1 << 20).unwrap();
        let first = part_of(&mut state, clock);
        state.spill_over(place, "test");
        // Update mode: closed without being read back.
        assert!(state.close(0, false, 1 << 20).unwrap().is_none());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "kept until the next part"
        );
        let second = part_of(&mut state, clock);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "then removed");
        let mut reader = PartReader::new(std::io::Cursor::new(second.clone())).unwrap();
        assert!(!reader.begin().unwrap());
        let mut changes = 0;
        while reader.next_change().unwrap().is_some() {
            changes += 1;
        }
        assert_eq!(changes, 2 + 1, "a and b removed, the clock");
        let (back, _) = restored(&[first, second], place);
        assert_eq!(contents(&back), contents(&state));
        assert_eq!(back.starts().collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn tracking_past_the_limit_makes_the_next_part_complete() {
        let mut state = EventWindows::default();
        let clock = EventClock {
            max_seen: 0,
            watermark: 0,
        };
        part_of(&mut state, clock);
        state
            .apply(0, &records(&["a", "b", "c"], "1"), 2 * TOUCHED_ENTRY_BYTES)
            .unwrap();
        let part = part_of(&mut state, clock);
        assert!(
            PartReader::new(std::io::Cursor::new(part))
                .unwrap()
                .begin()
                .unwrap()
        );
    }

    #[test]
    fn spilled_windows_come_back_when_loaded_and_their_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let place = SpillPlace {
            dir: dir.path(),
            partition: 0,
            budget: 0,
        };
        let mut state = EventWindows::default();
        state.apply(0, &records(&["a"], "1"), 1 << 20).unwrap();
        state.apply(10, &records(&["b"], "1"), 1 << 20).unwrap();
        state.spill_over(place, "test");
        assert_eq!(state.keys(), (2, 2));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(state.window(0).is_none(), "spilled");
        state.load(0).unwrap();
        assert_eq!(state.window(0).unwrap().get(Some(b"a")).unwrap().value(), b"1");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let closed = state.close(10, true, 1 << 20).unwrap().unwrap();
        assert_eq!(closed.get(Some(b"b")).unwrap().value(), b"1");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
