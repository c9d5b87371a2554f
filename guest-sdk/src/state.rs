//! Per-key state for [`update_state`](macro@crate::update_state) and
//! [`map_with_state`](macro@crate::map_with_state): [`State`], the state of one
//! key, [`StateEvent`], what a map-with-state function is called for, and
//! [`GroupContext`], what the SDK knows about the key being processed besides
//! its values and its state.
//!
//! The host owns the state: it keeps one byte string per key between
//! micro-batches and hands it back with the key's next values. The SDK turns
//! those bytes into your state type and back with serde, as compact JSON
//! (`serde_json`), so any `S: Serialize + DeserializeOwned` works. A state the
//! SDK cannot read back (written by an older version of the plugin with
//! another type, say) fails the key's first value with a message saying so.
//!
//! # Guest memory a state call needs
//!
//! One call gets every key of a partition that has new values (or timed
//! out), and the plugin's memory (its stage's `memory` limit, 64 MiB by
//! default) must hold at once:
//!
//! - the call's input as the host hands it over: the keys, the new values
//!   (each with a 4-byte end and an 8-byte timestamp) and the old states'
//!   bytes;
//! - for the key being processed, its old state decoded into `S` and the
//!   new `S` your function returns;
//! - the new states, encoded once each, straight into one buffer: room is
//!   made for exactly a state at least as large as all before it, by
//!   doubling for smaller ones (so many small states may briefly need twice
//!   their total while that buffer grows);
//! - the records you emit.
//!
//! A call that creates one state of `N` bytes of JSON from a small input
//! thus needs about `2N` (the value and its encoding) plus the plugin's
//! baseline of one or two MiB: 16 MiB of new state fits in the default
//! 64 MiB (measured: up to 31 MiB fits; before the encoding was written
//! once, 16 MiB did not). Replacing an existing state of `N` bytes needs
//! about `4N` (its bytes in the input, the old value, the new value, the
//! encoding), `3N` if your function drops the old value before building the
//! new one. `N` is the JSON size: a `Vec<u8>` encodes as an array of
//! numbers, up to four bytes per byte; keep bulk data in a `String`. For
//! larger states, raise the stage's `memory` limit.
//!
//! For a struct, derive the serde traits through the SDK's re-export:
//!
//! ```
//! use weir_guest::serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! #[serde(crate = "weir_guest::serde")]
//! struct Session {
//!     start: i64,
//!     events: u64,
//! }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Record};

/// The state of one key in a [`map_with_state`](macro@crate::map_with_state)
/// function: absent, or a value of your type `S`.
///
/// Changes are kept for the key's next record and, at the end of the call,
/// by the host for the next micro-batch; [`State::remove`] forgets the key's
/// state. A key that timed out loses its state after its
/// [`StateEvent::Timeout`] call, whatever the function sets.
///
/// ```
/// use weir_guest::State;
///
/// let mut state: State<u64> = State::new(None);
/// assert!(!state.exists());
/// *state.get_or_insert_with(|| 0) += 1;
/// assert_eq!(state.get(), Some(&1));
/// state.set(5);
/// assert_eq!(state.remove(), Some(5));
/// assert_eq!(state.into_inner(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State<S> {
    value: Option<S>,
    /// Whether the value may differ from the one the SDK decoded (set by every
    /// method that can change it): an unchanged state is handed back to the
    /// host as the bytes it came in, without encoding it again.
    changed: bool,
}

impl<S> State<S> {
    /// A state holding `value` (`None`: the key has no state), for unit tests
    /// of map-with-state functions.
    pub fn new(value: Option<S>) -> Self {
        Self {
            value,
            changed: false,
        }
    }

    /// Whether the key has a state.
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }

    /// The key's state, if any.
    pub fn get(&self) -> Option<&S> {
        self.value.as_ref()
    }

    /// The key's state, if any, to change in place.
    pub fn get_mut(&mut self) -> Option<&mut S> {
        self.changed = true;
        self.value.as_mut()
    }

    /// The key's state, set to `default()` first when it has none.
    pub fn get_or_insert_with(&mut self, default: impl FnOnce() -> S) -> &mut S {
        self.changed = true;
        self.value.get_or_insert_with(default)
    }

    /// Sets the key's state.
    pub fn set(&mut self, value: S) {
        self.changed = true;
        self.value = Some(value);
    }

    /// Removes the key's state; returns the state it had.
    pub fn remove(&mut self) -> Option<S> {
        self.changed = true;
        self.value.take()
    }

    /// The key's state, if any, consuming this handle.
    pub fn into_inner(self) -> Option<S> {
        self.value
    }

    /// Whether a method that can change the state was called.
    pub(crate) fn changed(&self) -> bool {
        self.changed
    }
}

impl<S> Default for State<S> {
    /// No state.
    fn default() -> Self {
        Self::new(None)
    }
}

/// What a [`map_with_state`](macro@crate::map_with_state) function is called
/// for: a new record of a key, or the key's timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateEvent<'a> {
    /// A new record of the key, in arrival order. Its [`Record::key`] is
    /// always `Some`; its [`Record::index`] is its index among the values of
    /// the whole call, which the SDK reports when the function fails.
    Record(Record<'a>),
    /// The key had no record for longer than the stage's `timeout`. This is
    /// the key's last call: its state is removed afterwards, whatever the
    /// function sets (emit what the state should produce now).
    Timeout {
        /// The key that timed out.
        key: &'a [u8],
    },
}

impl<'a> StateEvent<'a> {
    /// The key of the record, or the key that timed out.
    pub fn key(&self) -> &'a [u8] {
        match self {
            StateEvent::Record(record) => record.key().unwrap_or_default(),
            StateEvent::Timeout { key } => key,
        }
    }

    /// The key as UTF-8 text; an error if it is not valid UTF-8.
    pub fn key_str(&self) -> Result<&'a str, Error> {
        std::str::from_utf8(self.key()).map_err(|e| Error::msg(format!("key is not UTF-8: {e}")))
    }

    /// The record, unless this is a timeout.
    pub fn record(&self) -> Option<Record<'a>> {
        match self {
            StateEvent::Record(record) => Some(*record),
            StateEvent::Timeout { .. } => None,
        }
    }

    /// Whether this is the key's timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, StateEvent::Timeout { .. })
    }
}

/// What the SDK knows about the key being processed besides its key, values
/// and state: the micro-batch's time, whether the key timed out, and the
/// timestamps of its new values.
///
/// A stateful function receives it when it declares one more parameter,
/// `group: &GroupContext<'_>`, after the others (see
/// [`update_state`](macro@crate::update_state) and
/// [`map_with_state`](macro@crate::map_with_state)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupContext<'a> {
    timestamps: &'a [i64],
    batch_time: i64,
    timed_out: bool,
}

impl<'a> GroupContext<'a> {
    /// The context of a key with new values with these `timestamps`, in the
    /// micro-batch of time `batch_time`: for unit tests.
    pub fn new(timestamps: &'a [i64], batch_time: i64) -> Self {
        Self {
            timestamps,
            batch_time,
            timed_out: false,
        }
    }

    /// The context of a key that timed out (it has no new value) in the
    /// micro-batch of time `batch_time`: for unit tests.
    pub fn timeout(batch_time: i64) -> Self {
        Self {
            timestamps: &[],
            batch_time,
            timed_out: true,
        }
    }

    /// Any group, as the host describes it.
    pub(crate) fn with(timestamps: &'a [i64], batch_time: i64, timed_out: bool) -> Self {
        Self {
            timestamps,
            batch_time,
            timed_out,
        }
    }

    /// The time of the micro-batch, in milliseconds since the Unix epoch.
    pub fn batch_time(&self) -> i64 {
        self.batch_time
    }

    /// Whether the key timed out: it had no value for longer than the stage's
    /// `timeout`. This is the key's last call (it has no new value), and its
    /// state is removed afterwards, whatever the function returns or sets.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The timestamps of the key's new values, in arrival order (one per
    /// value; empty for a key that timed out).
    pub fn timestamps(&self) -> &'a [i64] {
        self.timestamps
    }

    /// The largest timestamp of the key's new values; `None` when it has none.
    pub fn latest_timestamp(&self) -> Option<i64> {
        self.timestamps.iter().copied().max()
    }
}

/// Reads a state the host kept: `bytes` as written by [`encode`].
pub(crate) fn decode<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::msg(format!(
            "cannot read the key's state {:?} (written by another version of the plugin?): {e}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
        ))
    })
}

/// Appends `state` to `out` in the form the host keeps: compact JSON.
///
/// The state is written once, straight into `out`, never into a growing
/// buffer of its own: when it fits in the room `out` has, in one pass;
/// otherwise it is measured first (a second pass that writes nothing), room
/// is made for it ([`make_room`]) and it is written. A new state of `N`
/// bytes thus needs `N` bytes of memory beyond the value it is encoded from
/// (a growing buffer needed up to three times that at once: the old buffer
/// and the doubled one, which is what made a 16 MiB state trap at 64 MiB).
pub(crate) fn encode<S: Serialize>(state: &S, out: &mut Vec<u8>) -> Result<(), Error> {
    let start = out.len();
    let failed = |e: serde_json::Error| Error::msg(format!("cannot write the key's state: {e}"));
    match serde_json::to_writer(InRoom(out), state) {
        Ok(()) => return Ok(()),
        // Only `InRoom` fails with an I/O error: the state does not fit.
        Err(e) if e.is_io() => out.truncate(start),
        Err(e) => {
            out.truncate(start);
            return Err(failed(e));
        }
    }
    let mut size = Measure(0);
    serde_json::to_writer(&mut size, state).map_err(failed)?;
    make_room(out, size.0);
    serde_json::to_writer(InRoom(out), state).map_err(|e| {
        out.truncate(start);
        failed(e)
    })
}

/// Makes room in `out` for `bytes` more: exactly that for a piece at least
/// as large as everything before it, so a large state never leaves a doubled
/// buffer behind; by doubling otherwise (amortized over many small ones).
pub(crate) fn make_room(out: &mut Vec<u8>, bytes: usize) {
    if out.capacity() - out.len() >= bytes {
        return;
    }
    if bytes >= out.len() {
        out.reserve_exact(bytes);
    } else {
        out.reserve(bytes);
    }
}

/// Writes into the room a `Vec` already has, and fails rather than grow it.
struct InRoom<'a>(&'a mut Vec<u8>);

impl std::io::Write for InRoom<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.0.capacity() - self.0.len() < bytes.len() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts the bytes written to it.
struct Measure(usize);

impl std::io::Write for Measure {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Session {
        start: i64,
        end: i64,
        events: u64,
    }

    #[test]
    fn state_round_trips_as_compact_json() {
        let mut out = b"prefix".to_vec();
        let session = Session {
            start: 1,
            end: -2,
            events: 3,
        };
        encode(&session, &mut out).unwrap();
        assert_eq!(out, br#"prefix{"start":1,"end":-2,"events":3}"#);
        assert_eq!(decode::<Session>(&out[6..]).unwrap(), session);

        let mut out = Vec::new();
        encode(&42i64, &mut out).unwrap();
        assert_eq!(out, b"42");
        assert_eq!(decode::<i64>(b"42").unwrap(), 42);
        assert_eq!(decode::<Option<u8>>(b"null").unwrap(), None);
    }

    #[test]
    fn a_state_is_written_once_into_room_made_for_exactly_it() {
        // Fits in the room there is: written in place.
        let mut out = Vec::with_capacity(64);
        encode(&"small", &mut out).unwrap();
        assert_eq!(out, br#""small""#);
        assert_eq!(out.capacity(), 64);
        // A large state after a small one: exactly its size more, no doubling.
        let large = "x".repeat(1 << 20);
        encode(&large, &mut out).unwrap();
        assert_eq!(out.len(), 7 + (1 << 20) + 2);
        assert_eq!(out.capacity(), out.len());
        assert_eq!(decode::<String>(&out[7..]).unwrap(), large);
        // Many small ones after it: amortized growth, each written whole.
        for i in 0..1_000u32 {
            encode(&i, &mut out).unwrap();
        }
        assert!(out.capacity() < 4 * out.len());
        assert!(out.ends_with(b"998999"));
    }

    #[test]
    fn unreadable_state_is_an_error() {
        let error = decode::<Session>(br#"{"start":1}"#).unwrap_err();
        assert!(
            error.message().starts_with("cannot read the key's state"),
            "{error}"
        );
        assert!(error.message().contains("missing field `end`"), "{error}");
        assert!(decode::<i64>(b"").is_err());
        assert!(decode::<i64>(b"\"text\"").is_err());
    }

    #[test]
    fn unwritable_state_is_an_error_and_writes_nothing() {
        // JSON object keys must be strings.
        let state: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
        let mut out = b"kept".to_vec();
        let error = encode(&state, &mut out).unwrap_err();
        assert!(
            error.message().starts_with("cannot write the key's state"),
            "{error}"
        );
        assert_eq!(out, b"kept");
    }

    #[test]
    fn state_tracks_changes() {
        let mut state = State::new(Some(1u32));
        assert!(state.exists());
        assert_eq!(state.get(), Some(&1));
        assert!(!state.changed());
        *state.get_mut().unwrap() += 1;
        assert!(state.changed());
        assert_eq!(state.clone().into_inner(), Some(2));
        assert_eq!(state.remove(), Some(2));
        assert!(!state.exists());
        assert_eq!(*state.get_or_insert_with(|| 7), 7);
        assert_eq!(State::<u8>::default(), State::new(None));
    }

    #[test]
    fn events_and_contexts() {
        let record = Record::new(Some(b"user"), b"click", 5);
        let event = StateEvent::Record(record);
        assert_eq!(event.key(), b"user");
        assert_eq!(event.key_str().unwrap(), "user");
        assert_eq!(event.record(), Some(record));
        assert!(!event.is_timeout());
        let timeout = StateEvent::Timeout { key: b"\xff" };
        assert_eq!(timeout.key(), b"\xff");
        assert!(timeout.key_str().is_err());
        assert_eq!(timeout.record(), None);
        assert!(timeout.is_timeout());

        let group = GroupContext::new(&[3, 9, 4], 10);
        assert_eq!(group.latest_timestamp(), Some(9));
        assert_eq!(group.timestamps(), [3, 9, 4]);
        assert_eq!(group.batch_time(), 10);
        assert!(!group.timed_out());
        let group = GroupContext::timeout(20);
        assert!(group.timed_out());
        assert_eq!(group.latest_timestamp(), None);
    }
}
