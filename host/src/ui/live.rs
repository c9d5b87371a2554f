//! The live streams of the UI's pages (server-sent events). Each event is a
//! JSON object of the page's sections, element id → HTML, sent when one
//! changed (the page's script swaps them in): the pages stay live without a
//! reload, and the server stays the only place that renders.
//!
//! A stream checks the viewer's right to the pipeline at every tick: a
//! revoked token or a deleted pipeline ends it. It also ends when the
//! server shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use maud::Markup;
use tokio::sync::watch;

/// How often a stream renders its page's sections again.
pub const TICK: Duration = Duration::from_millis(500);

/// Renders the page's sections now; `None` ends the stream (the pipeline
/// is gone, or no longer the viewer's).
pub type Render = Arc<dyn Fn() -> Option<Vec<(&'static str, Markup)>> + Send + Sync>;

/// The sections as the event's JSON.
fn payload(sections: Vec<(&'static str, Markup)>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = sections
        .into_iter()
        .map(|(id, markup)| (id.to_owned(), serde_json::Value::String(markup.into_string())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// A stream that sends `render`'s sections every [`TICK`] when they changed,
/// until `render` says the page is gone or `closing` turns true; it holds
/// `permit` while open.
pub fn stream(
    render: Render,
    closing: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    struct Cursor {
        render: Render,
        closing: watch::Receiver<bool>,
        last: String,
        first: bool,
        /// Held while the stream is open (the UI's count of open streams).
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let cursor = Cursor {
        render,
        closing,
        last: String::new(),
        first: true,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if !cursor.first {
                tokio::select! {
                    () = tokio::time::sleep(TICK) => {}
                    _ = cursor.closing.wait_for(|closing| *closing) => return None,
                }
            }
            cursor.first = false;
            if *cursor.closing.borrow() {
                return None;
            }
            let render = cursor.render.clone();
            // Rendering reads locks the pipeline's driver also takes.
            let sections = tokio::task::spawn_blocking(move || render()).await.ok()??;
            let data = payload(sections);
            if data != cursor.last {
                cursor.last.clone_from(&data);
                let event = Event::default().event("sections").data(data);
                return Some((Ok(event), cursor));
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_maps_ids_to_html() {
        let sections = vec![("head", maud::html! { span { "a<b" } })];
        let json: serde_json::Value = serde_json::from_str(&payload(sections)).unwrap();
        assert_eq!(json["head"], "<span>a&lt;b</span>");
    }
}
