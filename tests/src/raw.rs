//! Hand-made SIP over std sockets, for what SIPp cannot express: a request whose Via lies about its
//! source (NAT), OPTIONS over IPv6, reading keep-alive datagrams. Every read is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use csps_sip::{Frame, Message, Response};

/// A random-enough token for branches, tags and Call-IDs (unique per process and call).
pub fn token(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}{:x}{n:x}{t:x}", std::process::id())
}

/// An OPTIONS request to `target` whose Via and Contact name `local` (`transport` is `UDP`/`TCP`).
pub fn options(transport: &str, local: SocketAddr, target: SocketAddr) -> String {
    format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@csps.local>;tag={tag}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:probe@{local};transport={lower}>\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        branch = token("o"),
        tag = token("t"),
        call_id = token("c"),
        lower = transport.to_ascii_lowercase(),
    )
}

/// Registers `user@domain` from 127.0.0.1:`port` with `user_agent`, without credentials (the
/// test trusted the source), and closes the socket so a SIPp phone can take the port over.
/// `Err` says what came back instead of a 200.
pub fn register_trusted(
    target: SocketAddr,
    user: &str,
    domain: &str,
    port: u16,
    user_agent: &str,
) -> Result<(), String> {
    let sock = UdpSocket::bind(("127.0.0.1", port)).map_err(|e| format!("bind {port}: {e}"))?;
    let local = sock
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    let msg = format!(
        "REGISTER sip:{domain} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{domain}>;tag={tag}\r\n\
         To: <sip:{user}@{domain}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@{local};transport=udp>\r\n\
         Expires: 300\r\n\
         User-Agent: {user_agent}\r\n\
         Content-Length: 0\r\n\r\n",
        branch = token("r"),
        tag = token("t"),
        call_id = token("c"),
    );
    let resp = udp_request(&sock, target, &msg, Duration::from_secs(5))?;
    if resp.status != 200 {
        return Err(format!("REGISTER {user}: {} {}", resp.status, resp.reason));
    }
    Ok(())
}

/// A REGISTER of `user@csps.local` over UDP from `local` for `expires` seconds, without
/// credentials (for a source the test made trusted); `call_id` and `cseq` as a phone keeps them.
pub fn register(local: SocketAddr, user: &str, call_id: &str, cseq: u32, expires: u32) -> String {
    format!(
        "REGISTER sip:csps.local SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@csps.local>;tag={tag}\r\n\
         To: <sip:{user}@csps.local>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{local}>\r\n\
         Expires: {expires}\r\n\
         User-Agent: events-test\r\n\
         Content-Length: 0\r\n\r\n",
        branch = token("b"),
        tag = token("t"),
    )
}

/// Parses a datagram or framed message as a SIP response.
pub fn parse_response(bytes: &[u8]) -> Result<Response, String> {
    match csps_sip::parse(bytes) {
        Ok(p) => match p.message {
            Message::Response(r) => Ok(r),
            Message::Request(r) => Err(format!("got a request, not a response: {}", r.method)),
        },
        Err(e) => Err(format!(
            "unparsable answer ({}): {:?}",
            e.reason,
            String::from_utf8_lossy(bytes)
        )),
    }
}

/// Sends `msg` to `to` and returns the first final response (1xx and keep-alives are skipped),
/// waiting at most `timeout`.
pub fn udp_request(
    sock: &UdpSocket,
    to: SocketAddr,
    msg: &str,
    timeout: Duration,
) -> Result<Response, String> {
    sock.send_to(msg.as_bytes(), to)
        .map_err(|e| format!("send to {to}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no final response from {to} within {timeout:?}"));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(format!("receive: {e}")),
        };
        let data = &buf[..n];
        if from != to || data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            continue;
        }
        let resp = parse_response(data)?;
        if resp.status >= 200 {
            return Ok(resp);
        }
    }
}

/// A byte stream whose reads can be bounded in time: TCP, or TLS over TCP.
pub trait Stream: Read + Write {
    /// Bounds the next reads (`None`: unbounded).
    fn read_timeout(&self, d: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(d)
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(d)
    }
}

/// Sends `msg` on a TCP or TLS connection and returns the first final response, within `timeout`.
pub fn tcp_request(
    stream: &mut impl Stream,
    msg: &str,
    timeout: Duration,
) -> Result<Response, String> {
    stream
        .write_all(msg.as_bytes())
        .map_err(|e| format!("TCP write: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Take every complete message out of the buffer.
        loop {
            match csps_sip::frame(&buf) {
                Frame::Message(n) => {
                    let resp = parse_response(&buf[..n])?;
                    buf.drain(..n);
                    if resp.status >= 200 {
                        return Ok(resp);
                    }
                }
                Frame::KeepAlive(n) => {
                    buf.drain(..n);
                }
                Frame::Incomplete => break,
                Frame::Invalid(why) => return Err(format!("unframable answer: {why}")),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no final response within {timeout:?}"));
        }
        stream
            .read_timeout(Some(left))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed before a final response".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("TCP read: {e}")),
        }
    }
}

/// Waits up to `timeout` for a datagram from `from` consisting only of CR and LF bytes (a
/// keep-alive); returns its bytes. Other datagrams are skipped.
pub fn wait_keepalive(
    sock: &UdpSocket,
    from: SocketAddr,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no keep-alive from {from} within {timeout:?}"));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        match sock.recv_from(&mut buf) {
            Ok((n, src)) => {
                let data = &buf[..n];
                if src == from
                    && !data.is_empty()
                    && data.iter().all(|b| matches!(b, b'\r' | b'\n'))
                {
                    return Ok(data.to_vec());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
}

/// The `expires` parameter of every Contact of a REGISTER's 200 (one per binding).
pub fn contact_expires(resp: &Response) -> Vec<(String, u32)> {
    resp.headers
        .values("Contact")
        .filter_map(|c| {
            let lower = c.to_ascii_lowercase();
            let at = lower.find(";expires=")?;
            let digits: String = lower[at + 9..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some((c.to_string(), digits.parse().ok()?))
        })
        .collect()
}
