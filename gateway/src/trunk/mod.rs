//! The Direct Routing trunk to Microsoft Teams: owns which SIP proxy (sip, sip2, sip3 of the real
//! service, the configured list, or the proxies DNS names for a configured domain) takes the
//! gateway's traffic, and the OPTIONS keep-alive that tells it. [`Trunk`] is sans-IO — the driver
//! passes time, random tokens and answers in, and sends what it is given — so failover is tested
//! on a simulated clock. [`dns`] is the pure part of RFC 3263 discovery (NAPTR filtering, SRV
//! order, TLS names). [`driver`] is the tokio side: DNS lookups, TLS connections (mutual, with the
//! gateway's certificate), timers, and the view `GET /api/trunk` shows.

pub mod dns;
pub mod driver;

use std::time::{Duration, Instant};

use csps_sip::{Headers, Method, Remote, Request, Uri};

/// Methods the trunk allows; REFER must be listed or Teams never transfers (issue 5).
pub const ALLOW: &str = "INVITE,ACK,OPTIONS,CANCEL,BYE,REFER,NOTIFY,UPDATE";
/// The SIP-over-TLS port the gateway names with its FQDN in Via and Contact towards Teams.
pub const SBC_PORT: u16 = 5061;

/// How calls reach the trunk right now: the driver publishes it whenever a connection or a
/// proxy's state changes, the calls read it (a plain value, so routing is tested without
/// sockets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paths {
    /// `Data.SipConfig.SbcFqdn`; empty when no trunk is configured.
    pub fqdn: String,
    /// Every proxy (configured, or located by DNS), in failover order.
    pub proxies: Vec<Path>,
}

/// One proxy as the calls see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// Its host (what the Request-URI of a call to it names): the configured host, or the SRV
    /// target DNS named (Teams expects its own proxy's name there, not the service domain).
    pub host: String,
    /// Its open connection, if any.
    pub flow: Option<Remote>,
    /// Answering its keep-alives.
    pub up: bool,
}

impl Paths {
    /// True when a trunk is configured.
    pub fn configured(&self) -> bool {
        !self.fqdn.is_empty() && !self.proxies.is_empty()
    }

    /// The proxy that takes a new call: the first one up with an open connection.
    pub fn current(&self) -> Option<&Path> {
        self.proxies.iter().find(|p| p.up && p.flow.is_some())
    }

    /// True when `from` is one of the trunk's connections (a request on it comes from Teams:
    /// the proxy proved who it is with its certificate).
    pub fn is_trunk(&self, from: &Remote) -> bool {
        from.flow.is_some()
            && self
                .proxies
                .iter()
                .any(|p| p.flow.is_some_and(|f| f.flow == from.flow))
    }
}

/// One proxy as the trunk sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// `host:port` as configured or located (the host is in the Request-URI of its OPTIONS).
    pub target: String,
    /// False after an OPTIONS went unanswered, until one is answered again.
    pub up: bool,
    /// When the last OPTIONS was sent.
    pub last_options: Option<Instant>,
    /// Status of the last answer to an OPTIONS (any answer proves the proxy alive).
    pub last_status: Option<u16>,
    /// Time from the last answered OPTIONS to its answer.
    pub rtt: Option<Duration>,
    next_ping: Instant,
    seq: u32,
}

impl Proxy {
    fn new(target: &str, now: Instant) -> Proxy {
        Proxy {
            target: target.to_owned(),
            up: true,
            last_options: None,
            last_status: None,
            rtt: None,
            next_ping: now,
            seq: 0,
        }
    }
}

/// The proxies in their configured order and the keep-alive schedule.
#[derive(Clone, Debug)]
pub struct Trunk {
    fqdn: String,
    interval: Duration,
    proxies: Vec<Proxy>,
}

/// Random tokens for one request, drawn by the driver (the core has no RNG).
#[derive(Clone, Debug)]
pub struct Tokens {
    /// Via branch without the magic cookie.
    pub branch: String,
    /// From tag.
    pub tag: String,
    /// Call-ID.
    pub call_id: String,
}

impl Trunk {
    /// A trunk for the gateway `fqdn` over `targets` (in order), each assumed up and pinged at
    /// `now`, then every `interval`.
    pub fn new(fqdn: &str, targets: &[String], interval: Duration, now: Instant) -> Trunk {
        Trunk {
            fqdn: fqdn.to_owned(),
            interval,
            proxies: targets.iter().map(|t| Proxy::new(t, now)).collect(),
        }
    }

    /// A new list of proxies (DNS named other ones): `targets[j]` takes over the state of the
    /// old proxy `from` when given (the same proxy, maybe at another place in the order), else
    /// starts as [`Self::new`] does.
    pub fn reshape(&mut self, targets: &[(String, Option<usize>)], now: Instant) {
        let old = std::mem::take(&mut self.proxies);
        self.proxies = targets
            .iter()
            .map(|(t, from)| match from.and_then(|i| old.get(i)) {
                Some(p) => Proxy {
                    target: t.clone(),
                    ..p.clone()
                },
                None => Proxy::new(t, now),
            })
            .collect();
    }

    /// The proxies, in order.
    pub fn proxies(&self) -> &[Proxy] {
        &self.proxies
    }

    /// The proxy that takes new traffic: the first one up, in the configured order.
    pub fn current(&self) -> Option<usize> {
        self.proxies.iter().position(|p| p.up)
    }

    /// The proxies whose keep-alive is due at `now`.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.proxies.len())
            .filter(|&i| self.proxies[i].next_ping <= now)
            .collect()
    }

    /// When the driver must call [`Self::due`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.proxies.iter().map(|p| p.next_ping).min()
    }

    /// The OPTIONS keep-alive for proxy `i`, with the FQDN in Via and Contact as Direct Routing
    /// requires (it ignores an SBC whose OPTIONS lack it); schedules the next one.
    pub fn options(&mut self, i: usize, now: Instant, tokens: &Tokens) -> Option<Request> {
        let fqdn = self.fqdn.clone();
        let interval = self.interval;
        let p = self.proxies.get_mut(i)?;
        p.seq = p.seq.wrapping_add(1);
        p.last_options = Some(now);
        p.next_ping = now + interval;
        let host = p
            .target
            .rsplit_once(':')
            .map_or(p.target.as_str(), |(h, _)| h);
        let uri = Uri::parse(&format!("sip:{};transport=tls", p.target)).ok()?;
        let mut h = Headers::new();
        h.push(
            "Via",
            format!(
                "SIP/2.0/TLS {fqdn}:{SBC_PORT};branch=z9hG4bK{}",
                tokens.branch
            ),
        );
        h.push("Max-Forwards", "70");
        h.push(
            "From",
            format!("<sip:{fqdn}:{SBC_PORT};transport=tls>;tag={}", tokens.tag),
        );
        h.push("To", format!("<sip:{host}>"));
        h.push("Call-ID", tokens.call_id.clone());
        h.push("CSeq", format!("{} OPTIONS", p.seq));
        h.push("Contact", format!("<sip:{fqdn}:{SBC_PORT};transport=tls>"));
        h.push("Allow", ALLOW);
        Some(Request {
            method: Method::Options,
            uri,
            headers: h,
            body: bytes::Bytes::new(),
        })
    }

    /// The keep-alive of proxy `i` is due but cannot be sent yet (the driver is still
    /// connecting): asks again after the interval, so a dead proxy is not retried in a loop.
    pub fn deferred(&mut self, i: usize, now: Instant) {
        let interval = self.interval;
        if let Some(p) = self.proxies.get_mut(i) {
            p.next_ping = now + interval;
        }
    }

    /// A connection to proxy `i` just opened: its keep-alive is due at once, as the answer is
    /// what brings it up.
    pub fn connected(&mut self, i: usize, now: Instant) {
        if let Some(p) = self.proxies.get_mut(i) {
            p.next_ping = now;
        }
    }

    /// An answer to proxy `i`'s OPTIONS at `now`: it is alive (even a 403 comes from a live
    /// proxy; the status shows why it refused us).
    pub fn answered(&mut self, i: usize, status: u16, now: Instant) {
        if let Some(p) = self.proxies.get_mut(i) {
            p.up = true;
            p.last_status = Some(status);
            p.rtt = p.last_options.map(|t| now.saturating_duration_since(t));
        }
    }

    /// Proxy `i` did not answer (transaction timeout, connection or TLS failure): marked down,
    /// so [`Self::current`] moves to the next one; the keep-alive goes on to bring it back.
    pub fn unreachable(&mut self, i: usize) {
        if let Some(p) = self.proxies.get_mut(i) {
            p.up = false;
            p.last_status = None;
            p.rtt = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csps_sip::headers::NameAddr;
    use csps_sip::{Message, SipHeaders, parse};

    /// The simulated clock's origin.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn tokens(n: u32) -> Tokens {
        Tokens {
            branch: format!("b{n}"),
            tag: format!("t{n}"),
            call_id: format!("c{n}"),
        }
    }

    fn trunk(now: Instant) -> Trunk {
        let targets: Vec<String> = ["sip", "sip2", "sip3"]
            .iter()
            .map(|h| format!("{h}.pstnhub.microsoft.com:5061"))
            .collect();
        Trunk::new("sbc1.csps.test", &targets, Duration::from_secs(60), now)
    }

    #[test]
    fn options_carry_the_fqdn_in_via_and_contact_and_reparse() {
        let now = t0();
        let mut t = trunk(now);
        let req = t.options(1, now, &tokens(1)).expect("proxy 2");
        let mut wire = Vec::new();
        req.encode(&mut wire);
        let Message::Request(back) = parse(&wire).expect("parses").message else {
            panic!("a request")
        };
        assert_eq!(back.uri.host, "sip2.pstnhub.microsoft.com");
        let via = back.top_via().expect("Via");
        assert_eq!(
            (via.transport.as_str(), via.host.as_str()),
            ("TLS", "sbc1.csps.test")
        );
        let contact = NameAddr::parse(back.headers.get("Contact").expect("Contact")).expect("ok");
        assert_eq!(contact.uri.host, "sbc1.csps.test");
        assert!(
            back.headers
                .get("Allow")
                .is_some_and(|a| a.contains("REFER"))
        );
        assert_eq!(back.cseq().map(|c| c.seq), Some(1));
        let again = t.options(1, now, &tokens(2)).expect("proxy 2");
        assert_eq!(again.cseq().map(|c| c.seq), Some(2), "CSeq grows per proxy");
        assert!(t.options(3, now, &tokens(3)).is_none(), "no fourth proxy");
    }

    #[test]
    fn an_unanswering_proxy_is_skipped_until_it_answers_again() {
        let now = t0();
        let mut t = trunk(now);
        assert_eq!(t.current(), Some(0));
        t.unreachable(0);
        assert_eq!(t.current(), Some(1), "traffic moves to sip2");
        t.unreachable(1);
        assert_eq!(t.current(), Some(2));
        t.options(0, now, &tokens(1));
        t.answered(0, 200, now + Duration::from_millis(7));
        assert_eq!(t.current(), Some(0), "sip is back first in order");
        assert_eq!(t.proxies()[0].rtt, Some(Duration::from_millis(7)));
        t.answered(1, 403, now);
        assert!(t.proxies()[1].up, "a refusal comes from a live proxy");
        assert_eq!(t.proxies()[1].last_status, Some(403));
        for i in 0..3 {
            t.unreachable(i);
        }
        assert_eq!(t.current(), None);
    }

    #[test]
    fn a_reshaped_list_keeps_the_state_of_the_proxies_it_keeps() {
        let now = t0();
        let mut t = trunk(now);
        t.options(1, now, &tokens(1));
        t.answered(1, 200, now + Duration::from_millis(3));
        t.unreachable(2);
        let later = now + Duration::from_secs(10);
        t.reshape(
            &[
                ("sip3.pstnhub.microsoft.com:5061".into(), Some(2)),
                ("sip2.pstnhub.microsoft.com:5061".into(), Some(1)),
                ("sip4.pstnhub.microsoft.com:5061".into(), None),
            ],
            later,
        );
        let p = t.proxies();
        assert_eq!(p.len(), 3);
        assert!(!p[0].up, "sip3 stays down");
        assert_eq!(p[1].last_status, Some(200), "sip2 keeps its answer");
        assert!(p[2].up && p[2].last_options.is_none(), "sip4 is new");
        assert_eq!(t.current(), Some(1));
        assert_eq!(t.due(later), [0, 2], "sip2 not due before its interval");
        let again = t.options(1, later, &tokens(2)).expect("sip2");
        assert_eq!(again.cseq().map(|c| c.seq), Some(2), "its CSeq goes on");
    }

    #[test]
    fn keepalives_are_due_every_interval_per_proxy() {
        let now = t0();
        let mut t = trunk(now);
        assert_eq!(t.due(now), [0, 1, 2], "all pinged at start");
        for i in 0..3 {
            t.options(i, now, &tokens(i as u32));
        }
        assert!(t.due(now).is_empty());
        assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(60)));
        let later = now + Duration::from_secs(30);
        t.options(1, later, &tokens(9));
        assert_eq!(t.due(now + Duration::from_secs(60)), [0, 2]);
        assert_eq!(t.due(now + Duration::from_secs(90)), [0, 1, 2]);
        assert_eq!(t.proxies()[1].last_options, Some(later));
        t.deferred(0, later);
        assert_eq!(
            t.due(now + Duration::from_secs(60)),
            [2],
            "deferred by an interval"
        );
        assert_eq!(t.due(later + Duration::from_secs(60)), [0, 1, 2]);
    }
}
