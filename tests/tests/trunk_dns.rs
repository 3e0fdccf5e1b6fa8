//! RFC 3263 §4 (and RFC 2782, RFC 5922 §4): the Direct Routing trunk's proxies found by DNS, with
//! a real DNS server (dnsmasq on loopback, serving only the test's records), the emulated Teams
//! proxies (e2e/teams-emulator, over mutual TLS, certificates from its test CA naming
//! `sip`, `sip2`, `sip3.pstnhub.microsoft.com`) and the gateway started with `--dns-server`.
//! `Data.SipConfig.TeamsProxies` names domains without a port: SRV `_sips._tcp` records put the
//! proxies in priority order and calls fail over across them; NAPTR `SIPS+D2T` records choose the
//! SRV name; a domain with no records is shown down with the reason while the others work; an SRV
//! target outside the configured domain must present a certificate for the domain itself; when
//! the records change, the proxies follow once the TTL (and the gateway's 30 s floor) ran out.

use std::time::Duration;

use csps_tests::dnsmasq::Dnsmasq;
use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::{Gateway, GatewayOptions, Sipp, free_port, wait_until};
use serde_json::{Value, json};

const FQDN: &str = "sbc1.csps.test";
const SERVICE: &str = "pstnhub.microsoft.com";
const DOMAIN: &str = "csps.local";
const ALICE: &str = "+14255550100";
const CALLED: &str = "+12065550123";

/// The emulated proxy `n` (1..=3)'s name, which its certificate carries.
fn name(n: usize) -> String {
    match n {
        1 => format!("sip.{SERVICE}"),
        n => format!("sip{n}.{SERVICE}"),
    }
}

/// dnsmasq with `records` plus an A record of 127.0.0.1 for each emulated proxy's name; names
/// under `.test` that it has no record for are NXDOMAIN (not REFUSED).
fn dns(records: Vec<String>) -> Option<Dnsmasq> {
    Dnsmasq::start_or_skip(&with_hosts(records))
}

/// `records` with the proxies' A records and the local domains of [`dns`].
fn with_hosts(records: Vec<String>) -> Vec<String> {
    let mut all: Vec<String> = (1..=3)
        .map(|n| format!("--host-record={},127.0.0.1", name(n)))
        .collect();
    all.push("--local=/test/".into());
    all.push(format!("--local=/{SERVICE}/"));
    all.extend(records);
    all
}

/// The emulator with its three proxies (started first: the SRV records carry their ports).
fn emulator() -> Option<TeamsEmulator> {
    TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: "00000000-0000-4000-8000-000000000005".into(),
        sip_fqdn: Some(FQDN.into()),
        ..EmulatorOptions::default()
    })
}

/// A gateway that asks `dns` for names.
fn gateway(dns: &Dnsmasq) -> Option<Gateway> {
    let opts = GatewayOptions::default()
        .arg("--dns-server")
        .arg(dns.addr.to_string());
    Gateway::start_with(opts)
        .map_err(|e| csps_tests::skip(&e))
        .ok()
}

/// An SRV record for the emulated proxy `n`.
fn srv(owner: &str, n: usize, emu: &TeamsEmulator, priority: u16, weight: u16) -> String {
    let port = emu.sip().addrs[n - 1].port();
    format!("--srv-host={owner},{},{port},{priority},{weight}", name(n))
}

/// `name(n):port` of the emulated proxy `n`: the target `GET /api/trunk` shows for it.
fn target(emu: &TeamsEmulator, n: usize) -> String {
    format!("{}:{}", name(n), emu.sip().addrs[n - 1].port())
}

/// Waits until `GET /api/trunk` satisfies `f`; panics with the view, the gateway's log and the
/// DNS server's otherwise.
fn wait_trunk(gw: &Gateway, dns: &Dnsmasq, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(20), || {
        last = gw.api("GET", "/api/trunk", None).json();
        f(&last)
    });
    assert!(
        ok,
        "{what}: /api/trunk is {last:#}\n--- gateway ---\n{}\n--- dnsmasq ---\n{}",
        gw.log_tail(30),
        dns.log()
    );
    last
}

/// `(target, up and connected)` of each proxy in the view, in order.
fn proxies(v: &Value) -> Vec<(String, bool)> {
    v["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["target"].as_str().unwrap_or_default().to_owned(),
                p["up"] == true && p["connected"] == true,
            )
        })
        .collect()
}

/// Alice (activated, number ALICE) calls CALLED with SIPp, echoing the media: the INVITE goes
/// to proxy `n`, is answered, and names the proxy's host in its Request-URI (Teams expects its
/// own name there, not the service domain).
fn alice_calls_through(gw: &Gateway, emu: &TeamsEmulator, n: usize) {
    emu.clear_requests();
    let out = Sipp::new("uac_call.xml", gw.sip_addr())
        .key("user", "alice")
        .key("domain", DOMAIN)
        .key("callee", CALLED)
        .auth("alice", "alice-secret-1")
        .auth_uri(&format!("{CALLED}@{DOMAIN}"))
        .arg("-mp")
        .arg(free_port().to_string())
        .arg("-rtp_echo")
        .timeout(Duration::from_secs(30))
        .run();
    assert!(
        out.ok(),
        "alice's call:\n{}\n--- gateway ---\n{}",
        out.output,
        gw.log_tail(40)
    );
    let inv: Vec<Value> = emu
        .sip_messages()
        .into_iter()
        .filter(|e| e["method"] == "INVITE")
        .collect();
    assert_eq!(inv.len(), 1, "{inv:#?}");
    assert_eq!(inv[0]["proxy"], n, "proxy {n} takes the call");
    assert_eq!(inv[0]["status"], 200, "{:#}", inv[0]);
    let msg = inv[0]["message"].as_str().unwrap_or_default();
    let first = format!("INVITE sip:{CALLED}@{};user=phone SIP/2.0", name(n));
    assert!(msg.starts_with(&first), "{msg}");
}

#[test]
fn srv_records_order_the_proxies_and_calls_fail_over_across_them() {
    if !csps_tests::have_tool("sipp") {
        csps_tests::skip("sipp not installed (run e2e/setup)");
        return;
    }
    let Some(emu) = emulator() else { return };
    let owner = format!("_sips._tcp.{SERVICE}");
    // Listed out of order: priority decides (sip 10, sip2 20, sip3 30).
    let Some(dns) = dns(vec![
        srv(&owner, 3, &emu, 30, 0),
        srv(&owner, 2, &emu, 20, 5),
        srv(&owner, 1, &emu, 10, 5),
    ]) else {
        return;
    };
    let Some(gw) = gateway(&dns) else { return };
    gw.create_account(
        json!({"username": "alice", "password": "alice-secret-1", "domain": DOMAIN,
               "phone_number": ALICE}),
        true,
    );
    emu.attach_trunk_to(&gw, FQDN, 1, &[SERVICE]);

    let want: Vec<(String, bool)> = (1..=3).map(|n| (target(&emu, n), true)).collect();
    let v = wait_trunk(
        &gw,
        &dns,
        "the three SRV targets up in priority order",
        |v| proxies(v) == want,
    );
    assert_eq!(v["current"], target(&emu, 1).as_str());
    for p in v["proxies"].as_array().into_iter().flatten() {
        assert_eq!(p["entry"], SERVICE, "{p:#}");
        assert_eq!(p["error"], Value::Null, "{p:#}");
    }
    assert!(
        dns.log().contains(&format!("query[SRV] {owner}")),
        "the gateway asked the DNS server: {}",
        dns.log()
    );

    // A call goes to the first SRV target, named in the Request-URI as Teams expects.
    alice_calls_through(&gw, &emu, 1);
    // The first proxy stops: the next call goes to the second SRV target.
    emu.set_proxy(1, false);
    wait_trunk(&gw, &dns, "sip down, sip2 and sip3 up", |v| {
        proxies(v).iter().map(|p| p.1).collect::<Vec<_>>() == [false, true, true]
    });
    alice_calls_through(&gw, &emu, 2);
}

#[test]
fn naptr_chooses_the_srv_name_and_a_domain_without_records_is_shown_down() {
    let Some(emu) = emulator() else { return };
    let chosen = format!("_sips._tcp.naptr.{SERVICE}");
    let Some(dns) = dns(vec![
        // NAPTR: SIP over UDP first in order (not for a TLS trunk), then SIPS+D2T to `chosen`.
        format!("--naptr-record={SERVICE},5,10,s,SIP+D2U,,_sip._udp.{SERVICE}"),
        format!("--naptr-record={SERVICE},10,10,s,SIPS+D2T,,{chosen}"),
        srv(&chosen, 3, &emu, 1, 0),
        srv(&chosen, 2, &emu, 2, 0),
        // What SRV alone would find (NAPTR takes precedence, RFC 3263 §4.1).
        srv(&format!("_sips._tcp.{SERVICE}"), 1, &emu, 1, 0),
        // A domain whose SRV target lies outside it: the certificate must name the domain.
        srv("_sips._tcp.elsewhere.test", 1, &emu, 1, 0),
        // A domain that says "not offered" (SRV target `.`) although it has an address: the
        // address is not tried (RFC 2782, RFC 3263 §4.2).
        "--srv-host=_sips._tcp.closed.test".into(),
        "--host-record=closed.test,127.0.0.1".into(),
    ]) else {
        return;
    };
    let Some(gw) = gateway(&dns) else { return };
    emu.attach_trunk_to(
        &gw,
        FQDN,
        1,
        &["absent.test", SERVICE, "elsewhere.test", "closed.test"],
    );
    let v = wait_trunk(
        &gw,
        &dns,
        "absent.test down, sip3 and sip2 up, elsewhere refused, closed.test not offered",
        |v| {
            proxies(v)
                == [
                    ("absent.test".to_owned(), false),
                    (target(&emu, 3), true),
                    (target(&emu, 2), true),
                    (target(&emu, 1), false),
                    ("closed.test".to_owned(), false),
                ]
                && v["proxies"][3]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("certificate"))
                && v["proxies"][4]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not offered"))
        },
    );
    assert_eq!(v["current"], target(&emu, 3).as_str());
    let absent = &v["proxies"][0];
    assert_eq!(absent["entry"], "absent.test");
    let why = absent["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("absent.test") && why.contains("no NAPTR"),
        "the reason names the domain and what it lacks: {absent:#}"
    );
    assert_eq!(v["proxies"][1]["entry"], SERVICE);
    assert_eq!(v["proxies"][3]["entry"], "elsewhere.test");
    let log = gw.log_lines();
    assert!(
        log.iter()
            .any(|l| l.contains("Teams trunk proxy not found") && l.contains("absent.test")),
        "the missing domain is logged: {}",
        gw.log_tail(30)
    );
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "{}",
        gw.log_tail(30)
    );
    let dns_log = dns.log();
    assert!(
        dns_log.contains(&format!("query[SRV] {chosen}")),
        "the NAPTR's SRV name was asked: {dns_log}"
    );
    assert!(
        !dns_log.contains("query[SRV] _sip._udp."),
        "the UDP service was not followed: {dns_log}"
    );
    // The proxies found by NAPTR answered the keep-alives (none reached proxy 1 over the
    // refused connection).
    let options: Vec<Value> = emu
        .sip_messages()
        .into_iter()
        .filter(|e| e["method"] == "OPTIONS")
        .collect();
    assert!(options.iter().any(|e| e["proxy"] == 3), "{options:#?}");
    assert!(options.iter().all(|e| e["proxy"] != 1), "{options:#?}");
}

#[test]
fn the_proxies_follow_the_srv_records_once_their_ttl_ran_out() {
    let Some(emu) = emulator() else { return };
    let owner = format!("_sips._tcp.{SERVICE}");
    let ttl = "--local-ttl=1".to_owned();
    let Some(dns) = dns(vec![ttl.clone(), srv(&owner, 1, &emu, 10, 0)]) else {
        return;
    };
    let Some(gw) = gateway(&dns) else { return };
    emu.attach_trunk_to(&gw, FQDN, 1, &[SERVICE]);
    wait_trunk(&gw, &dns, "sip found and up", |v| {
        proxies(v) == [(target(&emu, 1), true)]
    });
    // The records change: sip2 first, then sip (kept, with its connection).
    let port = dns.addr.port();
    drop(dns);
    let records = with_hosts(vec![
        ttl,
        srv(&owner, 2, &emu, 10, 0),
        srv(&owner, 1, &emu, 20, 0),
    ]);
    let dns = Dnsmasq::start_on(port, &records).expect("dnsmasq again on its port");
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(90), || {
        last = gw.api("GET", "/api/trunk", None).json();
        proxies(&last) == [(target(&emu, 2), true), (target(&emu, 1), true)]
    });
    assert!(
        ok,
        "sip2 then sip after the refresh: {last:#}\n{}\n{}",
        gw.log_tail(30),
        dns.log()
    );
    let connects = gw
        .log_lines()
        .iter()
        .filter(|l| l.contains("Teams trunk proxy connected") && l.contains(&target(&emu, 1)))
        .count();
    assert_eq!(connects, 1, "sip kept its connection: {}", gw.log_tail(30));
}
