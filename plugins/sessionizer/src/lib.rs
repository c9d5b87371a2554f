//! Map-with-state: sessionizes activity per user. Meant for a stage with a
//! `timeout` (the session gap): a user's session lasts until the user has
//! had no record for longer than the timeout.
//!
//! Input records are keyed by user id; their values are ignored. Every
//! record of a user updates the user's session — `start`, the earliest
//! timestamp seen, `end`, the latest, and `events`, the number of records —
//! and emits nothing. When the user's key times out, the session is emitted
//! as one record: key = the user id, value = the JSON object
//! `{"start":..,"end":..,"events":..}` (timestamps in milliseconds since the
//! Unix epoch), timestamp = `end`; then the session is forgotten, and the
//! user's next record starts a new one. Without a `timeout`, sessions never
//! end and nothing is emitted.
//!
//! Config: none.

use weir_guest::serde::{Deserialize, Serialize};
use weir_guest::{Emitter, Error, State, StateEvent};

/// One user's session so far: the state of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "weir_guest::serde")]
struct Session {
    /// The earliest timestamp of the session's records.
    start: i64,
    /// The latest timestamp of the session's records.
    end: i64,
    /// The number of records in the session.
    events: u64,
}

#[weir_guest::map_with_state]
fn sessionize(event: StateEvent<'_>, state: &mut State<Session>, out: &mut Emitter) -> Result<(), Error> {
    match event {
        StateEvent::Record(record) => {
            let time = record.timestamp();
            match state.get_mut() {
                Some(session) => {
                    session.start = session.start.min(time);
                    session.end = session.end.max(time);
                    session.events = session.events.saturating_add(1);
                }
                None => state.set(Session {
                    start: time,
                    end: time,
                    events: 1,
                }),
            }
        }
        StateEvent::Timeout { key } => {
            if let Some(session) = state.get() {
                let value = weir_guest::json::to_vec(session)?;
                out.emit_record(Some(key), value, session.end);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use weir_guest::Record;

    use super::*;

    #[test]
    fn a_session_is_emitted_when_it_times_out() {
        let mut state = State::new(None);
        let mut out = Emitter::new();
        for time in [100, 250, 180] {
            let record = Record::new(Some(b"ada"), b"click", time);
            sessionize(StateEvent::Record(record), &mut state, &mut out).unwrap();
        }
        assert!(out.is_empty());
        assert_eq!(
            state.get(),
            Some(&Session {
                start: 100,
                end: 250,
                events: 3
            })
        );

        sessionize(StateEvent::Timeout { key: b"ada" }, &mut state, &mut out).unwrap();
        let batch = out.as_batch();
        let record = batch.get(0).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(record.key(), Some(&b"ada"[..]));
        assert_eq!(
            record.value_str().unwrap(),
            r#"{"start":100,"end":250,"events":3}"#
        );
        assert_eq!(record.timestamp(), 250);
    }

    #[test]
    fn a_timeout_without_a_session_emits_nothing() {
        let mut state = State::new(None);
        let mut out = Emitter::new();
        sessionize(StateEvent::Timeout { key: b"x" }, &mut state, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
