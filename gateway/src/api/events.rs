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
use tokio::sync::broadcast::error::RecvError;

use super::ApiState;

/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/events` → `text/event-stream`.
#[utoipa::path(get, path = "/api/events", tag = "system",
    description = "Server-sent events, one per change, as `event: <name>` and JSON `data:`. \
        `ready` `{\"server\"}` first; `registration.added` (a binding written: new or refreshed) \
        and `registration.removed` `{\"aor\",\"contact\",\"server\",…}`; `call.started` and \
        `call.ended` `{\"id\"}`; `config.changed`, `user.changed`, `policy.changed` \
        `{\"action\",\"target\",\"actor\"}` (an audited admin change); `lagged` `{\"missed\"}` \
        when the client fell behind. A comment every 15 s keeps the connection open.",
    responses(
        (status = 200, description = "The event stream", body = String,
            content_type = "text/event-stream",
            example = "event: ready\ndata: {\"server\":\"a\"}\n\n"),
    ))]
pub async fn stream(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = state.events.subscribe();
    let closed = state.events.closed();
    let ready = serde_json::json!({ "server": state.config.server() });
    let first = SseEvent::default().event("ready").data(ready.to_string());
    let events = stream::unfold((rx, closed), |(mut rx, mut closed)| async move {
        if *closed.borrow_and_update() {
            return None;
        }
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = closed.changed() => return None,
        };
        let event = match next {
            Ok(e) => SseEvent::default().event(e.name).data(e.data.to_string()),
            Err(RecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(serde_json::json!({ "missed": n }).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, closed)))
    });
    let all = stream::once(async move { Ok(first) }).chain(events);
    Sse::new(all).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
