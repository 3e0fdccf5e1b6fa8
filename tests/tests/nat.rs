//! A phone behind NAT (RFC 3581, RFC 5626 §3.5): its REGISTER says 192.0.2.1:5060 in Via and
//! Contact but arrives from 127.0.0.1. The gateway keeps the real source, grants at most
//! `Data.SipConfig.NatExpires` (default 120 s) and sends CRLFCRLF keep-alives to that source.
//! Requests are built by hand and authenticated with a real digest exchange.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use csps_sip::Response;
use csps_sip::digest::{self, Algorithm, DigestParams};
use csps_tests::{Gateway, raw};

const DOMAIN: &str = "csps.local";
/// The default of `Data.SipConfig.NatExpires`.
const NAT_EXPIRES: u32 = 120;

fn register_msg(
    user: &str,
    via_addr: &str,
    contact_addr: &str,
    call_id: &str,
    cseq: u32,
    authorization: Option<&str>,
) -> String {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {via_addr};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@{DOMAIN}>;tag={tag}\r\n\
         To: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{contact_addr}>\r\n\
         Expires: 3600\r\n\
         {auth}\
         User-Agent: csps-tests raw\r\n\
         Content-Length: 0\r\n\r\n",
        branch = raw::token("r"),
        tag = raw::token("t"),
    )
}

/// REGISTER, answer the MD5 challenge, return the final answer to the authenticated REGISTER.
fn register(
    sock: &UdpSocket,
    gw: SocketAddr,
    user: &str,
    password: &str,
    advertised: &str,
) -> Response {
    let call_id = raw::token("nat-");
    let timeout = Duration::from_secs(5);
    let first = raw::udp_request(
        sock,
        gw,
        &register_msg(user, advertised, advertised, &call_id, 1, None),
        timeout,
    )
    .unwrap_or_else(|e| panic!("first REGISTER: {e}"));
    assert_eq!(first.status, 401, "first REGISTER: {first:?}");
    let challenge = first
        .headers
        .get_all("WWW-Authenticate")
        .filter_map(DigestParams::parse)
        .find(|p| {
            p.algorithm
                .is_none_or(|a| Algorithm::from_token(a) == Some(Algorithm::Md5))
        })
        .unwrap_or_else(|| panic!("no MD5 digest challenge: {first:?}"));
    let realm = challenge.realm.expect("realm in the challenge");
    let nonce = challenge.nonce.expect("nonce in the challenge");
    let uri = format!("sip:{DOMAIN}");
    let ha1 = digest::ha1(Algorithm::Md5, user, realm, password);
    let mut auth = digest::authorization(
        Algorithm::Md5,
        user,
        realm,
        &ha1,
        nonce,
        1,
        &raw::token("cn"),
        "REGISTER",
        &uri,
    );
    if let Some(opaque) = challenge.opaque {
        auth.push_str(&format!(", opaque=\"{opaque}\""));
    }
    raw::udp_request(
        sock,
        gw,
        &register_msg(user, advertised, advertised, &call_id, 2, Some(&auth)),
        timeout,
    )
    .unwrap_or_else(|e| panic!("authenticated REGISTER: {e}"))
}

#[test]
fn nat_register_keeps_the_real_source_short_interval_and_keepalives() {
    let Some(gw) = Gateway::start_or_skip() else {
        return;
    };
    gw.create_user("natted", "secret-nat");
    gw.create_user("direct", "secret-direct");

    // Behind NAT: Via and Contact name a private/documentation address, not the real source.
    let nat_sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let nat_src = nat_sock.local_addr().expect("local address");
    let ok = register(
        &nat_sock,
        gw.sip_addr(),
        "natted",
        "secret-nat",
        "192.0.2.1:5060",
    );
    assert_eq!(ok.status, 200, "NAT'ed REGISTER: {ok:?}");
    let granted = raw::contact_expires(&ok);
    let ours: Vec<_> = granted
        .iter()
        .filter(|(c, _)| c.contains("192.0.2.1"))
        .collect();
    assert_eq!(ours.len(), 1, "Contacts of the 200: {granted:?}");
    assert!(
        ours[0].1 > 0 && ours[0].1 <= NAT_EXPIRES,
        "a NAT'ed binding got expires={} (NatExpires is {NAT_EXPIRES})",
        ours[0].1
    );

    // Not behind NAT: the same request with honest addresses keeps the asked-for interval,
    // so the cap above is about NAT and not a general limit.
    let direct_sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let direct_src = direct_sock.local_addr().expect("local address");
    let ok = register(
        &direct_sock,
        gw.sip_addr(),
        "direct",
        "secret-direct",
        &direct_src.to_string(),
    );
    assert_eq!(ok.status, 200, "direct REGISTER: {ok:?}");
    let direct = raw::contact_expires(&ok);
    assert!(
        direct.len() == 1 && direct[0].1 > NAT_EXPIRES,
        "direct binding: {direct:?}"
    );

    let regs = gw.registrations_of("natted");
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert_eq!(
        regs[0]["source"].as_str(),
        Some(nat_src.to_string().as_str()),
        "source must be where the REGISTER came from: {regs:?}"
    );
    assert!(
        regs[0]["transport"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("udp")),
        "{regs:?}"
    );
    assert!(
        regs[0]["contact"]
            .as_str()
            .is_some_and(|c| c.contains("192.0.2.1")),
        "the Contact is kept as sent: {regs:?}"
    );

    // The core pings NAT'ed UDP bindings every 20 s, at the real source.
    let ping = raw::wait_keepalive(&nat_sock, gw.sip_addr(), Duration::from_secs(25))
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", gw.log_tail(20)));
    assert_eq!(ping, b"\r\n\r\n", "keep-alive bytes");
    // The honest phone registered right after the NAT'ed one; it gets no keep-alive at all.
    direct_sock
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let mut buf = [0u8; 2048];
    match direct_sock.recv_from(&mut buf) {
        Ok((n, from)) => panic!(
            "the direct phone got a datagram from {from}: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
}
