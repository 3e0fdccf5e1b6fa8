//! `GET /api/events`: the live feed ([`crate::events`]) as server-sent events, for admins. The
//! stream opens with a `ready` event (so a client knows it is subscribed), sends each event as
//! `event: <name>` with its JSON `data:`, a `lagged` event with the number missed when the client
//! fell behind (reload what you show), a comment every 15 s to keep proxies from closing it,
//! and ends when the server drains.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};

use super::ApiState;
use crate::events::Next;

/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/events` → `text/event-stream`.
#[utoipa::path(get, path = "/api/events", tag = "system",
    description = "Server-sent events, one per change, as `event: <name>` and JSON `data:`. \
        `ready` `{\"server\"}` first; `registration.added` (a binding written, new or refreshed: \
        the registration as in `GET /api/registrations`) and `registration.removed` \
        `{\"aor\",\"binding\",\"server\"}`; `call.started` and `call.answered` (the call's \
        record so far: the fields of `GET /api/calls/history` but `record_id` and `server`), \
        `call.ended` (the record as `GET /api/calls/history` lists it, once it is stored); `config.changed`, `user.changed`, \
        `policy.changed` `{\"action\",\"target\",\"actor\"}` (an audited admin change); \
        `lagged` `{\"missed\"}` when the client fell behind (reload what you show). A comment \
        every 15 s keeps the connection open; the stream ends when the server drains.",
    responses(
        (status = 200, description = "The event stream", body = String,
            content_type = "text/event-stream",
            example = "event: ready\ndata: {\"server\":\"a\"}\n\n"),
    ))]
pub async fn stream(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // The listener lives in the stream: hyper drops the stream when the client goes away (at the
    // latest when a keep-alive cannot be written), and with it the subscription.
    let listener = state.events.listen();
    let ready = serde_json::json!({ "server": state.config.server() });
    let first = SseEvent::default().event("ready").data(ready.to_string());
    let events = stream::unfold(listener, |mut listener| async move {
        let event = match listener.next().await? {
            Next::Event(e) => SseEvent::default().event(e.name).data(e.data.to_string()),
            Next::Lagged(n) => SseEvent::default()
                .event("lagged")
                .data(serde_json::json!({ "missed": n }).to_string()),
        };
        Some((Ok(event), listener))
    });
    let all = stream::once(async move { Ok(first) }).chain(events);
    Sse::new(all).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
