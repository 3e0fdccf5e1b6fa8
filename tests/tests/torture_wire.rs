//! RFC 4475 §3: every torture message sent to the running gateway over UDP and over TCP is handled
//! as tests/data/rfc4475/INDEX.tsv says (the status or the silence the parser-level test expects),
//! and afterwards the gateway still answers: nothing crashes or stalls it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use csps_sip::validate::check_request;
use csps_sip::{Message, parse};
use csps_tests::Gateway;

fn data(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/rfc4475")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What the gateway must do with one message, derived from the parser-level classification.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// This exact status.
    Status(u16),
    /// Some final answer that is not 400/5xx (a valid request the gateway handles normally).
    Handled,
    /// No answer (garbage, responses, ACK).
    Silence,
}

fn want(bytes: &[u8]) -> Want {
    match parse(bytes) {
        Ok(p) => match p.message {
            Message::Request(r) if r.method == csps_sip::Method::Ack => Want::Silence,
            Message::Request(r) => match check_request(&r, &[]) {
                Ok(()) => Want::Handled,
                Err(rej) => Want::Status(rej.status),
            },
            Message::Response(_) => Want::Silence,
        },
        // An ACK is never answered, however malformed (RFC 3261 §17).
        Err(e)
            if e.request
                .as_ref()
                .is_some_and(|r| r.method == csps_sip::Method::Ack) =>
        {
            Want::Silence
        }
        Err(e) if e.request.is_some() => Want::Status(e.status),
        Err(_) => Want::Silence,
    }
}

fn status_of(resp: &[u8]) -> Option<u16> {
    let line = resp.split(|&b| b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn names() -> Vec<String> {
    let index = String::from_utf8(data("INDEX.tsv")).expect("UTF-8");
    index
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The message with its Request-URI and Via left alone: the gateway answers to the source
/// address (RFC 3581 `received`), so the example.com hosts inside do not matter.
fn udp_exchange(sock: &UdpSocket, bytes: &[u8], wait: Duration) -> Vec<u16> {
    sock.send(bytes).expect("send");
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(5)),
        ))
        .expect("timeout");
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Some(s) = status_of(&buf[..n]) {
                    got.push(s);
                    if s >= 200 {
                        break;
                    }
                }
            }
            Err(_) => break,
        }
    }
    got
}

fn check(name: &str, want: Want, got: &[u16], transport: &str) -> Option<String> {
    let finals: Vec<u16> = got.iter().copied().filter(|s| *s >= 200).collect();
    let ok = match want {
        Want::Status(s) => finals.first() == Some(&s),
        Want::Handled => finals
            .first()
            .is_some_and(|s| *s != 400 && *s < 500 || *s == 501),
        Want::Silence => finals.is_empty(),
    };
    (!ok).then(|| format!("{transport} {name}: expected {want:?}, got {got:?}"))
}

fn alive(gw: &Gateway) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(gw.sip_addr()).expect("connect");
    let opts = format!(
        "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bK-alive;rport\r\nFrom: <sip:t@x>;tag=1\r\nTo: <sip:{addr}>\r\nCall-ID: alive@x\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        addr = gw.sip_addr(),
        p = sock.local_addr().expect("addr").port()
    );
    let got = udp_exchange(&sock, opts.as_bytes(), Duration::from_secs(3));
    assert_eq!(
        got.last(),
        Some(&200),
        "OPTIONS after the torture run: {got:?}\n{}",
        gw.log_tail(40)
    );
}

#[test]
fn torture_messages_over_udp_and_tcp() {
    let Some(gw) = Gateway::start_or_skip() else {
        return;
    };
    let mut wrong = Vec::new();
    let mut seen = BTreeMap::new();
    for name in names() {
        let bytes = data(&format!("{name}.sip"));
        let w = want(&bytes);
        seen.insert(name.clone(), w);

        // UDP: one datagram, one fresh socket (so answers cannot be confused).
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.connect(gw.sip_addr()).expect("connect");
        let wait = if w == Want::Silence {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(3)
        };
        let got = udp_exchange(&sock, &bytes, wait);
        wrong.extend(check(&name, w, &got, "udp"));

        // TCP: a fresh connection per message.
        let mut tcp = TcpStream::connect(gw.sip_addr()).expect("tcp connect");
        tcp.write_all(&bytes).expect("tcp write");
        let tcp_wait = match name.as_str() {
            // Content-Length larger than the body: the gateway waits for the rest (RFC 4475 clerr).
            "clerr" => Duration::from_millis(500),
            _ if w == Want::Silence => Duration::from_millis(300),
            _ => Duration::from_secs(3),
        };
        tcp.set_read_timeout(Some(tcp_wait)).expect("timeout");
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        let mut acc = Vec::new();
        let deadline = Instant::now() + tcp_wait;
        while Instant::now() < deadline {
            match tcp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    acc.extend_from_slice(&buf[..n]);
                    got = acc
                        .split(|&b| b == b'\n')
                        .filter_map(|l| {
                            std::str::from_utf8(l)
                                .ok()?
                                .strip_prefix("SIP/2.0 ")?
                                .get(..3)?
                                .parse()
                                .ok()
                        })
                        .collect();
                    if got.iter().any(|s: &u16| *s >= 200) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let tcp_want = match name.as_str() {
            // On a stream the gateway waits for the missing body instead of answering.
            "clerr" => Want::Silence,
            // A stream without Content-Length cannot be framed (RFC 3261 §18.3): 400 then close.
            "inv2543" => Want::Status(400),
            _ => w,
        };
        wrong.extend(check(&name, tcp_want, &got, "tcp"));
        let _ = tcp.shutdown(Shutdown::Both);
    }
    assert_eq!(seen.len(), 49, "all RFC 4475 messages were sent");
    alive(&gw);
    assert!(
        wrong.is_empty(),
        "{}\n--- gateway log ---\n{}",
        wrong.join("\n"),
        gw.log_tail(60)
    );
}
