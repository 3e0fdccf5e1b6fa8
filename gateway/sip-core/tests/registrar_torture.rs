//! RFC 4475 §3.3.12–3.3.14 (cparam01, cparam02, regescrt): the registrar keeps contact-params
//! apart from URI parameters and keeps escaped URI headers, in the binding and in later fetches.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use csps_sip::registrar::{Account, Accounts, RegisterOutcome, Registrar, RegistrarConfig};
use csps_sip::{Message, Remote, Request, Transport};
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Everyone;

impl Accounts for Everyone {
    fn lookup(&self, username: &str, domain: &str) -> Option<Cow<'_, Account>> {
        Some(Cow::Owned(Account::with_password(username, domain, "pw")))
    }
}

fn load(name: &str) -> Request {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/rfc4475")
        .join(format!("{name}.sip"));
    let bytes = std::fs::read(&p).expect("torture fixture present");
    match csps_sip::parse(&bytes)
        .expect("valid torture message")
        .message
    {
        Message::Request(r) => r,
        Message::Response(_) => panic!("{name} is a request"),
    }
}

fn run(name: &str) -> (String, String, Vec<String>) {
    let mut reg = Registrar::new(
        RegistrarConfig {
            default_domain: "example.com".into(),
            trusted: vec!["192.0.2.0/24".parse().expect("net")],
            ..RegistrarConfig::default()
        },
        [3; 32],
    );
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let from = Remote {
        transport: Transport::Udp,
        addr: "192.0.2.1:5060".parse().expect("addr"),
        flow: None,
    };
    let local = "192.0.2.254:5060".parse().expect("addr");
    let mut rng = StdRng::seed_from_u64(1);
    let req = load(name);
    let out = reg.register(now, &req, from, local, &Everyone, &mut rng);
    let RegisterOutcome::Commit { upserts, .. } = out else {
        panic!("{name}: expected a commit, got {:?}", out.response().status)
    };
    assert_eq!(upserts.len(), 1);
    // A later fetch lists the same contact.
    let mut fetch = req.clone();
    fetch.headers.remove("Contact");
    fetch.headers.set("CSeq", "99999999 REGISTER");
    let out = reg.register(now, &fetch, from, local, &Everyone, &mut rng);
    let RegisterOutcome::Reply(r) = out else {
        panic!("fetch commits nothing")
    };
    assert_eq!(r.status, 200);
    let listed = r.headers.get_all("Contact").map(str::to_owned).collect();
    (upserts[0].key.clone(), upserts[0].contact.clone(), listed)
}

#[test]
fn cparam01_unknownparam_is_a_contact_param() {
    let (key, contact, listed) = run("cparam01");
    assert_eq!(key, "contact:sip:+19725552222@gw1.example.net");
    assert_eq!(contact, "<sip:+19725552222@gw1.example.net>;unknownparam");
    assert_eq!(
        listed,
        ["<sip:+19725552222@gw1.example.net>;unknownparam;expires=120"]
    );
}

#[test]
fn cparam02_unknownparam_stays_in_the_uri() {
    let (key, contact, listed) = run("cparam02");
    assert_eq!(key, "contact:sip:+19725552222@gw1.example.net;unknownparam");
    assert_eq!(contact, "<sip:+19725552222@gw1.example.net;unknownparam>");
    assert_eq!(
        listed,
        ["<sip:+19725552222@gw1.example.net;unknownparam>;expires=120"]
    );
}

#[test]
fn regescrt_escaped_route_stays_in_the_uri() {
    let (key, contact, listed) = run("regescrt");
    assert_eq!(
        key,
        "contact:sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    );
    assert_eq!(
        contact,
        "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>"
    );
    assert_eq!(
        listed,
        ["<sip:user@example.com?Route=%3Csip:sip.example.com%3E>;expires=120"]
    );
}
