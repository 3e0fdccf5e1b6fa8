//! The web console in a real browser: the gateway serves the built app (`admin-ui/build`), the
//! node `oidc-provider` (e2e/console/idp.mjs) stands in for Entra ID, and Playwright drives
//! Debian's Chromium (e2e/console/console.mjs): an admin signs in with the authorization-code
//! flow and PKCE, changes a global leaf and sees it on the server's entry, sees a 422 message,
//! adds a trusted IP, creates the phone's SIP account, sets a new password and activates it,
//! finds its changes in the audit log, and watches a baresip phone's registration (digest, with the
//! password set in the console) appear without a reload, then a call from a SIPp phone to a
//! baresip phone with RTP both ways, whose legs' media the page shows (PCMU on both, packet
//! counts growing between two refreshes), which the admin hangs up there (the caller gets the
//! gateway's BYE), and the call's SIP ladder;
//! then the phone among the user's devices, and a real policy component (`routing_dialplan`,
//! built from `policies/`) uploaded through the page's file input and switched off there.
//! Then an end user signs in on the self-service page (`/me`) with the end-user app
//! (`Data.SpsAzureApp`, another client of the IdP), sees their SIPp-registered phone (and not
//! another user's) and activates their account for Teams through the gateway's own sign-in
//! (`/activate`): declining consent first (the gateway's error page, nothing activated), then
//! accepting.
//! Screenshots land in `<target>/tmp/console/`. Prints the first load time.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[path = "../../gateway/tests/policy_support/mod.rs"]
mod policy_support;

use csps_tests::console::{Console, drive};
use csps_tests::sipp::Sipp;

/// Starts the gateway and the IdP for a test with SIPp phones; `None` when skipped.
fn start() -> Option<Console> {
    csps_tests::console::start(&["sipp", "baresip"], screens())
}

/// Where the screenshots go.
fn screens() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console")
}

#[test]
fn admin_signs_in_edits_configuration_and_sees_a_registration_live() {
    let Some(policy) = policy_support::component("routing_dialplan") else {
        return;
    };
    let Some(c) = start() else { return };
    let gw = &c.gw;
    let server = gw.server_name.clone().unwrap_or_default();
    let gateway_url = format!("http://{}", gw.http);
    let screens = c.screens.clone();
    let policy_file = screens.join("routing_dialplan.wasm");
    std::fs::write(&policy_file, &policy).expect("write the policy component");
    let mut phones = Vec::new();
    let desk_dir = tempfile::tempdir().expect("temp dir");
    let mut desk = None;
    let carol_dir = tempfile::tempdir().expect("temp dir");
    let mut carol = None;
    let result = drive(
        &c,
        "console.mjs",
        &[
            "--gateway",
            &gateway_url,
            "--server",
            &server,
            "--user",
            "console-bob",
            "--password",
            "secret-cb",
            "--screens",
            &screens.display().to_string(),
            "--policy",
            &policy_file.display().to_string(),
        ],
        |line| {
            if line == "await-registration" {
                // The page is open; a baresip phone registers now (digest: 401, then 200) with
                // the password the console set (the account was created with another one).
                desk = Some(csps_tests::baresip::tone_phone(
                    desk_dir.path(),
                    gw.sip_port,
                    ("console-bob", "secret-cb", "csps.local"),
                    1000,
                    "PCMU",
                    &[],
                ));
                assert!(
                    csps_tests::wait_until(Duration::from_secs(15), || !gw
                        .registrations_of("console-bob")
                        .is_empty()),
                    "console-bob's baresip did not register:\n{}",
                    gw.log_tail(30)
                );
            } else if line == "await-call" {
                // A call with media both ways that the console shows and hangs up: consolealice's
                // SIPp phone calls consolecarol's baresip, which answers by itself and sends a
                // PCMU tone; the SIPp phone echoes it back (`-rtp_echo`) and expects the
                // gateway's BYE.
                gw.create_user("consolealice", "secret-ca");
                gw.create_user("consolecarol", "consolecarol-secret-1");
                carol = Some(csps_tests::baresip::registered_tone_phone(
                    gw,
                    carol_dir.path(),
                    ("consolecarol", "csps.local"),
                    1000,
                    &[],
                ));
                let caller = Sipp::caller(
                    "uac_hung_up.xml",
                    gw.sip_addr(),
                    ("consolealice", "secret-ca"),
                    "consolecarol",
                    "csps.local",
                )
                .arg("-rtp_echo");
                phones.push(std::thread::spawn(move || caller.run()));
            }
        },
    );
    // baresip kept console-bob registered through the admin's flow.
    drop(desk);
    drop(carol);
    for phone in phones {
        let run = phone.join().expect("SIPp thread");
        assert!(
            run.ok(),
            "the caller of the hung-up call failed:\n{}\n--- gateway ---\n{}",
            run.output,
            gw.log_tail(40)
        );
    }
    // The running call's media as the page showed it: both legs PCMU, packets counted on both
    // and growing between two of the page's refreshes; loss and drops as numbers.
    let media = &result["media"];
    assert_eq!(media["legs"], 2, "{media}");
    // The ended call's record in the Recent calls table: each leg's codec, packets and loss.
    let history = result["history_media"].as_str().unwrap_or_default();
    let legs: Vec<&str> = history.lines().collect();
    assert_eq!(legs.len(), 2, "{history:?}");
    for leg in legs {
        assert!(
            leg.starts_with("PCMU/8000: ") && leg.contains(" received, 0 (0.0 %) lost"),
            "{history:?}"
        );
    }
    let (first, then) = (
        media["packets_first"].as_u64().unwrap_or(0),
        media["packets_then"].as_u64().unwrap_or(0),
    );
    assert!(first > 0 && then > first, "packets did not grow: {media}");
    for leg in 0..2 {
        let row = &media["rows"][leg];
        assert_eq!(row["codec"], "PCMU/8000", "leg {leg}: {media}");
        assert_eq!(row["srtp"], "no", "leg {leg}: {media}");
        assert_eq!(row["moh"], "no", "leg {leg}: {media}");
        assert!(
            row["packets"]
                .as_str()
                .and_then(|p| p.parse::<u64>().ok())
                .is_some_and(|p| p > 0),
            "leg {leg}: {media}"
        );
        let lost = row["lost"].as_str().unwrap_or("");
        assert!(
            lost.split(' ')
                .next()
                .is_some_and(|n| n.parse::<u64>().is_ok())
                && (lost.ends_with(" %)") || !lost.contains(' ')),
            "leg {leg} lost: {media}"
        );
        assert!(
            row["dropped"]
                .as_str()
                .is_some_and(|d| d.parse::<u64>().is_ok()),
            "leg {leg} dropped: {media}"
        );
        assert!(
            row["dropped_title"]
                .as_str()
                .is_some_and(|t| t.contains("unexpected address")),
            "leg {leg} drop breakdown: {media}"
        );
    }
    assert!(
        media["rows"][0]["party"]
            .as_str()
            .is_some_and(|p| p.contains("consolealice")),
        "the caller's leg first: {media}"
    );
    assert_eq!(
        media["page_overflows"], false,
        "the calls page is wider than a phone: {media}"
    );
    assert!(
        result["validation_message"]
            .as_str()
            .is_some_and(|m| m.contains("MinExpires")),
        "422 message shown: {result}"
    );
    // The change reached the server's entry in the store, not just the page.
    let r = gw.api(
        "GET",
        &format!("/api/config/{server}/Data.SipConfig.MaxExpires"),
        None,
    );
    assert_eq!(r.json(), serde_json::json!(1700));
    let users = gw.api("GET", "/api/users", None).json();
    assert!(
        users
            .as_array()
            .is_some_and(|l| l.iter().any(|u| u["username"] == "console-bob"
                && u["display_name"] == "Console Bob"
                && u["upn"] == "console-bob@contoso.test"
                && u["activated"] == true)),
        "the account created in the console: {users}"
    );
    let r = gw.api("GET", &format!("/api/config/{server}/trusted-ips"), None);
    assert!(r.body.contains("10.20.0.0/16"), "{}", r.body);
    let audit = gw.api("GET", "/api/audit?limit=20", None).body;
    assert!(
        audit.contains("admin@contoso.test"),
        "the audit log names the signed-in admin: {audit}"
    );
    // The phone's registration was listed with its user.
    assert!(
        result["device"]
            .as_str()
            .is_some_and(|d| d.contains("baresip") && d.contains("<sip:console-bob")),
        "console-bob's device on the users page: {result}"
    );
    // The page showed the uploaded component's hash, and the store holds that very file,
    // switched off by the signed-in admin.
    let routing = gw.api("GET", "/api/policies/routing", None).json();
    let sha = Command::new("sha256sum")
        .arg(&policy_file)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sha.stdout);
    let sha = sha.split_whitespace().next().unwrap_or("");
    assert_eq!(routing["hash"], sha, "{routing}");
    assert_eq!(
        result["policy_hash"], sha,
        "the hash the page showed: {result}"
    );
    assert_eq!(routing["size"], policy.len(), "{routing}");
    assert_eq!(routing["version"], 1, "{routing}");
    assert!(
        routing["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("admin@contoso.test")),
        "switched off in the page: {routing}"
    );
    println!(
        "console first load (localhost, to the sign-in button): {} ms; calls page media: {}; \
         screenshots in {}",
        result["first_load_ms"],
        result["media"],
        screens.display()
    );
}

#[test]
fn end_user_signs_in_sees_their_phone_and_activates() {
    let Some(c) = start() else { return };
    let gw = &c.gw;
    // The SIP account of the Azure user `enduser@contoso.test`, and someone else's.
    for (username, upn) in [
        ("enduser", "enduser@contoso.test"),
        ("otheruser", "other@contoso.test"),
    ] {
        let r = gw.api(
            "POST",
            "/api/users",
            Some(&serde_json::json!({"username": username, "password": format!("{username}-secret"),
                "upn": upn, "phone_number": if username == "enduser" { "+14255550123" } else { "+14255550124" }})),
        );
        assert_eq!(r.status, 201, "{username}: {}", r.body);
    }
    // Both phones register (digest) before the user opens the page.
    for user in ["enduser", "otheruser"] {
        let reg = Sipp::new("register.xml", gw.sip_addr())
            .key("user", user)
            .key("domain", "csps.local")
            .key("expires", 300)
            .auth(user, &format!("{user}-secret"))
            .timeout(Duration::from_secs(10))
            .run();
        assert!(reg.ok(), "{user} did not register:\n{}", reg.output);
    }
    let screens = c.screens.clone();
    let result = drive(
        &c,
        "me.mjs",
        &[
            "--gateway",
            &format!("http://{}", gw.http),
            "--login",
            "enduser",
            "--aor",
            "sip:enduser@csps.local",
            "--screens",
            &screens.display().to_string(),
        ],
        |_| {},
    );
    assert_eq!(result["activation_before"], "Not activated", "{result}");
    // A declined consent: the gateway's error page, and nothing activated.
    assert!(
        result["refused"]
            .as_str()
            .is_some_and(|m| m.contains("declined") && m.contains("access_denied")),
        "{result}"
    );
    assert_eq!(
        result["activation_after_refusal"], "Not activated",
        "{result}"
    );
    assert_eq!(result["activation_after"], "Activated", "{result}");
    assert!(
        result["device"]
            .as_str()
            .is_some_and(|d| d.contains("SIPp csps-e2e") && d.contains("sip:enduser@")),
        "the phone on the page: {result}"
    );
    // Only the user's own account was on the page.
    assert_eq!(result["accounts"], 1, "{result}");
    // The store has the activation (and only for this user), under the user's name in the audit log.
    let users = gw.api("GET", "/api/users", None).json();
    let activated = |name: &str| {
        users
            .as_array()
            .and_then(|l| l.iter().find(|u| u["username"] == name))
            .map(|u| u["activated"].clone())
    };
    assert_eq!(
        activated("enduser"),
        Some(serde_json::json!(true)),
        "{users}"
    );
    assert_eq!(
        activated("otheruser"),
        Some(serde_json::json!(false)),
        "{users}"
    );
    let audit = gw.api("GET", "/api/audit?limit=5", None).json();
    assert!(
        audit.as_array().is_some_and(|l| l
            .iter()
            .any(|e| e["actor"] == "enduser@contoso.test" && e["action"] == "user.activate")),
        "the activation in the audit log: {audit}"
    );
    println!("self-service page: screenshots in {}", screens.display());
}
