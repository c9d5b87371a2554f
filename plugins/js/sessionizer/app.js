/**
 * Map-with-state: user sessions that end when their key times out; the
 * JavaScript twin of `plugins/sessionizer`.
 *
 * Each record extends its key's session (first and last timestamp, number of
 * events). When the key has had no record for the stage's `timeout`, its
 * session is emitted once, as JSON (`{"start":…,"end":…,"events":…}`) with
 * the session's last timestamp, and forgotten.
 */

import * as weir from "weir";

weir.mapWithState(
  (event, state, out) => {
    if (event.timedOut) {
      const session = state.value;
      if (session !== null) {
        const { start, end, events } = session;
        out.emitRecord(event.key, JSON.stringify({ start, end, events }), end);
      }
      return;
    }
    const time = event.timestamp;
    const session = state.value;
    if (session === null) {
      state.value = { start: time, end: time, events: 1 };
    } else {
      session.start = Math.min(session.start, time);
      session.end = Math.max(session.end, time);
      session.events += 1;
    }
  },
  { name: "sessionizer-js" },
);
