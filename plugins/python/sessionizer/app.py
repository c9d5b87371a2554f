"""Map-with-state: user sessions that end when their key times out; the
Python twin of `plugins/sessionizer`.

Each record extends its key's session (first and last timestamp, number of
events). When the key has had no record for the stage's `timeout`, its
session is emitted once, as JSON (`{"start":…,"end":…,"events":…}`) with the
session's last timestamp, and forgotten."""

import json

import weir


@weir.map_with_state(name="sessionizer-py")
def sessionize(event, state, out):
    if event.timed_out:
        session = state.value
        if session is not None:
            value = json.dumps(session, separators=(",", ":"))
            out.emit_record(event.key, value, session["end"])
        return
    time = event.timestamp
    session = state.value
    if session is None:
        state.value = {"start": time, "end": time, "events": 1}
    else:
        session["start"] = min(session["start"], time)
        session["end"] = max(session["end"], time)
        session["events"] += 1
