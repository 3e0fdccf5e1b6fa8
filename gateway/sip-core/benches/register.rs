//! Server-side cost of a digest registration in the sans-IO core: parse the REGISTER, challenge
//! it (401), parse the authenticated REGISTER, verify the digest and bind — no sockets, no store.
//! Prints a table; run with `cargo bench -p csps-sip --bench register`.
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock and seeds its RNG

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use csps_sip::digest::{self, Algorithm, DigestParams};
use csps_sip::registrar::{Account, Accounts, RegisterOutcome, Registrar, RegistrarConfig};
use csps_sip::{Message, Remote, Request, Transport};
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Users(HashMap<String, Account>);

impl Accounts for Users {
    fn lookup(&self, username: &str, _domain: &str) -> Option<Cow<'_, Account>> {
        self.0.get(username).map(Cow::Borrowed)
    }
}

fn register(user: &str, port: u16, cseq: u32, auth: Option<&str>) -> Vec<u8> {
    let mut m = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:{port};branch=z9hG4bK{user}{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.com>;tag=f{user}\r\n\
         To: <sip:{user}@example.com>\r\n\
         Call-ID: c-{user}@192.0.2.10\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@192.0.2.10:{port}>\r\n\
         Expires: 3600\r\n\
         User-Agent: Yealink SIP-T46U 66.86.0.15\r\n"
    );
    if let Some(a) = auth {
        m.push_str(&format!("Authorization: {a}\r\n"));
    }
    m.push_str("Content-Length: 0\r\n\r\n");
    m.into_bytes()
}

fn request(bytes: &[u8]) -> Request {
    match csps_sip::parse(bytes).map(|p| p.message) {
        Ok(Message::Request(r)) => r,
        other => panic!("bench input must be a request: {other:?}"),
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let cfg = RegistrarConfig {
        default_domain: "example.com".into(),
        ..RegistrarConfig::default()
    };
    let mut reg = Registrar::new(cfg, [7; 32]);
    let users = Users(
        (0..n)
            .map(|i| {
                let u = format!("u{i}");
                let a = Account::with_password(&u, "example.com", "password-1");
                (u, a)
            })
            .collect(),
    );
    let mut rng = StdRng::seed_from_u64(1);
    let local: SocketAddr = ([127, 0, 0, 1], 5060).into();
    let now = SystemTime::now();
    // Prepare both messages of every registration up front: the clock measures the gateway's
    // work only, not the phone's.
    let mut wire = Vec::with_capacity(n);
    for i in 0..n {
        let user = format!("u{i}");
        let port = 10_000 + (i % 50_000) as u16;
        let from = Remote {
            transport: Transport::Udp,
            addr: SocketAddr::from(([192, 0, 2, 10], port)),
            flow: None,
        };
        let first = register(&user, port, 1, None);
        let out = reg.register(now, &request(&first), from, local, &users, &mut rng);
        let RegisterOutcome::Reply(ch) = out else {
            panic!("challenge expected")
        };
        let nonce = ch
            .headers
            .get("WWW-Authenticate")
            .and_then(DigestParams::parse)
            .and_then(|p| p.nonce.map(str::to_owned))
            .expect("nonce");
        let ha1 = digest::ha1(Algorithm::Md5, &user, "example.com", "password-1");
        let auth = digest::authorization(
            Algorithm::Md5,
            &user,
            "example.com",
            &ha1,
            &nonce,
            1,
            "0a1b2c3d",
            "REGISTER",
            "sip:example.com",
        );
        wire.push((from, first, register(&user, port, 2, Some(&auth))));
    }
    let start = Instant::now();
    let mut ok = 0usize;
    for (from, first, second) in &wire {
        for bytes in [first, second] {
            let req = request(bytes);
            if let RegisterOutcome::Commit { .. } =
                reg.register(now, &req, *from, local, &users, &mut rng)
            {
                ok += 1;
            }
        }
    }
    let secs = start
        .elapsed()
        .as_secs_f64()
        .max(Duration::from_nanos(1).as_secs_f64());
    println!(
        "| accounts | registrations | time (s) | registrations/s (one core) | µs per registration | binding index bytes/binding |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {n} | {ok} | {secs:.3} | {:.0} | {:.2} | {} |",
        ok as f64 / secs,
        secs * 1e6 / ok.max(1) as f64,
        reg.index_bytes() / reg.len().max(1)
    );
    assert_eq!(ok, n, "every registration must succeed");
}
