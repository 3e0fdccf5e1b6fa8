//! Busy presence (issue 5 item 4): while an activated user's phone is in an answered call, the
//! gateway sets their Teams presence Busy/InACall through Graph, and clears it when the call
//! ends. Real peers: two baresip phones calling each other through the real `csps`, and the
//! real `teams-emulator` standing in for Entra ID (the admin app's client credentials) and
//! Graph (`setPresence`, `clearPresence`, `GET …/presence`, each recorded). An account that is
//! not activated costs Graph nothing. With a short renewal interval (a test-only flag) a long
//! call's presence is renewed, and a 429 from Graph is retried after its `Retry-After`. In a
//! cluster (two gateways on one FerretDB) a user in calls on both servers stays Busy until the
//! last of them ends.

use std::path::Path;
use std::time::Duration;

use csps_tests::baresip::Baresip;
use csps_tests::emulator::{EmulatorOptions, TeamsEmulator};
use csps_tests::ferret::Ferret;
use csps_tests::{Gateway, GatewayOptions, have_tool, http, skip, wait_until};
use serde_json::{Value, json};

const TENANT: &str = "5a1e7c1d-0000-4000-8000-0000000000e5";
const CLIENT_ID: &str = "c11e0001-0000-4000-8000-0000000000e5";
const CLIENT_SECRET: &str = "presence-client-secret";
const DOMAIN: &str = "csps.local";
/// (SIP user, UPN, activated).
const USERS: [(&str, &str, bool); 3] = [
    ("alice", "alice@contoso.test", true),
    ("bob", "bob@contoso.test", true),
    ("carol", "carol@contoso.test", false),
];

/// The emulator and a gateway started with `extra_args`, the users of [`USERS`], and the
/// admin app's Graph credentials pointing at the emulator (presence turns on once they are set).
fn world(extra_args: &[&str]) -> Option<(TeamsEmulator, Gateway)> {
    if !have_tool("baresip") {
        skip("baresip not installed (run e2e/setup)");
        return None;
    }
    let emu = emulator()?;
    let opts = extra_args
        .iter()
        .fold(GatewayOptions::default(), |o, a| o.arg(*a));
    let gw = start(opts)?;
    create_accounts(&gw);
    presence_on(&emu, &[&gw]);
    Some((emu, gw))
}

/// A gateway started with `opts`, its presence off (no credentials yet: one line says so).
fn start(opts: GatewayOptions) -> Option<Gateway> {
    let gw = match Gateway::start_with(opts) {
        Ok(gw) => gw,
        Err(e) => {
            skip(&e);
            return None;
        }
    };
    wait_log(&gw, "Teams presence is off");
    Some(gw)
}

/// The accounts of [`USERS`], created through `gw`.
fn create_accounts(gw: &Gateway) {
    for (user, upn, activated) in USERS {
        gw.create_account(
            json!({"username": user, "password": format!("{user}-secret-1"),
                   "domain": DOMAIN, "upn": upn}),
            activated,
        );
    }
}

/// Sets the admin app's Graph credentials (pointing at `emu`) in the global configuration
/// through the first of `gws` (they share it), and waits for each to turn presence on.
fn presence_on(emu: &TeamsEmulator, gws: &[&Gateway]) {
    let Some(gw) = gws.first() else { return };
    for (leaf, value) in [
        ("Tenant", TENANT.to_owned()),
        ("ClientId", CLIENT_ID.to_owned()),
        ("ClientSecret", CLIENT_SECRET.to_owned()),
        ("Authority", emu.base_url()),
        ("GraphUrl", emu.base_url()),
    ] {
        gw.set_global(&format!("AdminAzureApp.{leaf}"), json!(value));
    }
    for gw in gws {
        wait_log(gw, "Teams presence is on");
    }
}

/// The emulated tenant, where the admin app may use its client credentials.
fn emulator() -> Option<TeamsEmulator> {
    TeamsEmulator::start_or_skip(&EmulatorOptions {
        tenant: TENANT.into(),
        clients: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
        ..EmulatorOptions::default()
    })
}

/// Alice's and Bob's phones (Bob's answers by itself), Alice calling Bob; the phones and the
/// answered call's id.
fn alice_calls_bob(gw: &Gateway, dirs: &[tempfile::TempDir]) -> ([Baresip; 2], u64) {
    let bob = phone(gw, dirs[1].path(), "bob", &[]);
    let alice = phone(
        gw,
        dirs[0].path(),
        "alice",
        &[&format!("/dial sip:bob@{DOMAIN}")],
    );
    ([alice, bob], answered_call(gw))
}

/// A baresip phone for `user` that answers by itself, once registered.
fn phone(gw: &Gateway, dir: &Path, user: &str, commands: &[&str]) -> Baresip {
    csps_tests::baresip::registered_tone_phone(gw, dir, (user, DOMAIN), 800, commands)
}

/// Waits up to 5 s for a log line of `gw` holding `needle`.
fn wait_log(gw: &Gateway, needle: &str) {
    let seen = wait_until(Duration::from_secs(5), || {
        gw.log_lines().iter().any(|l| l.contains(needle))
    });
    assert!(seen, "no log line `{needle}`:\n{}", gw.log_tail(20));
}

/// The id of the answered call, waiting up to 15 s for one.
fn answered_call(gw: &Gateway) -> u64 {
    let mut id = None;
    let answered = wait_until(Duration::from_secs(15), || {
        id = gw
            .api("GET", "/api/calls", None)
            .json()
            .as_array()
            .and_then(|a| a.iter().find(|c| c["state"] == "answered"))
            .and_then(|c| c["id"].as_u64());
        id.is_some()
    });
    assert!(answered, "no answered call:\n{}", gw.log_tail(40));
    id.unwrap_or_default()
}

/// The presence requests (`setPresence` or `clearPresence`, as `verb`) the emulator received
/// for `upn`, oldest first.
fn presence_requests(emu: &TeamsEmulator, upn: &str, verb: &str) -> Vec<Value> {
    emu.requests_to(&format!("/v1.0/users/{upn}/presence/{verb}"))
}

/// Waits up to 15 s for at least `n` `verb` requests for each of `upns`.
fn wait_presence(emu: &TeamsEmulator, gw: &Gateway, upns: &[&str], verb: &str, n: usize) {
    let ok = wait_until(Duration::from_secs(15), || {
        upns.iter()
            .all(|u| presence_requests(emu, u, verb).len() >= n)
    });
    assert!(
        ok,
        "not {n} {verb} for each of {upns:?}: {:#?}\n{}",
        emu.requests_to("Presence"),
        gw.log_tail(30)
    );
}

/// Graph's presence of `upn` as the emulator shows it (asked with an app token it signed).
fn shown(emu: &TeamsEmulator, upn: &str) -> (String, String) {
    let token = emu.mint(
        json!({"idtyp": "app", "appid": CLIENT_ID, "roles": ["Presence.ReadWrite.All"]}),
        false,
    );
    let path = format!("/v1.0/users/{upn}/presence");
    let r = http::request(emu.addr, "GET", &path, Some(&token), None)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    let v = r.json();
    (
        v["availability"].as_str().unwrap_or_default().to_owned(),
        v["activity"].as_str().unwrap_or_default().to_owned(),
    )
}

fn busy() -> (String, String) {
    ("Busy".into(), "InACall".into())
}

#[test]
fn busy_in_a_call_and_cleared_after_it() {
    let Some((emu, gw)) = world(&[]) else {
        return;
    };
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let (_phones, call) = alice_calls_bob(&gw, &dirs);
    let (alice, bob, carol) = (USERS[0].1, USERS[1].1, USERS[2].1);
    wait_presence(&emu, &gw, &[alice, bob], "setPresence", 1);
    for upn in [alice, bob] {
        let set = &presence_requests(&emu, upn, "setPresence")[0];
        assert_eq!(set["method"], "POST");
        assert_eq!(set["authorization"], "Bearer");
        assert_eq!(
            set["body"],
            json!({"sessionId": CLIENT_ID, "availability": "Busy", "activity": "InACall",
                   "expirationDuration": "PT5M"}),
            "{upn}"
        );
        assert_eq!(shown(&emu, upn), busy(), "{upn} while in the call");
        assert!(
            presence_requests(&emu, upn, "clearPresence").is_empty(),
            "{upn} cleared during the call"
        );
    }
    // The app got its token by the client-credentials grant of the admin app.
    let grants = emu.requests_to("/oauth2/v2.0/token");
    assert!(
        !grants.is_empty()
            && grants.iter().all(|g| g["body"]["client_id"] == CLIENT_ID
                && g["body"]["grant_type"] == "client_credentials"),
        "{grants:#?}"
    );
    gw.admin_hang_up(call);
    wait_presence(&emu, &gw, &[alice, bob], "clearPresence", 1);
    for upn in [alice, bob] {
        let clear = &presence_requests(&emu, upn, "clearPresence")[0];
        assert_eq!(clear["body"], json!({"sessionId": CLIENT_ID}), "{upn}");
        assert_eq!(shown(&emu, upn).0, "Offline", "{upn} after the call");
    }

    // Carol's account is not activated: her call makes Bob busy, and nothing of hers reaches
    // Graph.
    emu.clear_requests();
    let _carol = phone(
        &gw,
        dirs[2].path(),
        "carol",
        &[&format!("/dial sip:bob@{DOMAIN}")],
    );
    let call = answered_call(&gw);
    wait_presence(&emu, &gw, &[bob], "setPresence", 1);
    assert_eq!(shown(&emu, bob), busy());
    gw.admin_hang_up(call);
    wait_presence(&emu, &gw, &[bob], "clearPresence", 1);
    let carols: Vec<Value> = emu
        .requests()
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(carol)))
        .collect();
    assert!(carols.is_empty(), "Graph asked about carol: {carols:#?}");
    assert_eq!(shown(&emu, carol).0, "Offline");
}

/// The gateway stops (SIGTERM) while alice and bob talk: their calls end with it, so both are
/// cleared before the process exits (Teams would otherwise show them Busy for up to 5 minutes).
#[test]
fn cleared_when_the_gateway_stops_during_a_call() {
    let Some((emu, mut gw)) = world(&[]) else {
        return;
    };
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let (_phones, _call) = alice_calls_bob(&gw, &dirs);
    let (alice, bob) = (USERS[0].1, USERS[1].1);
    wait_presence(&emu, &gw, &[alice, bob], "setPresence", 1);
    assert!(presence_requests(&emu, alice, "clearPresence").is_empty());
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(45));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit: {status:?}\n{}",
        gw.log_tail(20)
    );
    for upn in [alice, bob] {
        assert_eq!(
            presence_requests(&emu, upn, "clearPresence").len(),
            1,
            "{upn} cleared at the stop: {:#?}\n{}",
            emu.requests_to("Presence"),
            gw.log_tail(20)
        );
        assert_eq!(shown(&emu, upn).0, "Offline", "{upn} after the stop");
    }
}

#[test]
fn renewed_during_a_long_call_and_throttling_honoured() {
    let Some((emu, gw)) = world(&["--test-presence-renew-secs", "1"]) else {
        return;
    };
    // Graph throttles the first presence request (429, Retry-After: 1).
    let body = json!({"count": 1, "retry_after": 1}).to_string();
    let r = http::request(emu.addr, "POST", "/test/graph/throttle", None, Some(&body))
        .unwrap_or_else(|e| panic!("POST /test/graph/throttle: {e}"));
    assert_eq!(r.status, 204, "{}", r.body);
    let dirs: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let (_phones, call) = alice_calls_bob(&gw, &dirs);
    let (alice, bob) = (USERS[0].1, USERS[1].1);
    // The throttled request again, then renewals every second: at least three each.
    wait_presence(&emu, &gw, &[alice, bob], "setPresence", 3);
    assert!(
        presence_requests(&emu, alice, "clearPresence").is_empty()
            && presence_requests(&emu, bob, "clearPresence").is_empty(),
        "cleared during the call"
    );
    for upn in [alice, bob] {
        assert_eq!(shown(&emu, upn), busy(), "{upn}");
    }
    let throttled = csps_tests::metric_sum(
        &gw.metrics_text(),
        "csps_presence_failures_total",
        &[("reason", "throttled")],
    );
    assert_eq!(throttled, Some(1.0), "{}", gw.metrics_text());
    gw.admin_hang_up(call);
    wait_presence(&emu, &gw, &[alice, bob], "clearPresence", 1);
    // No renewal after the clear.
    let sets = presence_requests(&emu, alice, "setPresence").len();
    let log = emu.requests();
    let last_set = log
        .iter()
        .rposition(|r| r["path"] == format!("/v1.0/users/{alice}/presence/setPresence"));
    let clear = log
        .iter()
        .position(|r| r["path"] == format!("/v1.0/users/{alice}/presence/clearPresence"));
    assert!(last_set < clear, "a setPresence after the clear: {log:#?}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        presence_requests(&emu, alice, "setPresence").len(),
        sets,
        "renewed after the call ended"
    );
    for upn in [alice, bob] {
        assert_eq!(shown(&emu, upn).0, "Offline", "{upn}");
    }
}

#[test]
fn the_emulator_refuses_what_graph_refuses() {
    let Some(emu) = emulator() else {
        return;
    };
    let app = |roles: Value| {
        emu.mint(
            json!({"idtyp": "app", "appid": CLIENT_ID, "roles": roles}),
            false,
        )
    };
    let token = app(json!(["Presence.ReadWrite.All"]));
    let set = "/v1.0/users/dave@contoso.test/presence/setPresence";
    let post = |path: &str, token: Option<&str>, body: Value| {
        let r = http::request(emu.addr, "POST", path, token, Some(&body.to_string()))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (r.status, r.json())
    };
    let good = json!({"sessionId": CLIENT_ID, "availability": "Busy", "activity": "InACall",
                      "expirationDuration": "PT5M"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let no_session = json!({"availability": "Busy", "activity": "InACall"});
    for (why, body) in [
        ("no sessionId", no_session),
        (
            "another app's session",
            with("sessionId", json!("someone-else")),
        ),
        (
            "a pair Graph refuses",
            with("activity", json!("Presenting")),
        ),
        (
            "an unknown availability",
            with("availability", json!("Sleeping")),
        ),
        ("too short", with("expirationDuration", json!("PT1M"))),
        ("too long", with("expirationDuration", json!("PT5H"))),
        (
            "not ISO 8601",
            with("expirationDuration", json!("5 minutes")),
        ),
    ] {
        let (status, answer) = post(set, Some(&token), body);
        assert_eq!(status, 400, "{why}: {answer}");
        assert_eq!(answer["error"]["code"], "BadRequest", "{why}");
    }
    let (status, _) = post(set, None, good.clone());
    assert_eq!(status, 401, "no token");
    let (status, _) = post(
        set,
        Some(&app(json!(["GroupMember.Read.All"]))),
        good.clone(),
    );
    assert_eq!(status, 403, "no Presence.ReadWrite.All");
    let clear = "/v1.0/users/dave@contoso.test/presence/clearPresence";
    let (status, _) = post(clear, Some(&token), json!({}));
    assert_eq!(status, 400, "clearPresence without sessionId");
    // Accepted shapes, and what GET shows after each.
    assert_eq!(post(set, Some(&token), good.clone()).0, 200);
    assert_eq!(shown(&emu, "DAVE@contoso.test"), busy());
    let dnd = json!({"sessionId": CLIENT_ID, "availability": "DoNotDisturb",
                     "activity": "Presenting"});
    assert_eq!(
        post(set, Some(&token), dnd).0,
        200,
        "no expiration: the default"
    );
    assert_eq!(
        shown(&emu, "dave@contoso.test"),
        ("DoNotDisturb".into(), "Presenting".into())
    );
    let session = json!({ "sessionId": CLIENT_ID });
    assert_eq!(post(clear, Some(&token), session).0, 200);
    assert_eq!(
        shown(&emu, "dave@contoso.test"),
        ("Offline".into(), "Offline".into())
    );
}

/// A phone of `user` (answering by itself, running `commands`) registered to `gw`, once the
/// store lists its binding hosted by `gw`'s server (the user may have bindings on others).
fn phone_on(gw: &Gateway, dir: &Path, user: &str, commands: &[&str]) -> Baresip {
    let server = gw.server_name.clone().unwrap_or_default();
    let password = format!("{user}-secret-1");
    let phone = csps_tests::baresip::tone_phone(
        dir,
        gw.sip_port,
        (user, &password, DOMAIN),
        800,
        "PCMU",
        commands,
    );
    let registered = wait_until(Duration::from_secs(15), || {
        gw.registrations_of(user)
            .iter()
            .any(|r| r["server"] == server.as_str())
    });
    assert!(
        registered,
        "{user} did not register on {server}:\n{}",
        gw.log_tail(30)
    );
    phone
}

/// Two gateways, `a` and `b`, on one FerretDB (database `db_name`), with the users of
/// [`USERS`] and presence on; `None` (skipped) without baresip or the peers.
fn cluster(db_name: &str) -> Option<(Ferret, TeamsEmulator, Gateway, Gateway)> {
    if !have_tool("baresip") {
        skip("baresip not installed (run e2e/setup)");
        return None;
    }
    let db = Ferret::start()?;
    let emu = emulator()?;
    let uri = format!("{}{db_name}", db.uri());
    let opts = |name: &str| {
        GatewayOptions {
            server_name: Some(name.into()),
            ..GatewayOptions::default()
        }
        .arg("--mongodb-uri")
        .arg(&uri)
    };
    let a = start(opts("a"))?;
    create_accounts(&a);
    // Started after the accounts exist: its registrar knows them from the start.
    let b = start(opts("b"))?;
    presence_on(&emu, &[&a, &b]);
    Some((db, emu, a, b))
}

/// A cluster (issue 5): two gateways, `a` and `b`, share one FerretDB and one Graph session per
/// user (the admin app's). Alice has a phone on each and is in a call on each (with bob on `a`,
/// with carol, not activated, on `b`). Her call on `a` ends first: `a` removes its busy mark,
/// finds `b`'s, and leaves her Busy (no clearPresence; bob, busy on `a` only, is cleared). Her
/// call on `b` ends: `b` finds no other mark and clears her.
#[test]
fn busy_until_her_last_call_in_the_cluster_ends() {
    let Some((_db, emu, a, b)) = cluster("presence") else {
        return;
    };
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let _bob = phone_on(&a, dirs[0].path(), "bob", &[]);
    let _carol = phone_on(&b, dirs[1].path(), "carol", &[]);
    let dial = |who: &str| format!("/dial sip:{who}@{DOMAIN}");
    let _alice_a = phone_on(&a, dirs[2].path(), "alice", &[&dial("bob")]);
    let call_a = answered_call(&a);
    let _alice_b = phone_on(&b, dirs[3].path(), "alice", &[&dial("carol")]);
    let call_b = answered_call(&b);
    let (alice, bob) = (USERS[0].1, USERS[1].1);
    // One setPresence from each server, each after that server's busy mark.
    wait_presence(&emu, &a, &[alice], "setPresence", 2);
    wait_presence(&emu, &a, &[bob], "setPresence", 1);
    assert_eq!(shown(&emu, alice), busy());

    a.admin_hang_up(call_a);
    let kept = wait_until(Duration::from_secs(15), || {
        a.log_lines()
            .iter()
            .any(|l| l.contains("kept Busy") && l.contains(alice))
    });
    assert!(kept, "a did not keep alice Busy:\n{}", a.log_tail(30));
    wait_presence(&emu, &a, &[bob], "clearPresence", 1);
    assert!(
        presence_requests(&emu, alice, "clearPresence").is_empty(),
        "alice cleared while in a call on b: {:#?}\n{}",
        emu.requests_to("Presence"),
        a.log_tail(30)
    );
    assert_eq!(shown(&emu, alice), busy(), "alice while in a call on b");
    assert_eq!(shown(&emu, bob).0, "Offline", "bob after his call on a");

    b.admin_hang_up(call_b);
    wait_presence(&emu, &b, &[alice], "clearPresence", 1);
    assert_eq!(shown(&emu, alice).0, "Offline", "alice after her last call");
    assert!(
        !b.log_lines().iter().any(|l| l.contains("kept Busy")),
        "b kept a presence:\n{}",
        b.log_tail(30)
    );
}

/// The window the busy marks leave (a clear landing after another server's set): Graph is slow
/// with `b`'s clearPresence for alice (the emulator holds it), and meanwhile she goes Busy on
/// `a` (its mark, then its setPresence). When the held clear lands it wipes `a`'s Busy; `b`
/// then reads the marks again, finds `a`'s and sets her Busy once more, so she does not show
/// available for the minutes until `a`'s renewal.
#[test]
fn a_clear_that_lands_after_another_servers_set_is_mended() {
    let Some((_db, emu, a, b)) = cluster("presence_window") else {
        return;
    };
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let _bob = phone_on(&a, dirs[0].path(), "bob", &[]);
    let _carol = phone_on(&b, dirs[1].path(), "carol", &[]);
    let dial = |who: &str| format!("/dial sip:{who}@{DOMAIN}");
    let _alice_b = phone_on(&b, dirs[2].path(), "alice", &[&dial("carol")]);
    let call_b = answered_call(&b);
    let alice = USERS[0].1;
    wait_presence(&emu, &b, &[alice], "setPresence", 1);

    let body = json!({"count": 1}).to_string();
    let r = http::request(emu.addr, "POST", "/test/graph/hold", None, Some(&body))
        .unwrap_or_else(|e| panic!("POST /test/graph/hold: {e}"));
    assert_eq!(r.status, 204, "{}", r.body);
    b.admin_hang_up(call_b);
    // b found no other mark and cleared; Graph holds the clear.
    wait_presence(&emu, &b, &[alice], "clearPresence", 1);
    let _alice_a = phone_on(&a, dirs[3].path(), "alice", &[&dial("bob")]);
    let call_a = answered_call(&a);
    wait_presence(&emu, &a, &[alice], "setPresence", 2);
    let r = http::request(emu.addr, "POST", "/test/graph/release", None, Some("{}"))
        .unwrap_or_else(|e| panic!("POST /test/graph/release: {e}"));
    assert_eq!(r.json()["released"], 1, "the clear was held: {}", r.body);

    wait_log(&b, "set Busy again");
    wait_presence(&emu, &b, &[alice], "setPresence", 3);
    assert_eq!(shown(&emu, alice), busy(), "alice while in a call on a");

    a.admin_hang_up(call_a);
    wait_presence(&emu, &a, &[alice], "clearPresence", 2);
    let cleared = wait_until(Duration::from_secs(10), || {
        shown(&emu, alice).0 == "Offline"
    });
    assert!(
        cleared,
        "alice after her last call: {:?}",
        shown(&emu, alice)
    );
}
