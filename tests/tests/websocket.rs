//! SIP over WebSocket (RFC 7118) with a real WebSocket SIP stack: JsSIP (the user agent of many
//! browser softphones) running in node over the `ws` package (e2e/sipws/phone.mjs). It registers
//! to a `ws:` and a `wss:` listener with digest, shows in `GET /api/registrations` with that
//! transport, and a SIPp caller's INVITE reaches it over its own WebSocket connection (JsSIP's
//! 180 and 486 come back to the caller); it unregisters on its way out. A handshake without the
//! `sip` subprotocol gets HTTP 400, and a malformed request over WebSocket gets its 400 there.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use csps_tests::{Gateway, GatewayOptions, Sipp, e2e_dir, free_port, have_tool, skip, wait_until};
use serde_json::Value;

const DOMAIN: &str = "csps.local";

/// A gateway with a `transport` (`ws` or `wss`) listener; returns it and that listener's port.
fn gateway_with(transport: &str) -> Option<(Gateway, u16)> {
    if !have_tool("node") || !e2e_dir().join("sipws/node_modules/jssip").is_dir() {
        skip("node or e2e/sipws/node_modules missing (run e2e/setup)");
        return None;
    }
    if !have_tool("sipp") {
        skip("sipp not installed (run e2e/setup)");
        return None;
    }
    let port = free_port();
    let opts = GatewayOptions::default().listen(format!("{transport}:127.0.0.1:{port}"));
    match Gateway::start_with(opts) {
        Ok(gw) => Some((gw, port)),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

/// The JsSIP phone (e2e/sipws/phone.mjs) and the JSON lines it prints.
struct WsPhone {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl WsPhone {
    /// Starts the phone of `user` (password `<user>-secret-1`) against `url`, staying
    /// `seconds`; `ca` trusts the gateway's certificate for `wss`.
    fn start(url: &str, user: &str, ca: Option<&std::path::Path>, seconds: u32) -> WsPhone {
        let dir = e2e_dir().join("sipws");
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .arg("phone.mjs")
            .args(["--url", url, "--user", user, "--domain", DOMAIN])
            .args(["--password", &format!("{user}-secret-1")])
            .args(["--seconds", &seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca).args(["--servername", "localhost"]);
        }
        let mut child = cmd.spawn().expect("run node e2e/sipws/phone.mjs");
        let out = child.stdout.take().expect("the phone's stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        WsPhone {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to 15 s for the event `name`; its line.
    fn wait(&mut self, name: &str) -> Value {
        let until = std::time::Instant::now() + Duration::from_secs(15);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            if let Some(v) = self.seen.iter().find(|v| v["event"] == name) {
                return v.clone();
            }
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => break,
            }
        }
        panic!("the WebSocket phone never said `{name}`: {:#?}", self.seen);
    }
}

impl Drop for WsPhone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `user`'s one binding shows `transport`; the binding.
fn registered_over(gw: &Gateway, user: &str, transport: &str) -> Value {
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        last = gw.registrations_of(user);
        last.len() == 1 && last[0]["transport"] == transport
    });
    assert!(
        ok,
        "{user} over {transport}: {last:#?}\n{}",
        gw.log_tail(30)
    );
    last.remove(0)
}

/// Registers bob's JsSIP phone over `url`, has SIPp alice call him (JsSIP rings, then refuses
/// with 486, which alice's scenario expects), and lets the phone unregister.
fn register_and_take_a_call(
    gw: &Gateway,
    url: &str,
    transport: &str,
    ca: Option<&std::path::Path>,
) {
    gw.create_user("alice", "alice-secret-1");
    gw.create_user("bob", "bob-secret-1");
    let mut bob = WsPhone::start(url, "bob", ca, 8);
    bob.wait("registered");
    let binding = registered_over(gw, "bob", transport);
    assert!(
        binding["contact"]
            .as_str()
            .is_some_and(|c| c.contains(";transport=ws")),
        "{binding:#}"
    );
    let alice = Sipp::caller(
        "uac_busy.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "bob",
        DOMAIN,
    )
    .run();
    assert!(
        alice.ok(),
        "alice's call to bob over {transport}:\n{}\n{:#?}\n{}",
        alice.output,
        bob.seen,
        gw.log_tail(40)
    );
    let incoming = bob.wait("incoming");
    assert!(
        incoming["from"]
            .as_str()
            .is_some_and(|f| f.starts_with("sip:alice@")),
        "{incoming:#}"
    );
    bob.wait("refused");
    bob.wait("unregistered");
    assert!(
        wait_until(Duration::from_secs(10), || gw
            .registrations_of("bob")
            .is_empty()),
        "bob's binding is left: {:#?}",
        gw.registrations_of("bob")
    );
}

#[test]
fn a_jssip_phone_registers_over_ws_and_takes_calls_on_its_connection() {
    let Some((gw, port)) = gateway_with("ws") else {
        return;
    };
    register_and_take_a_call(&gw, &format!("ws://127.0.0.1:{port}"), "ws", None);
}

#[test]
fn a_jssip_phone_registers_over_wss_with_the_gateways_certificate() {
    let Some((gw, port)) = gateway_with("wss") else {
        return;
    };
    let pem = gw.data_dir.path().join("certs").join("self-signed.pem");
    register_and_take_a_call(&gw, &format!("wss://127.0.0.1:{port}"), "wss", Some(&pem));
}

/// The HTTP answer to a WebSocket handshake sent on a raw TCP connection to `port`.
fn handshake(port: u16, protocol: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut req = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send the handshake");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The head only: a 101's connection stays open.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_handshake_without_the_sip_subprotocol_is_refused() {
    let Some((_gw, port)) = gateway_with("ws") else {
        return;
    };
    let refused = handshake(port, None);
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let refused = handshake(port, Some("xmpp"));
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let accepted = handshake(port, Some("sip"));
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    assert!(
        accepted
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: sip"),
        "{accepted}"
    );
}

/// Sends `messages` over one WebSocket (subprotocol `sip`, the `ws` package in node) to `port`
/// and returns what came back within 2 s, one message per element.
fn ws_exchange(port: u16, messages: &[&str]) -> Vec<String> {
    let script = r#"
        const WS = require('ws');
        const [url, ...msgs] = process.argv.slice(1);
        const ws = new WS(url, 'sip');
        const got = [];
        ws.on('open', () => msgs.forEach((m) => ws.send(m)));
        ws.on('message', (d) => got.push(d.toString()));
        ws.on('error', (e) => { console.error(String(e)); process.exit(1); });
        setTimeout(() => { console.log(JSON.stringify(got)); process.exit(0); }, 2000);
    "#;
    let out = Command::new("node")
        .current_dir(e2e_dir().join("sipws"))
        .arg("-e")
        .arg(script)
        .arg(format!("ws://127.0.0.1:{port}"))
        .args(messages)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

/// Over WebSocket as over any transport: a request missing mandatory headers gets 400 with a
/// Warning saying why, a double-CRLF keep-alive gets a CRLF, and OPTIONS is answered 200, all on
/// the same connection.
#[test]
fn bad_requests_and_keep_alives_are_answered_over_websocket() {
    let Some((_gw, port)) = gateway_with("ws") else {
        return;
    };
    let bad = "OPTIONS sip:csps.local SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n\
               Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let options = "OPTIONS sip:csps.local SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK2\r\n\
                   Max-Forwards: 70\r\nFrom: <sip:t@a.invalid>;tag=1\r\nTo: <sip:csps.local>\r\n\
                   Call-ID: ws-options\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let got = ws_exchange(port, &[bad, "\r\n\r\n", options]);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(got[0].starts_with("SIP/2.0 400 "), "{got:#?}");
    assert!(got[0].contains("\r\nWarning: 399 "), "{got:#?}");
    assert_eq!(got[1], "\r\n", "{got:#?}");
    assert!(got[2].starts_with("SIP/2.0 200 "), "{got:#?}");
    assert!(got[2].contains("ws-options"), "{got:#?}");
}
