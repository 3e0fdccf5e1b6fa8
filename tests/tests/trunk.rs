//! The gateway's Direct Routing trunk against the emulated Teams proxies (e2e/teams-emulator),
//! both as real processes over TLS: the gateway connects to each proxy with mutual TLS (its
//! certificate from the emulator's CA, configured by thumbprint; the emulator's CA trusted via
//! `Data.SipConfig.TeamsCaFile`), its OPTIONS keep-alives carry the FQDN in Contact (the
//! emulator refuses them otherwise), `GET /api/trunk` follows a proxy that is stopped and
//! started again, and the proxies' own OPTIONS pings are answered 200 on the same connections.

use std::time::Duration;

use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::{Gateway, wait_until};
use serde_json::Value;

const FQDN: &str = "sbc1.csps.test";

fn peers() -> Option<(TeamsEmulator, Gateway)> {
    let emu = TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: "00000000-0000-4000-8000-000000000005".into(),
        sip_fqdn: Some(FQDN.into()),
        ..EmulatorOptions::default()
    })?;
    let gw = Gateway::start_or_skip()?;
    Some((emu, gw))
}

fn trunk(gw: &Gateway) -> Value {
    let r = gw.api("GET", "/api/trunk", None);
    assert_eq!(r.status, 200, "GET /api/trunk: {}", r.body);
    r.json()
}

/// Waits until `GET /api/trunk` satisfies `f`; panics with the last view otherwise.
fn wait_trunk(gw: &Gateway, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(15), || {
        last = trunk(gw);
        f(&last)
    });
    assert!(ok, "{what}: /api/trunk is {last:#}\n{}", gw.log_tail(30));
    last
}

fn ups(v: &Value) -> Vec<bool> {
    v["proxies"]
        .as_array()
        .map(|a| a.iter().map(|p| p["up"] == true).collect())
        .unwrap_or_default()
}

#[test]
fn keepalives_reach_every_proxy_and_a_stopped_one_goes_down_and_comes_back() {
    let Some((emu, gw)) = peers() else { return };
    assert_eq!(
        trunk(&gw)["fqdn"],
        Value::Null,
        "no trunk before it is configured"
    );
    emu.attach_trunk(&gw, FQDN, 1);
    let addrs: Vec<String> = emu.sip().addrs.iter().map(|a| a.to_string()).collect();

    let v = wait_trunk(&gw, "all three up after an answered OPTIONS", |v| {
        v["proxies"].as_array().is_some_and(|a| {
            a.len() == 3
                && a.iter().all(|p| {
                    p["up"] == true && p["last_status"] == 200 && p["rtt_ms"].as_f64().is_some()
                })
        })
    });
    assert_eq!(v["fqdn"], FQDN);
    assert_eq!(
        v["current"],
        addrs[0].as_str(),
        "the first proxy takes traffic"
    );
    for p in v["proxies"].as_array().into_iter().flatten() {
        assert_eq!(p["connected"], true);
        let rtt = p["rtt_ms"].as_f64().unwrap_or(-1.0);
        assert!((0.0..1000.0).contains(&rtt), "RTT {rtt} ms on loopback");
        assert!(p["last_options_at"].is_string());
    }
    // What the proxies received: OPTIONS with the FQDN in Contact (else they answer 403), from
    // each of the three.
    let log = emu.sip_messages();
    let options: Vec<&Value> = log.iter().filter(|e| e["method"] == "OPTIONS").collect();
    for n in 1..=3 {
        assert!(
            options
                .iter()
                .any(|e| e["proxy"] == n && e["status"] == 200),
            "proxy {n} answered an OPTIONS 200: {log:#?}"
        );
    }
    for e in &options {
        let contact = e["contact"].as_str().unwrap_or_default();
        assert!(contact.contains(FQDN), "Contact {contact}");
        let msg = e["message"].as_str().unwrap_or_default();
        assert!(msg.contains(&format!("SIP/2.0/TLS {FQDN}")), "Via: {msg}");
        assert!(msg.contains("REFER"), "Allow lists REFER: {msg}");
    }

    // Proxy 1 stops: its connection closes and reconnecting fails, so it is down and the
    // second proxy takes traffic.
    emu.set_proxy(1, false);
    let v = wait_trunk(&gw, "proxy 1 down", |v| ups(v) == [false, true, true]);
    assert_eq!(v["current"], addrs[1].as_str());
    assert_eq!(v["proxies"][0]["connected"], false);
    assert!(
        gw.log_lines()
            .iter()
            .any(|l| l.contains("Teams trunk proxy") && l.contains(&addrs[0])),
        "the failure is logged"
    );

    // It starts again: reconnected, answered, first in order again.
    emu.set_proxy(1, true);
    let v = wait_trunk(&gw, "proxy 1 back", |v| {
        ups(v) == [true, true, true] && v["proxies"][0]["last_status"] == 200
    });
    assert_eq!(v["current"], addrs[0].as_str());

    // The proxies ping the gateway on the connections it opened: answered 200.
    emu.clear_requests();
    assert_eq!(emu.ping(2), 1, "proxy 2 has the gateway's one connection");
    let ok = wait_until(Duration::from_secs(5), || {
        emu.sip_messages().iter().any(|e| {
            e["proxy"] == 2
                && e["method"].is_null()
                && e["status"] == 200
                && e["cseq"].as_str().is_some_and(|c| c.ends_with("OPTIONS"))
        })
    });
    assert!(ok, "the gateway answered 200: {:#?}", emu.sip_messages());
}

#[test]
fn a_proxy_whose_certificate_does_not_verify_is_refused() {
    let Some((emu, gw)) = peers() else { return };
    let Ok(other) = TeamsEmulator::start(&EmulatorOptions {
        tenant: "00000000-0000-4000-8000-000000000006".into(),
        sip_fqdn: Some(FQDN.into()),
        ..EmulatorOptions::default()
    }) else {
        return;
    };
    // Trust another CA than the one that issued the proxies' certificates.
    emu.attach_trunk_trusting(&gw, FQDN, 1, &other.sip().ca_pem);
    let v = wait_trunk(&gw, "every proxy down", |v| {
        ups(v) == [false, false, false]
            && gw
                .log_lines()
                .iter()
                .any(|l| l.contains("Teams trunk proxy unreachable") && l.contains("certificate"))
    });
    assert_eq!(v["current"], Value::Null);
    assert!(
        emu.sip_messages().iter().all(|e| e["method"].is_null()),
        "no request reached a proxy over an unverified connection"
    );
}
