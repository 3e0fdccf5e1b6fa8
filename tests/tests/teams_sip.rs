//! The emulated Direct Routing SIP proxies (e2e/teams-emulator, `--sip-fqdn`) as a trunk peer sees
//! them, over real TLS sockets: each of the three proxies answers an OPTIONS whose Contact holds
//! the gateway's FQDN with a DR-shaped 200, refuses one without it (OPTIONS or INVITE) with 403,
//! presents a certificate from the emulator's CA (a client trusting another CA refuses it), can
//! be stopped and restarted by a test, and records everything it received.

use std::net::SocketAddr;

use csps_sip::SipHeaders;
use csps_tests::emulator::{EmulatorOptions, SipProxies, TeamsEmulator, tls_connect};
use csps_tests::raw::{tcp_request, token};
use std::time::Duration;

const FQDN: &str = "sbc1.csps.test";
const PROXY: &str = "sip.pstnhub.microsoft.com";

fn emulator() -> Option<TeamsEmulator> {
    TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: "00000000-0000-4000-8000-000000000005".into(),
        sip_fqdn: Some(FQDN.into()),
        ..EmulatorOptions::default()
    })
}

/// A request from the SBC `FQDN` whose Contact host is `contact_host`.
fn request(method: &str, contact_host: &str) -> String {
    format!(
        "{method} sip:{PROXY}:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS {FQDN}:5061;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{FQDN}:5061;transport=tls>;tag={tag}\r\n\
         To: <sip:{PROXY}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:{contact_host}:5061;transport=tls>\r\n\
         Content-Length: 0\r\n\r\n",
        branch = token("b"),
        tag = token("t"),
        call_id = token("c"),
    )
}

fn ask(addr: SocketAddr, sip: &SipProxies, msg: &str) -> Result<csps_sip::Response, String> {
    let mut tls = tls_connect(addr, &sip.ca_pem, PROXY, Some(&sip.sbc_pem))?;
    tcp_request(&mut tls, msg, Duration::from_secs(5))
}

#[test]
fn proxies_answer_options_with_the_fqdn_and_refuse_without() {
    let Some(emu) = emulator() else { return };
    let sip = emu.sip();
    assert_eq!(sip.addrs.len(), 3);
    assert_eq!(sip.up, [true, true, true]);
    for (i, addr) in sip.addrs.iter().enumerate() {
        let ok = ask(*addr, &sip, &request("OPTIONS", FQDN))
            .unwrap_or_else(|e| panic!("proxy {}: {e}", i + 1));
        assert_eq!(ok.status, 200, "proxy {}", i + 1);
        assert!(
            ok.headers
                .get("Server")
                .is_some_and(|s| s.starts_with("Microsoft.PSTNHub.SIPProxy"))
        );
        assert!(ok.to_hdr().is_some_and(|t| t.tag().is_some()));
    }
    let addr = sip.addrs[0];
    for method in ["OPTIONS", "INVITE"] {
        let no = ask(addr, &sip, &request(method, "127.0.0.1")).expect("an answer");
        assert_eq!(no.status, 403, "{method} without the FQDN in Contact");
        assert!(no.headers.get("Warning").is_some());
    }
    // Everything received is in the log, with the proxy that got it and the answer given.
    let log = emu.sip_messages();
    assert_eq!(log.len(), 5, "{log:?}");
    let statuses: Vec<_> = log.iter().map(|e| e["status"].as_u64()).collect();
    assert_eq!(
        statuses,
        [Some(200), Some(200), Some(200), Some(403), Some(403)]
    );
    assert!(
        log[3]["contact"]
            .as_str()
            .is_some_and(|c| c.contains("127.0.0.1"))
    );
    assert_eq!(log[4]["method"], "INVITE");
    assert_eq!(
        log.iter().map(|e| e["proxy"].as_u64()).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3), Some(1), Some(1)]
    );
}

#[test]
fn a_stopped_proxy_refuses_connections_until_restarted() {
    let Some(emu) = emulator() else { return };
    let sip = emu.sip();
    let mut open =
        tls_connect(sip.addrs[0], &sip.ca_pem, PROXY, Some(&sip.sbc_pem)).expect("proxy 1 up");
    emu.set_proxy(1, false);
    assert_eq!(emu.sip().up, [false, true, true]);
    assert!(
        tls_connect(sip.addrs[0], &sip.ca_pem, PROXY, Some(&sip.sbc_pem)).is_err(),
        "proxy 1 stopped: no new connection"
    );
    assert!(
        tcp_request(&mut open, &request("OPTIONS", FQDN), Duration::from_secs(5)).is_err(),
        "proxy 1 stopped: its open connections are closed"
    );
    let ok = ask(sip.addrs[1], &sip, &request("OPTIONS", FQDN)).expect("proxy 2");
    assert_eq!(ok.status, 200);
    emu.set_proxy(1, true);
    assert_eq!(emu.sip().up, [true, true, true]);
    let ok = ask(sip.addrs[0], &sip, &request("OPTIONS", FQDN)).expect("proxy 1 again");
    assert_eq!(ok.status, 200);
}

#[test]
fn a_client_trusting_another_ca_refuses_the_proxy() {
    let Some(emu) = emulator() else { return };
    let Some(other) = emulator() else { return };
    let sip = emu.sip();
    let Err(err) = tls_connect(sip.addrs[0], &other.sip().ca_pem, PROXY, Some(&sip.sbc_pem)) else {
        panic!("a client trusting another CA must refuse the proxy")
    };
    assert!(err.contains("certificate"), "{err}");
    // And the proxy's certificate names the proxy, not any name.
    let Err(err) = tls_connect(
        sip.addrs[0],
        &sip.ca_pem,
        "other.example.com",
        Some(&sip.sbc_pem),
    ) else {
        panic!("a name the certificate does not hold must be refused")
    };
    assert!(err.contains("certificate"), "{err}");
    assert!(
        tls_connect(
            sip.addrs[0],
            &sip.ca_pem,
            "sip2.pstnhub.microsoft.com",
            Some(&sip.sbc_pem)
        )
        .is_ok()
    );
}

#[test]
fn proxies_want_a_client_certificate_from_their_ca() {
    let Some(emu) = emulator() else { return };
    let Some(other) = emulator() else { return };
    let sip = emu.sip();
    let refused = |client: Option<&str>| {
        // TLS 1.3: the client finishes its side of the handshake before the proxy checks the
        // certificate, so the refusal shows on the first exchange.
        match tls_connect(sip.addrs[0], &sip.ca_pem, PROXY, client) {
            Err(_) => true,
            Ok(mut tls) => {
                tcp_request(&mut tls, &request("OPTIONS", FQDN), Duration::from_secs(5)).is_err()
            }
        }
    };
    assert!(refused(None), "no client certificate");
    assert!(
        refused(Some(&other.sip().sbc_pem)),
        "a certificate from another CA"
    );
    assert!(!refused(Some(&sip.sbc_pem)), "the SBC certificate is taken");
    assert_eq!(sip.sbc_thumbprint.len(), 40);
}
