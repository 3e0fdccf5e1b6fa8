//! RFC 3261 §22.3 (proxy-to-user authentication) for dialog-creating requests from phones: an
//! INVITE without credentials from an untrusted address gets 407 with Proxy-Authenticate, a correct
//! Proxy-Authorization for the From account passes, a wrong one is challenged again and counts
//! towards the lockout, and a trusted source needs only an existing account.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use csps_sip::digest::{self, Algorithm, DigestParams};
use csps_sip::registrar::{Account, Accounts, Registrar, RegistrarConfig};
use csps_sip::{Message, Remote, Request, Transport};
use rand::SeedableRng;
use rand::rngs::StdRng;

struct One(Account);

impl Accounts for One {
    fn lookup(&self, username: &str, domain: &str) -> Option<Cow<'_, Account>> {
        (username == "alice" && domain == "example.com").then_some(Cow::Borrowed(&self.0))
    }
}

fn invite(from_user: &str, auth: Option<&str>) -> Request {
    let mut s = format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKi1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from_user}@example.com>;tag=f1\r\nTo: <sip:bob@example.com>\r\n\
         Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.0.2.7>\r\n"
    );
    if let Some(a) = auth {
        s.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    match csps_sip::parse(s.as_bytes()).expect("parses").message {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

fn phone() -> Remote {
    Remote {
        transport: Transport::Udp,
        addr: "192.0.2.7:5060".parse().expect("addr"),
        flow: None,
    }
}

#[test]
fn invite_is_challenged_with_407_and_then_accepted() {
    let mut reg = Registrar::new(RegistrarConfig::default(), [3; 32]);
    let accounts = One(Account::with_password("alice", "example.com", "pw"));
    let mut rng = StdRng::seed_from_u64(1);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);

    let r = reg
        .authorize(now, &invite("alice", None), phone(), &accounts, &mut rng)
        .expect_err("challenged");
    assert_eq!(r.status, 407);
    assert!(r.headers.get("WWW-Authenticate").is_none());
    let h = r
        .headers
        .get("Proxy-Authenticate")
        .expect("Proxy-Authenticate");
    let p = DigestParams::parse(h).expect("digest");
    let nonce = p.nonce.expect("nonce").to_owned();
    let realm = p.realm.expect("realm").to_owned();
    assert_eq!(realm, "example.com");

    let ha1 = digest::ha1(Algorithm::Md5, "alice", &realm, "pw");
    let good = digest::authorization(
        Algorithm::Md5,
        "alice",
        &realm,
        &ha1,
        &nonce,
        1,
        "cn",
        "INVITE",
        "sip:bob@example.com",
    );
    let ok = reg.authorize(
        now,
        &invite("alice", Some(&good)),
        phone(),
        &accounts,
        &mut rng,
    );
    assert_eq!(ok, Ok(("alice".to_owned(), "example.com".to_owned())));

    // A wrong password is challenged again and counted.
    let bad_ha1 = digest::ha1(Algorithm::Md5, "alice", &realm, "nope");
    let bad = digest::authorization(
        Algorithm::Md5,
        "alice",
        &realm,
        &bad_ha1,
        &nonce,
        2,
        "cn",
        "INVITE",
        "sip:bob@example.com",
    );
    let r = reg
        .authorize(
            now,
            &invite("alice", Some(&bad)),
            phone(),
            &accounts,
            &mut rng,
        )
        .expect_err("refused");
    assert_eq!(r.status, 407);
    assert_eq!(reg.counters().auth_failures, 1);

    // REGISTER credentials in Authorization do not authorise an INVITE.
    let mut with_www = invite("alice", None);
    with_www.headers.push("Authorization", good.clone());
    let r = reg
        .authorize(now, &with_www, phone(), &accounts, &mut rng)
        .expect_err("challenged");
    assert_eq!(r.status, 407);
}

#[test]
fn trusted_source_needs_an_existing_account() {
    let cfg = RegistrarConfig {
        trusted: vec!["192.0.2.0/24".parse().expect("cidr")],
        ..RegistrarConfig::default()
    };
    let mut reg = Registrar::new(cfg, [3; 32]);
    let accounts = One(Account::with_password("alice", "example.com", "pw"));
    let mut rng = StdRng::seed_from_u64(1);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert!(
        reg.authorize(now, &invite("alice", None), phone(), &accounts, &mut rng)
            .is_ok()
    );
    let r = reg
        .authorize(now, &invite("mallory", None), phone(), &accounts, &mut rng)
        .expect_err("unknown");
    assert_eq!(r.status, 403);
}
