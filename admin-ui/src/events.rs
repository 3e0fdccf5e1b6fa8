//! The live feed: `GET /api/events` (server-sent events) read through `fetch` so the bearer token
//! goes in a header (an `EventSource` cannot send one). Each event bumps a revision signal per
//! kind, which the pages watch to reload what they show; the last events are kept for the
//! dashboard. Reconnects after a pause when the stream ends. [`read_stream`] reads any such
//! stream (the web phone's too).

use leptos::prelude::*;
use serde_json::Value;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, ReadableStreamDefaultReader, Request, RequestInit, Response};

/// One event as received.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The SSE event name (`registration.added`, `call.ended`, `config.changed`, …).
    pub kind: String,
    /// Its JSON data.
    pub data: Value,
}

/// What the pages read: a revision per kind of event, the connection state, the recent events.
#[derive(Clone, Copy)]
pub struct Feed {
    /// Bumped on every registration event.
    pub registrations: RwSignal<u64>,
    /// Bumped on every call event.
    pub calls: RwSignal<u64>,
    /// Bumped on every configuration change.
    pub config: RwSignal<u64>,
    /// Bumped on every change of a user.
    pub users: RwSignal<u64>,
    /// Bumped on every policy event.
    pub policies: RwSignal<u64>,
    /// Whether the stream is open.
    pub connected: RwSignal<bool>,
    /// The newest events first (at most [`KEEP`]).
    pub recent: RwSignal<Vec<Event>>,
}

/// How many events the dashboard lists.
pub const KEEP: usize = 20;

impl Feed {
    /// A feed with nothing received yet.
    pub fn new() -> Self {
        Feed {
            registrations: RwSignal::new(0),
            calls: RwSignal::new(0),
            config: RwSignal::new(0),
            users: RwSignal::new(0),
            policies: RwSignal::new(0),
            connected: RwSignal::new(false),
            recent: RwSignal::new(Vec::new()),
        }
    }

    fn deliver(&self, event: Event) {
        if event.kind == "lagged" {
            // Events were lost: everything may have moved.
            for c in [
                self.registrations,
                self.calls,
                self.config,
                self.users,
                self.policies,
            ] {
                c.update(|n| *n += 1);
            }
        }
        let counter = match event.kind.split('.').next().unwrap_or("") {
            "registration" => Some(self.registrations),
            "call" => Some(self.calls),
            "config" => Some(self.config),
            "user" => Some(self.users),
            "policy" => Some(self.policies),
            _ => None,
        };
        if let Some(c) = counter {
            c.update(|n| *n += 1);
        }
        self.recent.update(|list| {
            list.insert(0, event);
            list.truncate(KEEP);
        });
    }

    /// Reads the stream until it ends; then waits and reads again while `alive` says so.
    pub fn run(self, alive: impl Fn() -> bool + 'static) {
        leptos::task::spawn_local(async move {
            while alive() {
                if let Err(e) = self.read_once().await {
                    web_sys::console::warn_1(&format!("event stream: {e}").into());
                }
                self.connected.set(false);
                sleep_ms(2000).await;
            }
        });
    }

    async fn read_once(&self) -> Result<(), String> {
        let open = || self.connected.set(true);
        read_stream("/api/events", crate::api::stored_token(), None, open, |e| {
            self.deliver(e)
        })
        .await
    }
}

/// Reads the server-sent event stream at `path` (with `token` as the bearer token) until it
/// ends, `abort` fires or it fails: `on_open` once the gateway answered 2xx, `on_event` for
/// every event.
pub async fn read_stream(
    path: &str,
    token: Option<String>,
    abort: Option<&web_sys::AbortSignal>,
    on_open: impl FnOnce(),
    mut on_event: impl FnMut(Event),
) -> Result<(), String> {
    let window = web_sys::window().ok_or("no window")?;
    let init = RequestInit::new();
    let headers = Headers::new().map_err(|_| "headers")?;
    if let Some(token) = token {
        let _ = headers.set("Authorization", &format!("Bearer {token}"));
    }
    let _ = headers.set("Accept", "text/event-stream");
    init.set_headers(&headers);
    if let Some(abort) = abort {
        init.set_signal(Some(abort));
    }
    let request = Request::new_with_str_and_init(path, &init).map_err(|_| "request")?;
    let response: Response = JsFuture::from(window.fetch_with_request(&request))
        .await
        .map_err(|_| "no answer")?
        .dyn_into()
        .map_err(|_| "not a response")?;
    if !response.ok() {
        return Err(format!("the gateway answered {}", response.status()));
    }
    let body = response.body().ok_or("no body")?;
    let reader: ReadableStreamDefaultReader = body
        .get_reader()
        .dyn_into()
        .map_err(|_| "no stream reader")?;
    on_open();
    let mut parser = Parser::default();
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|_| "read failed")?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            .unwrap_or(true);
        if done {
            return Ok(());
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into()).map_err(|_| "no value")?;
        let bytes = js_sys::Uint8Array::new(&value).to_vec();
        for event in parser.push(&bytes) {
            on_event(event);
        }
    }
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

/// Splits a server-sent event stream into events (`event:` and `data:` fields; comments and
/// other fields ignored); bytes of an unfinished event wait for the next chunk.
#[derive(Default)]
pub struct Parser {
    buffer: Vec<u8>,
}

impl Parser {
    /// Adds `bytes`; the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = find_blank_line(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&block[..end.0]);
            let (mut kind, mut data) = (String::from("message"), String::new());
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !data.is_empty() {
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                events.push(Event { kind, data });
            }
        }
        events
    }
}

/// The end of the first event block: (where its text ends, where the next block starts).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Resolves after `ms` milliseconds.
pub async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(promise).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut p = Parser::default();
        assert!(
            p.push(b": hello\n\nevent: registration.added\ndata: {\"aor\":")
                .is_empty()
        );
        let got = p.push(b"\"sip:a@x\"}\n\nevent: call.started\r\ndata: 1\r\n\r\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, "registration.added");
        assert_eq!(got[0].data["aor"], "sip:a@x");
        assert_eq!(got[1].kind, "call.started");
        assert_eq!(got[1].data, Value::from(1));
    }
}
