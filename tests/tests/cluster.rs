//! Two `csps` servers (`a` and `b`) on one FerretDB (the MongoDB store): configuration written
//! through one reaches the other while both run (read back through each server's API and seen in
//! its behaviour), a server write only its server; users created on `a` register on `b`; a phone
//! that registers on `a` and then on `b` (its backup registrar) leaves one registration document
//! hosted by `b`, and `a` does not load it after a restart; a call handled by one server is in
//! the other's call history.

use std::time::Duration;

use csps_tests::ferret::Ferret;
use csps_tests::{Gateway, GatewayOptions, Sipp, have_tool, skip, wait_until};
use serde_json::{Value, json};

const DOMAIN: &str = "csps.local";
/// Propagation polls every 250 ms; this bounds a slow CI machine, it measures nothing.
const PROPAGATION: Duration = Duration::from_secs(10);
const TRUSTED: &str = "Data.SipConfig.TrustedIps";

fn server(name: &str, uri: &str) -> Option<Gateway> {
    let opts = GatewayOptions {
        server_name: Some(name.into()),
        ..GatewayOptions::default()
    }
    .arg("--mongodb-uri")
    .arg(uri);
    match Gateway::start_with(opts) {
        Ok(gw) => Some(gw),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

/// `GET /api/config/{entry}/{leaf}` on `gw`.
fn leaf(gw: &Gateway, entry: &str, path: &str) -> Value {
    let r = gw.api("GET", &format!("/api/config/{entry}/{path}"), None);
    assert_eq!(r.status, 200, "GET {entry}/{path}: {}", r.body);
    r.json()
}

fn put_leaf(gw: &Gateway, entry: &str, path: &str, value: Value) {
    let r = gw.api("PUT", &format!("/api/config/{entry}/{path}"), Some(&value));
    assert_eq!(r.status, 200, "PUT {entry}/{path}: {}", r.body);
}

/// Waits until `gw` logged that it applied new SIP settings after `mark`.
fn settings_applied(gw: &Gateway, mark: usize) -> bool {
    wait_until(PROPAGATION, || {
        gw.log_since(mark)
            .iter()
            .any(|l| l.contains("SIP settings applied"))
    })
}

/// A REGISTER without credentials from `ip`: true when it got a 200 (trusted), false on a 401.
fn trusted_register(gw: &Gateway, user: &str, ip: &str) -> bool {
    Sipp::new("register_trusted.xml", gw.sip_addr())
        .local_ip(ip)
        .key("user", user)
        .key("domain", DOMAIN)
        .key("expires", 3600)
        .timeout(Duration::from_secs(10))
        .run()
        .ok()
}

fn hosts(gw: &Gateway, user: &str) -> Vec<String> {
    gw.registrations_of(user)
        .iter()
        .map(|r| r["server"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn two_servers_share_configuration_users_and_registrations() {
    if !have_tool("sipp") {
        skip("sipp not installed (run e2e/setup)");
        return;
    }
    let Some(db) = Ferret::start() else { return };
    let uri = format!("{}cluster", db.uri());
    let Some(mut a) = server("a", &uri) else {
        return;
    };
    let Some(b) = server("b", &uri) else { return };
    let r = a.api("GET", "/api/config/servers", None);
    assert_eq!(r.json(), json!(["a", "b"]), "{}", r.body);

    // A user created on a; b challenges it (nothing is trusted yet), so it must know the account
    // to accept it once the address is trusted.
    a.create_user("alice", "secret-alice");
    a.create_user("bob", "secret-bob");
    assert!(
        !trusted_register(&b, "alice", "127.0.0.2"),
        "b trusted 127.0.0.2 before any change"
    );

    // A global change made through a reaches both running servers.
    let (mark_a, mark_b) = (a.log_len(), b.log_len());
    put_leaf(&a, "*", TRUSTED, json!(["127.0.0.2/32"]));
    let want = json!(["127.0.0.2/32"]);
    for (gw, name) in [(&a, "a"), (&b, "b")] {
        assert!(
            wait_until(PROPAGATION, || leaf(gw, name, TRUSTED) == want),
            "{name}: {}",
            leaf(gw, name, TRUSTED)
        );
        assert_eq!(leaf(gw, "*", TRUSTED), want);
    }
    assert!(settings_applied(&a, mark_a), "a did not apply the change");
    assert!(settings_applied(&b, mark_b), "b did not apply the change");
    assert!(
        trusted_register(&a, "alice", "127.0.0.2"),
        "a ignores the trusted range"
    );
    assert!(
        trusted_register(&b, "alice", "127.0.0.2"),
        "b ignores the trusted range or alice"
    );

    // A server change made through a reaches b only.
    let mark_b = b.log_len();
    put_leaf(&a, "b", TRUSTED, json!(["127.0.0.2/32", "127.0.0.3/32"]));
    assert!(settings_applied(&b, mark_b), "b did not apply its change");
    assert_eq!(
        leaf(&b, "b", TRUSTED),
        json!(["127.0.0.2/32", "127.0.0.3/32"])
    );
    assert_eq!(leaf(&a, "a", TRUSTED), want, "a's entry changed");
    assert_eq!(leaf(&b, "*", TRUSTED), want, "the global entry changed");
    assert!(
        trusted_register(&b, "alice", "127.0.0.3"),
        "b ignores its own range"
    );
    assert!(
        !trusted_register(&a, "alice", "127.0.0.3"),
        "a took b's range"
    );

    // A phone registers on a, then on b as its backup registrar (same Contact, same binding).
    let mut phone = Sipp::new("register.xml", a.sip_addr())
        .key("user", "bob")
        .key("domain", DOMAIN)
        .key("expires", 3600)
        .auth("bob", "secret-bob")
        .timeout(Duration::from_secs(10));
    let port = phone.port();
    let out = phone.run();
    assert!(out.ok(), "register on a:\n{}", out.output);
    assert_eq!(hosts(&b, "bob"), ["a"]);
    let out = Sipp::new("register.xml", b.sip_addr())
        .local_port(port)
        .key("user", "bob")
        .key("domain", DOMAIN)
        .key("expires", 3600)
        .auth("bob", "secret-bob")
        .timeout(Duration::from_secs(10))
        .run();
    assert!(out.ok(), "register on b:\n{}", out.output);
    for gw in [&a, &b] {
        assert_eq!(hosts(gw, "bob"), ["b"], "one document, hosted by b");
    }
    let on_a = a.api("GET", "/api/registrations?server=a", None).json();
    assert!(
        on_a.as_array()
            .is_some_and(|l| l.iter().all(|r| !r["aor"].to_string().contains("bob@"))),
        "{on_a}"
    );

    // a still holds bob in memory until it restarts; then it loads only its own bindings.
    assert_eq!(
        a.metric("csps_registrations"),
        Some(2.0),
        "alice and bob on a"
    );
    let mark = a.log_len();
    // Killed, not drained: a drain waits out Timer J of the last REGISTERs (32 s), which would
    // only slow the test; the store holds every acknowledged binding either way.
    a.signal("KILL");
    assert!(
        a.wait_exit(Duration::from_secs(10)).is_some(),
        "a did not die"
    );
    a.start_again().expect("start a again");
    let restored: Vec<String> = a
        .log_since(mark)
        .into_iter()
        .filter(|l| l.contains("restored registrations"))
        .collect();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert!(
        restored[0].contains("bindings=1"),
        "only alice: {restored:?}"
    );
    assert_eq!(a.metric("csps_registrations"), Some(1.0));
    assert_eq!(hosts(&a, "bob"), ["b"]);
}

/// One SIPp call through `gw`: bob (registered there) answers, alice calls him and hangs up.
fn call_through(gw: &Gateway) {
    // The accounts reach a server that did not create them by polling: retry the REGISTER.
    let deadline = std::time::Instant::now() + PROPAGATION;
    let bob = loop {
        match Sipp::callee(
            "uas_answer.xml",
            gw.sip_addr(),
            ("bob", "secret-bob"),
            DOMAIN,
        ) {
            Ok(bob) => break bob,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("{e}\n{}", gw.log_tail(30))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    let bob = std::thread::spawn(move || bob.run());
    let alice = Sipp::caller(
        "uac_call.xml",
        gw.sip_addr(),
        ("alice", "secret-alice"),
        "bob",
        DOMAIN,
    )
    .run();
    let bob = bob.join().expect("callee thread");
    assert!(
        alice.ok(),
        "caller failed:\n{}\n{}",
        alice.output,
        gw.log_tail(30)
    );
    assert!(
        bob.ok(),
        "callee failed:\n{}\n{}",
        bob.output,
        gw.log_tail(30)
    );
}

/// `GET /api/calls/history` on `gw`.
fn history(gw: &Gateway) -> Vec<Value> {
    let r = gw.api("GET", "/api/calls/history", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().as_array().cloned().unwrap_or_default()
}

/// Call records are shared: a call handled by `a` is in `b`'s history (with `server: "a"`), a
/// call handled by `b` in `a`'s, each server lists both newest first with the same record ids,
/// and the ladder stays with the server that handled the call.
#[test]
fn a_call_on_one_server_is_in_every_servers_history() {
    if !have_tool("sipp") {
        skip("sipp not installed (run e2e/setup)");
        return;
    }
    let Some(db) = Ferret::start() else { return };
    let uri = format!("{}calls", db.uri());
    let Some(a) = server("a", &uri) else { return };
    let Some(b) = server("b", &uri) else { return };
    a.create_user("alice", "secret-alice");
    a.create_user("bob", "secret-bob");

    call_through(&a);
    let mut on_b = Vec::new();
    assert!(
        wait_until(PROPAGATION, || {
            on_b = history(&b);
            !on_b.is_empty()
        }),
        "a's call never reached the store:\n{}",
        a.log_tail(30)
    );
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    let first = &on_b[0];
    assert_eq!(first["server"], "a", "{first}");
    assert_eq!(first["caller"], format!("sip:alice@{DOMAIN}"), "{first}");
    assert_eq!(first["callee"], format!("sip:bob@{DOMAIN}"), "{first}");
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(history(&a), on_b, "both servers read the same record");

    // A call through b (its account view has the users a created).
    call_through(&b);
    let mut on_a = Vec::new();
    assert!(
        wait_until(PROPAGATION, || {
            on_a = history(&a);
            on_a.len() == 2
        }),
        "b's call is not in a's history: {on_a:?}"
    );
    let servers: Vec<&str> = on_a.iter().filter_map(|c| c["server"].as_str()).collect();
    assert_eq!(servers, ["b", "a"], "newest first, every server's");
    assert_eq!(on_a[1]["record_id"], first["record_id"]);
    assert_ne!(on_a[0]["record_id"], on_a[1]["record_id"]);
    assert_eq!(history(&b), on_a);
    // The ladder stays in the memory of the server that handled the call.
    let id = on_a[1]["id"].as_u64().expect("id");
    let r = a.api("GET", &format!("/api/calls/{id}/messages"), None);
    assert_eq!(r.status, 200, "a keeps the ladder of its call: {}", r.body);
}
