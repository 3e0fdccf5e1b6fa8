//! The request log tests assert on: every request to a Microsoft face (not `/test/...`) as
//! `{"method","path","query","authorization","content_type","body"}`, where `authorization` is the
//! scheme only (`Bearer`), `body` is the JSON or form body parsed (a form's `client_secret` is
//! replaced by `***`), and only the newest [`KEEP`] entries are kept.
//! `GET /test/requests` lists them oldest first; `DELETE /test/requests` empties the log.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::Shared;

/// Entries kept.
pub const KEEP: usize = 1000;
/// Largest body recorded (and passed on).
const MAX_BODY: usize = 1 << 20;

/// The log.
#[derive(Default)]
pub struct Log(Mutex<VecDeque<Value>>);

impl Log {
    /// Appends an entry (the oldest goes beyond [`KEEP`]).
    pub fn push(&self, entry: Value) {
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() >= KEEP {
            l.pop_front();
        }
        l.push_back(entry);
    }

    fn all(&self) -> Vec<Value> {
        let l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().cloned().collect()
    }

    fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Middleware: records the request, then passes it on with its body.
pub async fn record(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/test/") {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let header = |h: header::HeaderName| parts.headers.get(h).and_then(|v| v.to_str().ok());
    let content_type = header(header::CONTENT_TYPE).unwrap_or("");
    let body_value = if bytes.is_empty() {
        Value::Null
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        let mut form: Map<String, Value> = serde_urlencoded_pairs(&bytes);
        if form.contains_key("client_secret") {
            form.insert("client_secret".into(), json!("***"));
        }
        Value::Object(form)
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    s.log.push(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "authorization": header(header::AUTHORIZATION).and_then(|a| a.split_whitespace().next()),
        "content_type": content_type,
        "body": body_value,
    }));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A form body as an object (the last value of a repeated key wins).
fn serde_urlencoded_pairs(bytes: &[u8]) -> Map<String, Value> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
        .map(|f| f.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
        .unwrap_or_default()
}

/// `GET /test/requests`.
pub async fn list(State(s): State<Shared>) -> Json<Vec<Value>> {
    Json(s.log.all())
}

/// `DELETE /test/requests`.
pub async fn clear(State(s): State<Shared>) -> StatusCode {
    s.log.clear();
    StatusCode::NO_CONTENT
}
