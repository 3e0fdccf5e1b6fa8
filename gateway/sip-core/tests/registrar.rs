//! RFC 3261 §10.3 registrar behaviour with RFC 8760 digest, RFC 5626 keying, NAT and brute-force
//! limits, driven with simulated time and a seeded RNG.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use csps_sip::digest::{self, Algorithm, DigestParams};
use csps_sip::registrar::{
    Account, Accounts, Admission, AdmissionRequest, Binding, Gatekeeper, RegisterOutcome,
    Registrar, RegistrarConfig,
};
use csps_sip::{FlowId, Message, Remote, Request, Response, Transport};
use rand::SeedableRng;
use rand::rngs::StdRng;

const DOMAIN: &str = "example.com";

#[derive(Default)]
struct Users(HashMap<(String, String), Account>);

impl Users {
    fn add(&mut self, user: &str, password: &str) {
        self.0.insert(
            (user.to_owned(), DOMAIN.to_owned()),
            Account::with_password(user, DOMAIN, password),
        );
    }
}

impl Accounts for Users {
    fn lookup(&self, username: &str, domain: &str) -> Option<Cow<'_, Account>> {
        self.0
            .get(&(username.to_owned(), domain.to_owned()))
            .map(Cow::Borrowed)
    }
}

fn udp(addr: &str) -> Remote {
    Remote {
        transport: Transport::Udp,
        addr: addr.parse().expect("address"),
        flow: None,
    }
}

/// A REGISTER as a phone at `via` would send it.
#[derive(Clone)]
struct Reg {
    user: String,
    via: String,
    call_id: String,
    cseq: u32,
    contacts: Vec<String>,
    extra: Vec<(String, String)>,
}

impl Reg {
    fn new(user: &str, via: &str) -> Reg {
        Reg {
            user: user.to_owned(),
            via: via.to_owned(),
            call_id: format!("cid-{user}-{via}"),
            cseq: 1,
            contacts: vec![format!("<sip:{user}@{via}>")],
            extra: Vec::new(),
        }
    }
    fn contacts(mut self, c: &[&str]) -> Reg {
        self.contacts = c.iter().map(|s| s.to_string()).collect();
        self
    }
    fn header(mut self, n: &str, v: &str) -> Reg {
        self.extra.push((n.to_owned(), v.to_owned()));
        self
    }
    fn build(&self, auth: Option<&str>) -> Request {
        let mut s = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{u}@{DOMAIN}>;tag=f1\r\nTo: <sip:{u}@{DOMAIN}>\r\n\
             Call-ID: {}\r\nCSeq: {} REGISTER\r\n",
            self.via,
            self.cseq,
            self.call_id,
            self.cseq,
            u = self.user
        );
        if !self.extra.iter().any(|(n, _)| n == "User-Agent") {
            s.push_str("User-Agent: test-phone/1.0\r\n");
        }
        for c in &self.contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        for (n, v) in &self.extra {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(a) = auth {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        match csps_sip::parse(s.as_bytes())
            .expect("test REGISTER parses")
            .message
        {
            Message::Request(r) => r,
            Message::Response(_) => panic!("not a request"),
        }
    }
}

struct Harness {
    reg: Registrar,
    users: Users,
    rng: StdRng,
    now: SystemTime,
    local: SocketAddr,
}

impl Harness {
    fn new(cfg: RegistrarConfig) -> Harness {
        let mut users = Users::default();
        for u in ["alice", "bob", "carol"] {
            users.add(u, &format!("{u}-pw"));
        }
        Harness {
            reg: Registrar::new(cfg, [42; 32]),
            users,
            rng: StdRng::seed_from_u64(7),
            now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            local: "198.51.100.1:5060".parse().expect("address"),
        }
    }

    fn default() -> Harness {
        Harness::new(RegistrarConfig {
            default_domain: DOMAIN.to_owned(),
            ..RegistrarConfig::default()
        })
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    fn send(&mut self, req: &Request, from: Remote) -> RegisterOutcome {
        self.reg
            .register(self.now, req, from, self.local, &self.users, &mut self.rng)
    }

    /// Sends without credentials, expects a 401, answers it with `password` and `alg` (nc=1).
    fn register(
        &mut self,
        r: &Reg,
        from: Remote,
        password: &str,
        alg: Algorithm,
    ) -> RegisterOutcome {
        let first = self.send(&r.build(None), from);
        let ch = reply(&first);
        assert_eq!(ch.status, 401, "first REGISTER is challenged");
        let nonce = challenge(ch, alg).0;
        let mut r2 = r.clone();
        r2.cseq += 1;
        let auth = authorization(&r2.user, password, alg, &nonce, 1);
        self.send(&r2.build(Some(&auth)), from)
    }
}

fn reply(o: &RegisterOutcome) -> &Response {
    o.response()
}

/// (nonce, stale) from the WWW-Authenticate header for `alg`.
fn challenge(r: &Response, alg: Algorithm) -> (String, bool) {
    let h = r
        .headers
        .get_all("WWW-Authenticate")
        .find(|h| {
            DigestParams::parse(h)
                .and_then(|p| p.algorithm)
                .is_some_and(|a| a == alg.token())
        })
        .expect("challenge for the algorithm");
    let p = DigestParams::parse(h).expect("digest challenge");
    assert_eq!(p.realm, Some(DOMAIN));
    assert_eq!(p.qop, Some("auth"));
    (
        p.nonce.expect("nonce").to_owned(),
        p.stale.is_some_and(|s| s.eq_ignore_ascii_case("true")),
    )
}

fn authorization(user: &str, password: &str, alg: Algorithm, nonce: &str, nc: u32) -> String {
    let ha1 = digest::ha1(alg, user, DOMAIN, password);
    digest::authorization(
        alg,
        user,
        DOMAIN,
        &ha1,
        nonce,
        nc,
        "0a4f113b",
        "REGISTER",
        &format!("sip:{DOMAIN}"),
    )
}

fn committed(o: &RegisterOutcome) -> (&[Binding], usize) {
    match o {
        RegisterOutcome::Commit {
            upserts,
            removals,
            reply,
        } => {
            assert_eq!(reply.status, 200);
            (upserts, removals.len())
        }
        RegisterOutcome::Reply(r) => panic!("expected a commit, got {} {}", r.status, r.reason),
        _ => panic!("unknown outcome"),
    }
}

fn contacts(r: &Response) -> Vec<&str> {
    r.headers.get_all("Contact").collect()
}

fn warning(r: &Response) -> &str {
    r.headers.get("Warning").unwrap_or("")
}

fn trusted_harness() -> Harness {
    Harness::new(RegistrarConfig {
        default_domain: DOMAIN.to_owned(),
        trusted: vec![
            "10.0.0.0/8".parse().expect("net"),
            "2001:db8::/32".parse().expect("net"),
        ],
        ..RegistrarConfig::default()
    })
}

#[test]
fn md5_challenge_and_response() {
    let mut h = Harness::default();
    let r = Reg::new("alice", "192.0.2.10:5060");
    let first = h.send(&r.build(None), udp("192.0.2.10:5060"));
    let ch = reply(&first);
    assert_eq!(ch.status, 401);
    let algs: Vec<_> = ch
        .headers
        .get_all("WWW-Authenticate")
        .map(|v| {
            DigestParams::parse(v)
                .and_then(|p| p.algorithm)
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        algs,
        ["MD5", "SHA-256"],
        "the configured order: MD5 first by default"
    );
    assert!(
        ch.headers.get("To").is_some_and(|t| t.contains(";tag=")),
        "To tag"
    );
    // RFC 8760 §2.4: with SHA-256 configured first, it leads the challenges.
    let mut sha_first = Harness::new(RegistrarConfig {
        algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        ..RegistrarConfig::default()
    });
    let ch2 = sha_first.send(&r.build(None), udp("192.0.2.10:5060"));
    let first_alg = reply(&ch2).headers.get("WWW-Authenticate").and_then(|v| {
        DigestParams::parse(v)
            .and_then(|p| p.algorithm)
            .map(str::to_owned)
    });
    assert_eq!(first_alg.as_deref(), Some("SHA-256"));
    let out = h.register(&r, udp("192.0.2.10:5060"), "alice-pw", Algorithm::Md5);
    let (up, _) = committed(&out);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].aor, "sip:alice@example.com");
    assert_eq!(up[0].key, "contact:sip:alice@192.0.2.10:5060");
    assert_eq!(up[0].user_agent.as_deref(), Some("test-phone/1.0"));
    assert!(!up[0].nat);
    assert_eq!(
        contacts(reply(&out)),
        ["<sip:alice@192.0.2.10:5060>;expires=3600"]
    );
    assert_eq!(h.reg.len(), 1);
    assert_eq!(h.reg.lookup("sip:alice@example.com").len(), 1);
}

#[test]
fn sha256_challenge_and_response() {
    let mut h = Harness::default();
    let r = Reg::new("bob", "192.0.2.11:5060");
    let out = h.register(&r, udp("192.0.2.11:5060"), "bob-pw", Algorithm::Sha256);
    assert_eq!(committed(&out).0.len(), 1);
    assert_eq!(h.reg.counters().challenges, 1);
}

#[test]
fn md5_only_account_is_offered_md5_only() {
    let mut h = Harness::default();
    h.users.0.insert(
        ("legacy".into(), DOMAIN.into()),
        Account {
            enabled: true,
            ha1: vec![(
                DOMAIN.into(),
                Algorithm::Md5,
                digest::ha1(Algorithm::Md5, "legacy", DOMAIN, "pw"),
            )],
        },
    );
    let r = Reg::new("legacy", "192.0.2.12:5060");
    let first = h.send(&r.build(None), udp("192.0.2.12:5060"));
    assert_eq!(reply(&first).headers.count("WWW-Authenticate"), 1);
    let out = h.register(&r, udp("192.0.2.12:5060"), "pw", Algorithm::Md5);
    committed(&out);
}

#[test]
fn stale_nonce_gets_stale_challenge() {
    let mut h = Harness::default();
    let from = udp("192.0.2.10:5060");
    let mut r = Reg::new("alice", "192.0.2.10:5060");
    let nonce = challenge(reply(&h.send(&r.build(None), from)), Algorithm::Md5).0;
    h.advance(301);
    r.cseq = 2;
    let auth = authorization("alice", "alice-pw", Algorithm::Md5, &nonce, 1);
    let out = h.send(&r.build(Some(&auth)), from);
    assert_eq!(reply(&out).status, 401);
    let (fresh, stale) = challenge(reply(&out), Algorithm::Md5);
    assert!(stale, "stale=true");
    assert_ne!(fresh, nonce);
    assert_eq!(h.reg.counters().stale_nonces, 1);
    assert_eq!(h.reg.counters().auth_failures, 0);
    r.cseq = 3;
    let auth = authorization("alice", "alice-pw", Algorithm::Md5, &fresh, 1);
    committed(&h.send(&r.build(Some(&auth)), from));
    // A stale nonce with a wrong password is a failure, not a stale challenge.
    h.advance(301);
    r.cseq = 4;
    let auth = authorization("alice", "nope", Algorithm::Md5, &fresh, 2);
    let out = h.send(&r.build(Some(&auth)), from);
    assert!(!challenge(reply(&out), Algorithm::Md5).1);
    assert_eq!(h.reg.counters().auth_failures, 1);
}

#[test]
fn forged_nonce_is_rechallenged() {
    let mut h = Harness::default();
    let from = udp("192.0.2.10:5060");
    let r = Reg::new("alice", "192.0.2.10:5060");
    let auth = authorization(
        "alice",
        "alice-pw",
        Algorithm::Md5,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        1,
    );
    let out = h.send(&r.build(Some(&auth)), from);
    assert_eq!(reply(&out).status, 401);
    assert!(!challenge(reply(&out), Algorithm::Md5).1);
    // A nonce minted with another secret is foreign too.
    let mut other = Registrar::new(RegistrarConfig::default(), [1; 32]);
    let o = other.register(
        h.now,
        &r.build(None),
        from,
        h.local,
        &h.users,
        &mut StdRng::seed_from_u64(1),
    );
    let foreign = DigestParams::parse(reply(&o).headers.get("WWW-Authenticate").expect("401"))
        .and_then(|p| p.nonce)
        .expect("nonce")
        .to_owned();
    let auth = authorization("alice", "alice-pw", Algorithm::Md5, &foreign, 1);
    assert_eq!(reply(&h.send(&r.build(Some(&auth)), from)).status, 401);
}

#[test]
fn replayed_nc_is_refused() {
    let mut h = Harness::default();
    let from = udp("192.0.2.10:5060");
    let mut r = Reg::new("alice", "192.0.2.10:5060");
    let nonce = challenge(reply(&h.send(&r.build(None), from)), Algorithm::Sha256).0;
    r.cseq = 2;
    let auth1 = authorization("alice", "alice-pw", Algorithm::Sha256, &nonce, 1);
    committed(&h.send(&r.build(Some(&auth1)), from));
    r.cseq = 3;
    let out = h.send(&r.build(Some(&auth1)), from);
    assert_eq!(reply(&out).status, 401, "nc=1 again");
    let (fresh, stale) = challenge(reply(&out), Algorithm::Sha256);
    assert!(!stale);
    assert_ne!(fresh, nonce);
    assert_eq!(h.reg.counters().nc_replays, 1);
    r.cseq = 4;
    let auth2 = authorization("alice", "alice-pw", Algorithm::Sha256, &nonce, 2);
    committed(&h.send(&r.build(Some(&auth2)), from));
    assert_eq!(h.reg.counters().auth_failures, 0);
}

#[test]
fn wrong_password_locks_the_pair_only() {
    let mut h = Harness::default();
    let attacker = udp("203.0.113.66:5060");
    let mut r = Reg::new("alice", "203.0.113.66:5060");
    for i in 0..5 {
        let out = h.send(&r.build(None), attacker);
        let nonce = challenge(reply(&out), Algorithm::Md5).0;
        r.cseq += 1;
        let auth = authorization("alice", "guess", Algorithm::Md5, &nonce, 1);
        let out = h.send(&r.build(Some(&auth)), attacker);
        // Every failing answer is challenged again; the fifth one starts the lockout.
        assert_eq!(reply(&out).status, 401, "attempt {i}");
        r.cseq += 1;
        h.advance(1);
    }
    let c = h.reg.counters();
    assert_eq!((c.auth_failures, c.lockouts), (5, 1));
    // Locked even with the right password, and without even being challenged.
    let out = h.send(&r.build(None), attacker);
    assert_eq!(reply(&out).status, 403);
    assert!(warning(reply(&out)).contains("locked out"));
    assert_eq!(h.reg.counters().locked_rejections, 1);
    // The real phone elsewhere is not affected.
    let phone = udp("192.0.2.10:5060");
    let out = h.register(
        &Reg::new("alice", "192.0.2.10:5060"),
        phone,
        "alice-pw",
        Algorithm::Md5,
    );
    committed(&out);
    // Another account from the attacker's address is not locked (the IP cap is higher).
    let out = h.send(&Reg::new("bob", "203.0.113.66:5060").build(None), attacker);
    assert_eq!(reply(&out).status, 401);
    // After the cooldown the pair may try again.
    h.advance(300);
    let out = h.register(&r, attacker, "alice-pw", Algorithm::Md5);
    committed(&out);
}

#[test]
fn one_ip_failing_across_accounts_is_capped() {
    let mut h = Harness::default();
    for i in 0..40 {
        h.users.add(&format!("u{i}"), "secret");
    }
    let attacker = udp("203.0.113.9:5060");
    let mut locked_at = None;
    for i in 0..40 {
        let r = Reg::new(&format!("u{i}"), "203.0.113.9:5060");
        let first = h.send(&r.build(None), attacker);
        if reply(&first).status == 403 {
            locked_at = Some(i);
            break;
        }
        let nonce = challenge(reply(&first), Algorithm::Md5).0;
        let mut r2 = r.clone();
        r2.cseq = 2;
        let auth = authorization(&r2.user, "wrong", Algorithm::Md5, &nonce, 1);
        let out = h.send(&r2.build(Some(&auth)), attacker);
        assert!(matches!(reply(&out).status, 401 | 403));
    }
    assert_eq!(locked_at, Some(20), "4 × limit failures lock the IP");
    // Even an unknown user is refused from that IP now, and a correct password too.
    let out = h.send(&Reg::new("alice", "203.0.113.9:5060").build(None), attacker);
    assert_eq!(reply(&out).status, 403);
    // Another IP is fine.
    let out = h.register(
        &Reg::new("u1", "192.0.2.7:5060"),
        udp("192.0.2.7:5060"),
        "secret",
        Algorithm::Sha256,
    );
    committed(&out);
    // The limiter forgets the attacker once the cooldown has passed.
    h.advance(301);
    let out = h.send(
        &Reg::new("alice", "192.0.2.7:5060").build(None),
        udp("192.0.2.7:5060"),
    );
    assert_eq!(reply(&out).status, 401);
    assert_eq!(h.reg.counters().limiter_entries, 0);
}

#[test]
fn trusted_ranges_skip_the_challenge_v4_and_v6() {
    let mut h = trusted_harness();
    let out = h.send(
        &Reg::new("alice", "10.1.2.3:5060").build(None),
        udp("10.1.2.3:5060"),
    );
    committed(&out);
    let out = h.send(
        &Reg::new("bob", "[2001:db8::5]:5060").build(None),
        udp("[2001:db8::5]:5060"),
    );
    let (up, _) = committed(&out);
    assert!(!up[0].nat);
    // An IPv4-mapped IPv6 source from a trusted v4 range is trusted too.
    let out = h.send(
        &Reg::new("carol", "10.9.9.9:5060").build(None),
        udp("[::ffff:10.9.9.9]:5060"),
    );
    committed(&out);
    // Unknown user from a trusted source: 404.
    let out = h.send(
        &Reg::new("mallory", "10.1.2.3:5060").build(None),
        udp("10.1.2.3:5060"),
    );
    assert_eq!(reply(&out).status, 404);
    // Outside the ranges: challenged.
    let out = h.send(
        &Reg::new("alice", "[2001:db9::1]:5060").build(None),
        udp("[2001:db9::1]:5060"),
    );
    assert_eq!(reply(&out).status, 401);
}

/// An admission policy as an operator might write one: refuse a device family, admit one
/// account from a subnet outside the trusted ranges, challenge everything else (trusted or not).
struct Policy;

impl Gatekeeper for Policy {
    fn admit(&self, req: &AdmissionRequest<'_>) -> Admission {
        if req
            .user_agent
            .is_some_and(|ua| ua.starts_with("friendly-scanner"))
        {
            return Admission::Reject {
                code: 403,
                reason: "Scanner Refused".into(),
            };
        }
        if req.aor == "sip:bob@example.com" && req.source.ip().to_string().starts_with("192.0.2.") {
            return Admission::Admit;
        }
        Admission::Challenge
    }
}

#[test]
fn the_gatekeeper_decides_admission_instead_of_the_trusted_ranges() {
    let mut h = trusted_harness();
    h.reg.set_gatekeeper(Box::new(Policy));
    // Trusted range, but the policy challenges: 401, and the digest path works as usual.
    let r = Reg::new("alice", "10.1.2.3:5060");
    let out = h.register(&r, udp("10.1.2.3:5060"), "alice-pw", Algorithm::Md5);
    committed(&out);
    // Outside the trusted ranges, but admitted by the policy (the account must still exist).
    let out = h.send(
        &Reg::new("bob", "192.0.2.7:5060").build(None),
        udp("192.0.2.7:5060"),
    );
    committed(&out);
    // The user agent the policy refuses: its status, reason and a Warning saying who refused.
    let out = h.send(
        &Reg::new("carol", "10.1.2.3:5060")
            .header("User-Agent", "friendly-scanner")
            .build(None),
        udp("10.1.2.3:5060"),
    );
    let resp = reply(&out);
    assert_eq!(
        (resp.status, resp.reason.as_str()),
        (403, "Scanner Refused")
    );
    assert!(
        warning(resp).contains("admission policy"),
        "{}",
        warning(resp)
    );
}

/// A gatekeeper that answers what it is told to, even nonsense.
struct Says(Admission);

impl Gatekeeper for Says {
    fn admit(&self, _req: &AdmissionRequest<'_>) -> Admission {
        self.0.clone()
    }
}

#[test]
fn a_rejection_with_a_bad_status_or_phrase_still_gives_a_valid_response() {
    let mut h = Harness::default();
    h.reg.set_gatekeeper(Box::new(Says(Admission::Reject {
        code: 200,
        reason: "OK\r\nX-Injected: 1".into(),
    })));
    let out = h.send(
        &Reg::new("alice", "192.0.2.1:5060").build(None),
        udp("192.0.2.1:5060"),
    );
    let resp = reply(&out);
    assert_eq!((resp.status, resp.reason.as_str()), (403, "Forbidden"));
    assert!(resp.headers.get("X-Injected").is_none());
    // Admit on an unknown account is still 404: the account must exist.
    h.reg.set_gatekeeper(Box::new(Says(Admission::Admit)));
    let out = h.send(
        &Reg::new("mallory", "192.0.2.1:5060").build(None),
        udp("192.0.2.1:5060"),
    );
    assert_eq!(reply(&out).status, 404);
}

#[test]
fn config_replaced_live() {
    let mut h = Harness::default();
    let from = udp("10.1.2.3:5060");
    let r = Reg::new("alice", "10.1.2.3:5060");
    assert_eq!(reply(&h.send(&r.build(None), from)).status, 401);
    let mut cfg = h.reg.config().clone();
    cfg.trusted = vec!["10.0.0.0/8".parse().expect("net")];
    h.reg.set_config(cfg);
    committed(&h.send(&r.build(None), from));
}

#[test]
fn unknown_user_is_challenged_then_forbidden() {
    let mut h = Harness::default();
    let from = udp("192.0.2.10:5060");
    let r = Reg::new("mallory", "192.0.2.10:5060");
    let out = h.send(&r.build(None), from);
    assert_eq!(reply(&out).status, 401, "no hint that the user is unknown");
    assert_eq!(reply(&out).headers.count("WWW-Authenticate"), 2);
    let out = h.register(&r, from, "whatever", Algorithm::Md5);
    assert_eq!(reply(&out).status, 403);
    assert_eq!(h.reg.counters().auth_failures, 1);
}

#[test]
fn disabled_account_and_user_mismatch_are_forbidden() {
    let mut h = Harness::default();
    let from = udp("192.0.2.10:5060");
    if let Some(a) = h.users.0.get_mut(&("carol".to_owned(), DOMAIN.to_owned())) {
        a.enabled = false;
    }
    let out = h.register(
        &Reg::new("carol", "192.0.2.10:5060"),
        from,
        "carol-pw",
        Algorithm::Md5,
    );
    assert_eq!(reply(&out).status, 403);
    assert!(warning(reply(&out)).contains("account disabled"));
    assert!(warning(reply(&out)).starts_with("399 csps "));

    let mut r = Reg::new("alice", "192.0.2.10:5060");
    let nonce = challenge(reply(&h.send(&r.build(None), from)), Algorithm::Md5).0;
    r.cseq = 2;
    let auth = authorization("bob", "bob-pw", Algorithm::Md5, &nonce, 1);
    let out = h.send(&r.build(Some(&auth)), from);
    assert_eq!(reply(&out).status, 403);
    assert!(warning(reply(&out)).contains("user mismatch"));
}

#[test]
fn interval_too_brief_and_max_capped() {
    let mut h = trusted_harness();
    let from = udp("10.0.0.2:5060");
    let r = Reg::new("alice", "10.0.0.2:5060").header("Expires", "30");
    let out = h.send(&r.build(None), from);
    assert_eq!(reply(&out).status, 423);
    assert_eq!(reply(&out).headers.get("Min-Expires"), Some("60"));
    let r =
        Reg::new("alice", "10.0.0.2:5060").contacts(&["<sip:alice@10.0.0.2:5060>;expires=99999"]);
    let out = h.send(&r.build(None), from);
    let (up, _) = committed(&out);
    assert_eq!(up[0].expires_at, h.now + Duration::from_secs(3600));
    assert_eq!(
        contacts(reply(&out)),
        ["<sip:alice@10.0.0.2:5060>;expires=3600"]
    );
}

#[test]
fn unregister_one_and_star() {
    let mut h = trusted_harness();
    let from = udp("10.0.0.2:5060");
    let mut r = Reg::new("alice", "10.0.0.2:5060")
        .contacts(&["<sip:alice@10.0.0.2:5060>", "<sip:alice@10.0.0.2:5062>"]);
    committed(&h.send(&r.build(None), from));
    assert_eq!(h.reg.len(), 2);
    r.cseq = 2;
    r.contacts = vec!["<sip:alice@10.0.0.2:5060>;expires=0".into()];
    let out = h.send(&r.build(None), from);
    let (up, removed) = committed(&out);
    assert_eq!((up.len(), removed), (0, 1));
    // The second contact's port is not the source port: NAT rules shortened it.
    assert_eq!(
        contacts(reply(&out)),
        ["<sip:alice@10.0.0.2:5062>;expires=120"]
    );
    // `*` needs Expires: 0 and must stand alone.
    r.cseq = 3;
    r.contacts = vec!["*".into()];
    assert_eq!(reply(&h.send(&r.build(None), from)).status, 400);
    let mut bad = r.clone().header("Expires", "0");
    bad.contacts.push("<sip:alice@10.0.0.2:5064>".into());
    assert_eq!(reply(&h.send(&bad.build(None), from)).status, 400);
    let out = h.send(&r.clone().header("Expires", "0").build(None), from);
    let (up, removed) = committed(&out);
    assert_eq!((up.len(), removed), (0, 1));
    assert!(contacts(reply(&out)).is_empty());
    assert!(h.reg.is_empty());
    assert_eq!(h.reg.next_expiry(), None);
}

#[test]
fn fetch_lists_bindings_without_changes() {
    let mut h = trusted_harness();
    let from = udp("10.0.0.2:5060");
    committed(&h.send(&Reg::new("alice", "10.0.0.2:5060").build(None), from));
    h.advance(100);
    let out = h.send(
        &Reg::new("alice", "10.0.0.3:5060").contacts(&[]).build(None),
        udp("10.0.0.3:5060"),
    );
    let RegisterOutcome::Reply(r) = &out else {
        panic!("a fetch commits nothing")
    };
    assert_eq!(r.status, 200);
    assert_eq!(contacts(r), ["<sip:alice@10.0.0.2:5060>;expires=3500"]);
}

#[test]
fn instance_and_reg_id_key_the_binding() {
    let mut h = trusted_harness();
    let inst = "+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"";
    let tcp = |flow| Remote {
        transport: Transport::Tcp,
        addr: "10.0.0.2:40000".parse().expect("addr"),
        flow: Some(FlowId(flow)),
    };
    let mut r = Reg::new("alice", "10.0.0.2:40000").contacts(&[&format!(
        "<sip:alice@10.0.0.2:40000;transport=tcp>;{inst};reg-id=1"
    )]);
    let out = h.send(&r.build(None), tcp(1));
    let (up, _) = committed(&out);
    assert_eq!(
        up[0].key,
        "instance:urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF;reg-id=1"
    );
    assert_eq!(up[0].reg_id, Some(1));
    assert_eq!(up[0].source.flow, Some(FlowId(1)));
    assert_eq!(reply(&out).headers.get("Require"), Some("outbound"));
    // Same instance and reg-id, new flow and new contact port: replaces the binding.
    r.cseq = 2;
    r.contacts = vec![format!(
        "<sip:alice@10.0.0.2:40002;transport=tcp>;{inst};reg-id=1"
    )];
    let out = h.send(&r.build(None), tcp(2));
    committed(&out);
    let b = h.reg.lookup("sip:alice@example.com");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].source.flow, Some(FlowId(2)));
    assert!(b[0].contact.contains(":40002"));
    // A second reg-id is a second flow of the same instance.
    r.cseq = 3;
    r.contacts = vec![format!(
        "<sip:alice@10.0.0.2:40003;transport=tcp>;{inst};reg-id=2"
    )];
    committed(&h.send(&r.build(None), tcp(3)));
    assert_eq!(h.reg.lookup("sip:alice@example.com").len(), 2);
}

#[test]
fn contact_uri_keys_without_instance_and_keeps_params() {
    let mut h = trusted_harness();
    let from = udp("10.0.0.2:5060");
    // RFC 4475 cparam/regescrt style: params after `>` are contact params, `?…` stays in the URI.
    let c = "\"Alice\" <sip:alice@10.0.0.2:5060;user=phone?Route=%3Csip:sip.example.com%3E>;audio;expires=1800;q=0.7";
    let out = h.send(
        &Reg::new("alice", "10.0.0.2:5060")
            .contacts(&[c])
            .build(None),
        from,
    );
    let (up, _) = committed(&out);
    assert_eq!(
        up[0].key,
        "contact:sip:alice@10.0.0.2:5060;user=phone?Route=%3Csip:sip.example.com%3E"
    );
    assert_eq!(
        up[0].contact,
        "\"Alice\" <sip:alice@10.0.0.2:5060;user=phone?Route=%3Csip:sip.example.com%3E>;audio;q=0.7"
    );
    assert_eq!(up[0].q, Some(700));
    assert_eq!(up[0].expires_at, h.now + Duration::from_secs(1800));
    // A different contact URI is a second binding.
    let out = h.send(
        &Reg::new("alice", "10.0.0.2:5060")
            .contacts(&["<sip:alice@10.0.0.2:5070>"])
            .build(None),
        from,
    );
    committed(&out);
    assert_eq!(contacts(reply(&out)).len(), 2);
}

#[test]
fn one_device_many_accounts_and_one_account_many_devices() {
    let mut h = Harness::default();
    let base = udp("192.0.2.50:5060");
    // A DECT base registers three handsets' accounts from one Contact.
    for (i, u) in ["alice", "bob", "carol"].iter().enumerate() {
        let r = Reg::new(u, "192.0.2.50:5060").contacts(&["<sip:dect@192.0.2.50:5060>"]);
        let out = h.register(&r, base, &format!("{u}-pw"), Algorithm::Md5);
        committed(&out);
        assert_eq!(h.reg.len(), i + 1);
    }
    for u in ["alice", "bob", "carol"] {
        assert_eq!(h.reg.lookup(&format!("sip:{u}@example.com")).len(), 1);
    }
    // Alice also on a desk phone.
    let desk = udp("192.0.2.51:5060");
    committed(&h.register(
        &Reg::new("alice", "192.0.2.51:5060"),
        desk,
        "alice-pw",
        Algorithm::Sha256,
    ));
    assert_eq!(h.reg.lookup("sip:alice@example.com").len(), 2);
    assert_eq!(h.reg.len(), 4);
}

#[test]
fn nat_shortens_expires_over_udp_and_tcp_records_the_flow() {
    let mut h = trusted_harness();
    // Phone at 192.168.1.20 behind a NAT that maps it to 10.20.0.1:31000.
    let natted = udp("10.20.0.1:31000");
    let out = h.send(&Reg::new("alice", "192.168.1.20:5060").build(None), natted);
    let (up, _) = committed(&out);
    assert!(up[0].nat);
    assert_eq!(up[0].source.addr, natted.addr);
    assert_eq!(up[0].expires_at, h.now + Duration::from_secs(120));
    assert_eq!(
        contacts(reply(&out)),
        ["<sip:alice@192.168.1.20:5060>;expires=120"]
    );
    // Via right (rport-style) but Contact private: still NAT.
    let out = h.send(
        &Reg::new("bob", "10.20.0.2:5060")
            .contacts(&["<sip:bob@192.168.1.21:5060>"])
            .build(None),
        udp("10.20.0.2:5060"),
    );
    assert!(committed(&out).0[0].nat);
    // A short request stays short.
    let out = h.send(
        &Reg::new("carol", "192.168.1.22:5060")
            .header("Expires", "90")
            .build(None),
        udp("10.20.0.3:4000"),
    );
    assert_eq!(
        committed(&out).0[0].expires_at,
        h.now + Duration::from_secs(90)
    );
    // Over TCP the flow is the way back: no NAT shortening.
    let tcp = Remote {
        transport: Transport::Tcp,
        addr: "10.20.0.4:50000".parse().expect("addr"),
        flow: Some(FlowId(9)),
    };
    let out = h.send(&Reg::new("alice", "192.168.1.23:5060").build(None), tcp);
    let (up, _) = committed(&out);
    assert!(!up[0].nat);
    assert_eq!(up[0].source, tcp);
    assert_eq!(up[0].expires_at, h.now + Duration::from_secs(3600));
}

#[test]
fn cseq_ordering_per_call_id() {
    let mut h = trusted_harness();
    let from = udp("10.0.0.2:5060");
    let mut r = Reg::new("alice", "10.0.0.2:5060");
    r.cseq = 10;
    committed(&h.send(&r.build(None), from));
    r.cseq = 10;
    let out = h.send(&r.build(None), from);
    assert_eq!(reply(&out).status, 500, "same CSeq, same Call-ID");
    r.cseq = 9;
    assert_eq!(reply(&h.send(&r.build(None), from)).status, 500);
    r.cseq = 11;
    committed(&h.send(&r.build(None), from));
    // A new Call-ID (phone rebooted) may start over.
    r.call_id = "rebooted".into();
    r.cseq = 1;
    let out = h.send(&r.build(None), from);
    assert_eq!(committed(&out).0[0].call_id, "rebooted");
    // `*` is ordered too.
    r.contacts = vec!["*".into()];
    let star = r.clone().header("Expires", "0");
    assert_eq!(reply(&h.send(&star.build(None), from)).status, 500);
}

#[test]
fn expiry_in_order_without_scans() {
    let mut h = trusted_harness();
    for (u, secs) in [("alice", 300), ("bob", 120), ("carol", 600)] {
        let r = Reg::new(u, "10.0.0.2:5060").header("Expires", &secs.to_string());
        committed(&h.send(&r.build(None), udp("10.0.0.2:5060")));
    }
    let t0 = h.now;
    assert_eq!(h.reg.next_expiry(), Some(t0 + Duration::from_secs(120)));
    assert!(h.reg.expire(t0 + Duration::from_secs(119)).is_empty());
    let gone = h.reg.expire(t0 + Duration::from_secs(120));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].aor, "sip:bob@example.com");
    assert_eq!(h.reg.next_expiry(), Some(t0 + Duration::from_secs(300)));
    // Refreshing alice moves her expiry and drops the old index entry.
    h.advance(200);
    let mut r = Reg::new("alice", "10.0.0.2:5060").header("Expires", "600");
    r.cseq = 2;
    committed(&h.send(&r.build(None), udp("10.0.0.2:5060")));
    assert_eq!(h.reg.next_expiry(), Some(t0 + Duration::from_secs(600)));
    let gone = h.reg.expire(t0 + Duration::from_secs(800));
    let aors: Vec<_> = gone.iter().map(|k| k.aor.as_str()).collect();
    assert_eq!(aors, ["sip:carol@example.com", "sip:alice@example.com"]);
    assert!(h.reg.is_empty());
    assert_eq!(h.reg.next_expiry(), None);
}

#[test]
fn load_and_remove() {
    let mut h = trusted_harness();
    let out = h.send(
        &Reg::new("alice", "10.0.0.2:5060").build(None),
        udp("10.0.0.2:5060"),
    );
    let b = committed(&out).0[0].clone();
    let mut fresh = Registrar::new(RegistrarConfig::default(), [42; 32]);
    fresh.load([b.clone(), b.clone()]);
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh.next_expiry(), Some(b.expires_at));
    assert_eq!(fresh.remove(&b.binding_key()), Some(b));
    assert!(fresh.is_empty());
    assert_eq!(fresh.next_expiry(), None);
}

#[test]
fn nonce_table_is_bounded() {
    let cfg = RegistrarConfig {
        default_domain: DOMAIN.to_owned(),
        ..RegistrarConfig::default()
    };
    let mut h = Harness::default();
    h.reg = Registrar::with_nonce_capacity(cfg, [42; 32], 4);
    let from = udp("192.0.2.10:5060");
    let mut r = Reg::new("alice", "192.0.2.10:5060");
    for _ in 0..10 {
        r.cseq += 2;
        committed(&h.register(&r, from, "alice-pw", Algorithm::Md5));
        h.advance(1);
    }
    assert!(h.reg.counters().tracked_nonces <= 4);
    // Age-based eviction empties the table once nonces are past their lifetime.
    h.advance(400);
    let _ = h.send(&r.build(None), from);
    assert_eq!(h.reg.counters().tracked_nonces, 0);
}

#[test]
fn evicted_nonce_replay_is_stale_not_accepted() {
    let cfg = RegistrarConfig {
        default_domain: DOMAIN.to_owned(),
        ..RegistrarConfig::default()
    };
    let mut h = Harness::default();
    h.reg = Registrar::with_nonce_capacity(cfg, [42; 32], 1);
    let from = udp("192.0.2.10:5060");
    let mut r = Reg::new("alice", "192.0.2.10:5060");
    let n1 = challenge(reply(&h.send(&r.build(None), from)), Algorithm::Md5).0;
    r.cseq = 2;
    let a1 = authorization("alice", "alice-pw", Algorithm::Md5, &n1, 1);
    committed(&h.send(&r.build(Some(&a1)), from));
    h.advance(1);
    r.cseq = 3;
    let n2 = challenge(reply(&h.send(&r.build(None), from)), Algorithm::Md5).0;
    r.cseq = 4;
    let a2 = authorization("alice", "alice-pw", Algorithm::Md5, &n2, 1);
    committed(&h.send(&r.build(Some(&a2)), from));
    // n1 was evicted to make room for n2: replaying its nc=1 must not succeed.
    r.cseq = 5;
    let out = h.send(&r.build(Some(&a1)), from);
    assert_eq!(reply(&out).status, 401);
    assert!(challenge(reply(&out), Algorithm::Md5).1, "stale");
}

#[test]
fn binding_memory_is_lean() {
    let mut h = trusted_harness();
    let inst = "+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"";
    for i in 0..1000 {
        let u = format!("user{i}");
        h.users.add(&u, "pw");
        let r = Reg::new(&u, "10.0.0.2:5060").contacts(&[&format!(
            "<sip:{u}@10.0.0.2:5060;transport=udp>;{inst};reg-id=1"
        )]);
        committed(&h.send(&r.build(None), udp("10.0.0.2:5060")));
    }
    let b = h.reg.lookup("sip:user1@example.com")[0];
    let strings = b.aor.capacity()
        + b.key.capacity()
        + b.contact.capacity()
        + b.call_id.capacity()
        + b.user_agent.as_ref().map_or(0, String::capacity)
        + b.instance_id.as_ref().map_or(0, String::capacity)
        + 6 * 16; // allocator overhead per string
    let per = std::mem::size_of::<Binding>() + strings + h.reg.index_bytes() / h.reg.len();
    assert!(
        std::mem::size_of::<Binding>() <= 320,
        "Binding is {} bytes",
        std::mem::size_of::<Binding>()
    );
    eprintln!(
        "Binding {} bytes, strings {strings}, index {} per binding: about {per} bytes",
        std::mem::size_of::<Binding>(),
        h.reg.index_bytes() / h.reg.len()
    );
    assert!(per <= 1024, "about {per} bytes per registration");
}

#[test]
fn percent_encoded_user_and_bad_requests() {
    let mut h = trusted_harness();
    let from = udp("10.0.0.2:5060");
    let r = Reg::new("%61lice", "10.0.0.2:5060");
    let out = h.send(&r.build(None), from);
    assert_eq!(committed(&out).0[0].aor, "sip:alice@example.com");
    // Missing CSeq method mismatch and a bad Contact are 400.
    let r = Reg::new("alice", "10.0.0.2:5060").contacts(&["<sip:alice@10.0.0.2"]);
    assert_eq!(reply(&h.send(&r.build(None), from)).status, 400);
}

#[test]
fn malformed_registers_get_answers_not_panics() {
    let mut h = Harness::default();
    let from = udp("192.0.2.10:5060");
    let base = Reg::new("alice", "192.0.2.10:5060").build(None);
    let mut cases: Vec<(Request, u16)> = Vec::new();
    let mut no_cseq = base.clone();
    no_cseq.headers.remove("CSeq");
    cases.push((no_cseq, 400));
    let mut wrong_method = base.clone();
    wrong_method.headers.set("CSeq", "1 INVITE");
    cases.push((wrong_method, 400));
    let mut tel = base.clone();
    tel.headers.set("To", "<tel:+15551234>");
    cases.push((tel, 404));
    let mut no_user = base.clone();
    no_user.headers.set("To", "<sip:example.com>");
    cases.push((no_user, 404));
    for (auth, status) in [
        ("Digest", 401),
        ("Digest realm=\"example.com\"", 400),
        (
            "Digest realm=\"example.com\", username=\"alice\", nonce=\"x\", uri=\"sip:example.com\", response=\"1\"",
            401,
        ),
        ("Basic YWxpY2U6cHc=", 401),
        (
            "Digest realm=\"example.com\", username=\"alice\", nonce=\"x\", uri=\"sip:example.com\", response=\"1\", qop=auth, nc=zz, cnonce=\"c\"",
            401,
        ),
    ] {
        let mut r = base.clone();
        r.headers.push("Authorization", auth);
        cases.push((r, status));
    }
    for (i, (req, status)) in cases.iter().enumerate() {
        let out = h.send(req, from);
        assert_eq!(reply(&out).status, *status, "case {i}");
    }
    // A digest URI naming another target is refused.
    let mut r = Reg::new("alice", "192.0.2.10:5060");
    let nonce = challenge(reply(&h.send(&r.build(None), from)), Algorithm::Md5).0;
    r.cseq = 2;
    let ha1 = digest::ha1(Algorithm::Md5, "alice", DOMAIN, "alice-pw");
    let auth = digest::authorization(
        Algorithm::Md5,
        "alice",
        DOMAIN,
        &ha1,
        &nonce,
        1,
        "c",
        "REGISTER",
        "sip:mallory@elsewhere.example",
    );
    assert_eq!(reply(&h.send(&r.build(Some(&auth)), from)).status, 400);
}
