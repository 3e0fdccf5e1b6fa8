//! SIP over IPv6 (RFC 3261 §19.1.1 `[v6]` hosts, RFC 5118): listeners on `udp:[::1]:P` and
//! `tcp:[::1]:P` answer OPTIONS, and SIPp registers over UDP on `::1`.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use csps_tests::{Gateway, GatewayOptions, Sipp, free_port_on, have_tool, raw, skip};

/// A gateway with UDP and TCP listeners on `[::1]:port` next to the IPv4 ones.
fn start_v6() -> Option<(Gateway, SocketAddr)> {
    if UdpSocket::bind("[::1]:0").is_err() {
        skip("no IPv6 loopback (::1) on this host");
        return None;
    }
    let port = free_port_on("::1");
    let opts = GatewayOptions::default()
        .listen(format!("udp:[::1]:{port}"))
        .listen(format!("tcp:[::1]:{port}"));
    match Gateway::start_with(opts) {
        Ok(gw) => Some((gw, SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

#[test]
fn options_over_udp_and_tcp_on_ipv6_loopback() {
    let Some((gw, v6)) = start_v6() else {
        return;
    };
    let sock = UdpSocket::bind("[::1]:0").expect("bind UDP on ::1");
    let local = sock.local_addr().expect("local address");
    let resp = raw::udp_request(
        &sock,
        v6,
        &raw::options("UDP", local, v6),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("OPTIONS over UDP/IPv6: {e}; log:\n{}", gw.log_tail(20)));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.headers
            .get("Allow")
            .is_some_and(|a| a.contains("REGISTER")),
        "{resp:?}"
    );
    // The top Via comes back as sent, with rport filled in with our port.
    let via = resp.headers.get("Via").unwrap_or_default().to_owned();
    assert!(
        via.contains("[::1]") && via.contains(&format!("rport={}", local.port())),
        "Via: {via}"
    );

    let mut tcp = TcpStream::connect_timeout(&v6, Duration::from_secs(5)).expect("TCP to [::1]");
    let local = tcp.local_addr().expect("local address");
    let resp = raw::tcp_request(
        &mut tcp,
        &raw::options("TCP", local, v6),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("OPTIONS over TCP/IPv6: {e}; log:\n{}", gw.log_tail(20)));
    assert_eq!(resp.status, 200, "{resp:?}");
    // A second request on the same connection is answered on it too.
    let resp = raw::tcp_request(
        &mut tcp,
        &raw::options("TCP", local, v6),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("second OPTIONS over TCP/IPv6: {e}"));
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[test]
fn sipp_registers_over_udp_on_ipv6_loopback() {
    if !have_tool("sipp") {
        skip("sipp not installed (run e2e/setup)");
        return;
    }
    let Some((gw, v6)) = start_v6() else {
        return;
    };
    gw.create_user("six", "secret-six");
    let mut sipp = Sipp::new("register.xml", v6)
        .local_ip("::1")
        .key("user", "six")
        .key("domain", "csps.local")
        .key("expires", 3600)
        .auth("six", "secret-six")
        // SIPp's default digest uri for an IPv6 target is `sip:::1:P` (no brackets), which is
        // not a URI; use the Request-URI instead, as phones do.
        .auth_uri("csps.local")
        .timeout(Duration::from_secs(10));
    let port = sipp.port();
    let out = sipp.run();
    assert!(out.ok(), "SIPp over IPv6 failed:\n{}", out.output);
    let regs = gw.registrations_of("six");
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert_eq!(
        regs[0]["source"].as_str(),
        Some(format!("[::1]:{port}").as_str()),
        "{regs:?}"
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
            .is_some_and(|c| c.contains("[::1]")),
        "{regs:?}"
    );
}
