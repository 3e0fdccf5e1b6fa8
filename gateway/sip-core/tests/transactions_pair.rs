//! RFC 3261 §17 end to end: a client and a server transaction layer stepped against each other
//! over a simulated lossy, reordering UDP network and clock (str0m's `progress`, quinn's `Pair`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use csps_sip::headers::NameAddr;
use csps_sip::transaction::{Event, Input, Output, Transactions, TxnConfig, TxnKey};
use csps_sip::{Message, Method, Remote, Request, Response, SipHeaders, Transport, parse};

/// The simulated clock's origin: the only real clock reading in these tests.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

const CLIENT: &str = "10.0.0.1:5060";
const SERVER: &str = "10.0.0.2:5060";

fn udp(addr: &str) -> Remote {
    Remote {
        transport: Transport::Udp,
        addr: addr.parse::<SocketAddr>().expect("test address"),
        flow: None,
    }
}

fn request(method: &str, branch: &str, call_id: &str, to_tag: Option<&str>) -> Request {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let text = format!(
        "{method} sip:bob@10.0.0.2 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {CLIENT};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@10.0.0.1>;tag=a\r\n\
         To: <sip:bob@10.0.0.2>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\r\n"
    );
    match parse(text.as_bytes()).expect("test request parses").message {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!("a request"),
    }
}

fn tagged(mut r: Response, tag: &str) -> Response {
    let mut to = NameAddr::parse(r.headers.get("To").expect("To")).expect("To parses");
    to.set_param("tag", Some(tag.to_owned()));
    r.headers.set("To", to.to_string());
    r
}

/// A datagram in flight.
struct Packet {
    to_server: bool,
    bytes: Vec<u8>,
}

/// UDP between the two: fixed latency, every third datagram (1, 4, 7, …) slower (so later ones overtake it),
/// every `drop_every`-th datagram lost (0: none, 1: all).
struct Net {
    in_flight: BTreeMap<(Instant, u64), Packet>,
    sent: u64,
    dropped: u64,
    drop_every: u64,
    /// Highest sequence number delivered so far, and how many datagrams arrived after a later one.
    last_delivered: u64,
    reordered: u64,
}

impl Net {
    fn send(&mut self, now: Instant, to_server: bool, msg: &Message) {
        self.send_bytes(now, to_server, msg.to_bytes());
    }

    fn send_bytes(&mut self, now: Instant, to_server: bool, bytes: Vec<u8>) {
        self.sent += 1;
        if self.drop_every > 0 && self.sent.is_multiple_of(self.drop_every) {
            self.dropped += 1;
            return;
        }
        let delay = if self.sent % 3 == 1 { 45 } else { 20 };
        self.in_flight.insert(
            (now + Duration::from_millis(delay), self.sent),
            Packet { to_server, bytes },
        );
    }
}

/// What the client application saw.
#[derive(Default)]
struct ClientApp {
    finals: HashMap<TxnKey, u16>,
    timeouts: Vec<(TxnKey, Duration)>,
    acks_sent: usize,
}

/// The server application: answers everything, and retransmits its 2xx to INVITE until the ACK
/// (RFC 3261 §13.3.1.4; the transaction layer does not, per RFC 6026).
#[derive(Default)]
struct ServerApp {
    /// Call-ID → (transaction, 2xx, next retransmission, interval).
    pending_2xx: HashMap<String, (TxnKey, Response, Instant, Duration)>,
    acked: usize,
    cancels: usize,
}

struct Pair {
    now: Instant,
    start: Instant,
    client: Transactions,
    server: Transactions,
    net: Net,
    capp: ClientApp,
    sapp: ServerApp,
}

impl Pair {
    fn new(drop_every: u64) -> Pair {
        let start = t0();
        Pair {
            now: start,
            start,
            client: Transactions::new(TxnConfig::default()),
            server: Transactions::new(TxnConfig::default()),
            net: Net {
                in_flight: BTreeMap::new(),
                sent: 0,
                dropped: 0,
                drop_every,
                last_delivered: 0,
                reordered: 0,
            },
            capp: ClientApp::default(),
            sapp: ServerApp::default(),
        }
    }

    /// Drains both sides until neither has output.
    fn drain(&mut self) {
        loop {
            let mut idle = true;
            while let Some(o) = self.client.poll_output() {
                idle = false;
                self.client_output(o);
            }
            while let Some(o) = self.server.poll_output() {
                idle = false;
                self.server_output(o);
            }
            if idle {
                return;
            }
        }
    }

    fn client_output(&mut self, o: Output) {
        match o {
            Output::Transmit { msg, .. } => self.net.send(self.now, true, &msg),
            Output::Event(Event::Response { key, resp }) => {
                if resp.status >= 200 {
                    self.capp.finals.insert(key, resp.status);
                }
                // §13.2.2.4: the UAC core ACKs every 2xx (retransmissions too) with a new branch.
                if (200..300).contains(&resp.status)
                    && resp.cseq().is_some_and(|c| c.method == Method::Invite)
                {
                    let call_id = resp.call_id().unwrap_or_default().to_owned();
                    let tag = resp.to_hdr().and_then(|t| t.tag().map(str::to_owned));
                    let mut ack = request(
                        "ACK",
                        &format!("z9hG4bKack-{call_id}-{}", self.capp.acks_sent),
                        &call_id,
                        tag.as_deref(),
                    );
                    ack.headers.set("CSeq", "1 ACK");
                    self.capp.acks_sent += 1;
                    self.client
                        .send_stateless(udp(SERVER), Message::Request(ack));
                }
            }
            Output::Event(Event::Timeout { key }) => {
                self.capp.timeouts.push((key, self.now - self.start));
            }
            Output::Event(_) => {}
            _ => {}
        }
    }

    fn server_output(&mut self, o: Output) {
        match o {
            Output::Transmit { msg, .. } => self.net.send(self.now, false, &msg),
            Output::Resend { bytes, .. } => self.net.send_bytes(self.now, false, bytes.to_vec()),
            Output::Event(Event::Request { key, req, .. }) => {
                let call_id = req.call_id().unwrap_or_default().to_owned();
                let n: u32 = call_id
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let now = self.now;
                if req.method == Method::Invite {
                    let ringing = tagged(req.response(180, "Ringing"), "s");
                    self.server.respond(now, &key, ringing).expect("180");
                    if n % 2 == 1 {
                        let busy = tagged(req.response(486, "Busy Here"), "s");
                        self.server.respond(now, &key, busy).expect("486");
                    } else {
                        let ok = tagged(req.response(200, "OK"), "s");
                        self.server.respond(now, &key, ok.clone()).expect("200");
                        let t1 = self.server.config().t1;
                        self.sapp
                            .pending_2xx
                            .insert(call_id, (key, ok, now + t1, t1));
                    }
                } else {
                    let ok = tagged(req.response(200, "OK"), "s");
                    self.server.respond(now, &key, ok).expect("200");
                }
            }
            Output::Event(Event::Ack { req, .. }) => {
                if let Some(call_id) = req.call_id()
                    && self.sapp.pending_2xx.remove(call_id).is_some()
                {
                    self.sapp.acked += 1;
                }
            }
            Output::Event(Event::Cancel { .. }) => self.sapp.cancels += 1,
            Output::Event(_) => {}
            _ => {}
        }
    }

    /// The server app's next 2xx retransmission.
    fn app_timeout(&self) -> Option<Instant> {
        self.sapp.pending_2xx.values().map(|p| p.2).min()
    }

    /// Advances the clock to the next event anywhere; false when nothing is left to do.
    fn step(&mut self) -> bool {
        self.drain();
        let next = [
            self.client.poll_timeout(),
            self.server.poll_timeout(),
            self.net.in_flight.keys().next().map(|k| k.0),
            self.app_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        while let Some(entry) = self.net.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let seq = entry.key().1;
            if seq < self.net.last_delivered {
                self.net.reordered += 1;
            }
            self.net.last_delivered = self.net.last_delivered.max(seq);
            let p = entry.remove();
            let msg = parse(&p.bytes).expect("our own output parses").message;
            if p.to_server {
                self.server.handle_input(Input::Receive {
                    now,
                    from: udp(CLIENT),
                    msg,
                });
            } else {
                self.client.handle_input(Input::Receive {
                    now,
                    from: udp(SERVER),
                    msg,
                });
            }
            self.drain();
        }
        self.client.handle_input(Input::Timeout(now));
        self.server.handle_input(Input::Timeout(now));
        // §13.3.1.4: the UAS core retransmits its 2xx, T1 doubling to T2, until the ACK or 64*T1.
        let cfg = self.server.config().clone();
        let due: Vec<String> = self
            .sapp
            .pending_2xx
            .iter()
            .filter(|(_, p)| p.2 <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for call_id in due {
            let Some((key, ok, _, interval)) = self.sapp.pending_2xx.remove(&call_id) else {
                continue;
            };
            if self.server.respond(now, &key, ok.clone()).is_ok() {
                let interval = (interval * 2).min(cfg.t2);
                self.sapp
                    .pending_2xx
                    .insert(call_id, (key, ok, now + interval, interval));
            }
        }
        true
    }

    fn run(&mut self) {
        let mut steps = 0;
        while self.step() {
            steps += 1;
            assert!(steps < 1_000_000, "the pair must settle");
        }
    }
}

fn start_calls(p: &mut Pair, n: u32) -> (Vec<TxnKey>, Vec<TxnKey>) {
    let (mut invites, mut others) = (Vec::new(), Vec::new());
    for i in 0..n {
        let now = p.now;
        let inv = request(
            "INVITE",
            &format!("z9hG4bKinv{i}"),
            &format!("call-{i}"),
            None,
        );
        invites.push(
            p.client
                .send_request(now, udp(SERVER), inv)
                .expect("INVITE"),
        );
        let msg = request(
            "MESSAGE",
            &format!("z9hG4bKmsg{i}"),
            &format!("msg-{i}"),
            None,
        );
        others.push(
            p.client
                .send_request(now, udp(SERVER), msg)
                .expect("MESSAGE"),
        );
    }
    (invites, others)
}

fn check_completed(p: &Pair, invites: &[TxnKey], others: &[TxnKey]) {
    assert!(
        p.capp.timeouts.is_empty(),
        "client timeouts: {:?}",
        p.capp.timeouts
    );
    for (i, k) in invites.iter().enumerate() {
        let want = if i % 2 == 1 { 486 } else { 200 };
        assert_eq!(p.capp.finals.get(k), Some(&want), "INVITE {i}");
    }
    for (i, k) in others.iter().enumerate() {
        assert_eq!(p.capp.finals.get(k), Some(&200), "MESSAGE {i}");
    }
    assert!(p.sapp.pending_2xx.is_empty(), "every 2xx was ACKed");
    assert_eq!(p.sapp.acked, invites.len().div_ceil(2));
    assert!(p.client.is_empty() && p.server.is_empty());
    assert_eq!(p.client.poll_timeout(), None);
    assert_eq!(p.server.poll_timeout(), None);
}

#[test]
fn pair_completes_on_a_clean_network() {
    // RFC 3261 §17: INVITE (2xx and 486) and non-INVITE transactions complete and terminate.
    let mut p = Pair::new(0);
    let (invites, others) = start_calls(&mut p, 20);
    p.run();
    check_completed(&p, &invites, &others);
    // Timers D (32 s), J and L (32 s) bound the run.
    assert!(
        p.now - p.start <= Duration::from_secs(33),
        "{:?}",
        p.now - p.start
    );
}

#[test]
fn pair_completes_despite_loss_and_reordering() {
    // RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1: retransmissions (A, E, G, the 2xx by the UAS core)
    // recover every lost datagram; 32 s of timers pass in microseconds.
    for drop_every in [3, 4, 5, 7, 10] {
        let mut p = Pair::new(drop_every);
        let (invites, others) = start_calls(&mut p, 40);
        p.run();
        assert!(p.net.dropped > 0 && p.net.reordered > 0);
        check_completed(&p, &invites, &others);
    }
}

#[test]
fn pair_times_out_when_the_network_is_down() {
    // RFC 3261 §17.1.1.2 and §17.1.2.2: with every datagram lost, Timers B and F fire at 64*T1.
    let mut p = Pair::new(1);
    let (invites, others) = start_calls(&mut p, 3);
    p.run();
    let timed_out: Vec<_> = p.capp.timeouts.iter().map(|t| t.0).collect();
    for k in invites.iter().chain(&others) {
        assert!(timed_out.contains(k));
    }
    assert!(
        p.capp
            .timeouts
            .iter()
            .all(|t| t.1 == Duration::from_secs(32))
    );
    assert!(p.client.is_empty());
    // INVITE: 1 + 6 (Timer A); MESSAGE: 1 + 10 (Timer E).
    assert_eq!(p.net.sent, 3 * (7 + 11));
}
