//! Live pages: `GET /events` is a server-sent event stream that says
//! `changed` when the fleet changed as this server sees it (a channel moved
//! or reports were stored, here or, through the store's change feed, by
//! another server), at most once per [`QUIET`]. `assets/live.js` then fetches
//! its page again and swaps its main part in: no page needs JavaScript to
//! work, only to follow.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::UiState;
use super::session::Viewer;

/// Changes closer together than this are told once, after it.
const QUIET: Duration = Duration::from_secs(1);

pub async fn events(State(state): State<Arc<UiState>>, _viewer: Viewer) -> impl IntoResponse {
    let mut changes = state.fleet_changes();
    let mut stopping = state.stopping.clone();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(1);
    tokio::spawn(async move {
        // Ends when the browser goes (the stream, and with it `rx`, is
        // dropped) or the server shuts down (`tx` dropped ends the stream).
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = stopping.wait_for(|stop| *stop) => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            tokio::time::sleep(QUIET).await;
            changes.mark_unchanged();
            if tx
                .send(Ok(Event::default().event("changed").data("fleet")))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}
