//! A blocking reader of the gateway's `GET /api/events` stream (server-sent events) over plain
//! HTTP/1.0, so the body is close-delimited (no chunk framing to undo). Every read is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One event: its `event:` name and its `data:` parsed as JSON.
#[derive(Clone, Debug)]
pub struct Event {
    /// The SSE event name.
    pub name: String,
    /// Its data (JSON; a string when it is not JSON).
    pub data: serde_json::Value,
}

/// An open event stream.
pub struct EventStream {
    sock: TcpStream,
    buf: Vec<u8>,
    /// The HTTP status line's code.
    pub status: u16,
    /// The response head (status line and headers).
    pub head: String,
}

impl EventStream {
    /// Opens `GET /api/events` at `addr` with `token` as bearer (none: no Authorization).
    pub fn open(addr: SocketAddr, token: Option<&str>) -> Result<Self, String> {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET /api/events HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{auth}\r\n"
        );
        sock.write_all(req.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut s = EventStream {
            sock,
            buf: Vec::new(),
            status: 0,
            head: String::new(),
        };
        let end = s.read_until(Duration::from_secs(10), |b| {
            b.windows(4).position(|w| w == b"\r\n\r\n")
        })?;
        let head: Vec<u8> = s.buf.drain(..end + 4).collect();
        s.head = String::from_utf8_lossy(&head).into_owned();
        s.status = s
            .head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line: {}", s.head))?;
        Ok(s)
    }

    /// Reads until `done` finds something in the buffer or `timeout` passes.
    fn read_until<T>(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(t) = done(&self.buf) {
                return Ok(t);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "nothing within {timeout:?}; got so far: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(|e| format!("set_read_timeout: {e}"))?;
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err("the stream ended".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// The next event (comments and keep-alives skipped), waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Event, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let end = self.read_until(left, |b| b.windows(2).position(|w| w == b"\n\n"))?;
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut name = String::from("message");
            let mut data = String::new();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue;
            }
            let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
            return Ok(Event { name, data });
        }
    }

    /// Events until one satisfies `want` (returned), within `timeout`; the others are skipped.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Event) -> bool,
    ) -> Result<Event, String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Ok(e) if want(&e) => return Ok(e),
                Ok(e) => seen.push(format!("{} {}", e.name, e.data)),
                Err(why) => return Err(format!("{why}; events seen: {seen:?}")),
            }
        }
    }
}
