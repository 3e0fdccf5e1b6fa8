//! RFC 6665 §4.2 and RFC 4235 §4 (busy-lamp fields): a SIPp desk phone subscribes to a
//! colleague's dialog state through the real gateway (digest challenge, 200, a full-state NOTIFY),
//! watches a SIPp call to that colleague ring, be answered and end (NOTIFY bodies `early`,
//! `confirmed`, `terminated`, versions one up each), and unsubscribes (`terminated` NOTIFY). Other
//! packages get 489, users that are no account 404. A call the watched user places shows as the
//! initiator's dialog, early while the other phone rings.

use std::path::Path;
use std::time::Duration;

use csps_tests::{Gateway, Sipp, SippOutcome, wait_until};

const DOMAIN: &str = "csps.local";

/// `user` (password `<user>-secret-1`) runs the SUBSCRIBE `scenario` for `watched`.
fn watcher(gw: &Gateway, scenario: &str, user: &str, watched: &str) -> Sipp {
    Sipp::new(scenario, gw.sip_addr())
        .key("user", user)
        .key("domain", DOMAIN)
        .key("callee", watched)
        .auth(user, &format!("{user}-secret-1"))
        .auth_uri(&format!("{watched}@{DOMAIN}"))
        .timeout(Duration::from_secs(60))
}

fn assert_ok(gw: &Gateway, who: &str, outcome: &SippOutcome) {
    assert!(
        outcome.ok(),
        "{who} failed:\n{}\n--- gateway ---\n{}",
        outcome.output,
        gw.log_tail(40)
    );
}

/// The gateway's count of live dialog subscriptions.
fn subscriptions(gw: &Gateway) -> Option<f64> {
    csps_tests::metric_sum(&gw.metrics_text(), "csps_dialog_subscriptions", &[])
}

/// One `<dialog>` of a NOTIFY body: id, direction, state.
type Dialog = (String, String, String);

/// One NOTIFY the watcher received, as the test reads it.
#[derive(Debug)]
struct Notify {
    subscription_state: String,
    version: u64,
    dialogs: Vec<Dialog>,
}

/// The value of attribute `name` in the XML start tag `tag`.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_owned())
}

/// The dialog-info document of a NOTIFY: its version and its dialogs.
fn dialog_info(body: &str) -> Result<(u64, Vec<Dialog>), String> {
    let root_at = body
        .find("<dialog-info ")
        .ok_or_else(|| format!("no dialog-info: {body}"))?;
    let root = &body[root_at..root_at + body[root_at..].find('>').unwrap_or(0)];
    if attribute(root, "state").as_deref() != Some("full")
        || attribute(root, "entity").as_deref() != Some("sip:bob@csps.local")
        || !root.contains("xmlns=\"urn:ietf:params:xml:ns:dialog-info\"")
    {
        return Err(format!("not bob's full state: {root}"));
    }
    let version = attribute(root, "version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no version: {root}"))?;
    let mut dialogs = Vec::new();
    for part in body.split("<dialog ").skip(1) {
        let tag = &part[..part.find('>').unwrap_or(part.len())];
        let state = part
            .split_once("<state>")
            .and_then(|(_, s)| s.split_once("</state>"))
            .map(|(s, _)| s.to_owned())
            .ok_or_else(|| format!("a dialog without state: {part}"))?;
        dialogs.push((
            attribute(tag, "id").unwrap_or_default(),
            attribute(tag, "direction").unwrap_or_default(),
            state,
        ));
    }
    Ok((version, dialogs))
}

/// The NOTIFYs SIPp received, in order, from its message log (`-trace_msg`).
fn received_notifies(log: &Path) -> Vec<Notify> {
    let text = std::fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("SIPp's message log {}: {e}", log.display()));
    let mut out = Vec::new();
    for entry in text.split("\n----------------------------------------------- ") {
        let Some((head, msg)) = entry.split_once("bytes :\n") else {
            continue;
        };
        let msg = msg.trim_start_matches(['\r', '\n']);
        if !head.contains("message received") || !msg.starts_with("NOTIFY ") {
            continue;
        }
        let msg = msg.replace("\r\n", "\n");
        let (headers, body) = msg.split_once("\n\n").unwrap_or((&msg, ""));
        let subscription_state = headers
            .lines()
            .find_map(|l| l.strip_prefix("Subscription-State:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        let (version, dialogs) = dialog_info(body).unwrap_or_else(|e| panic!("{e}"));
        out.push(Notify {
            subscription_state,
            version,
            dialogs,
        });
    }
    out
}

/// Accounts alice, bob and carol; carol's phone (SIPp `uac_blf_watch.xml`, its messages logged
/// to `log`) subscribed to bob, then bob's registered phone playing `bob_scenario` (sending no
/// media): both running in threads.
fn carol_watches_bob(
    gw: &Gateway,
    log: &Path,
    bob_scenario: &str,
) -> (
    std::thread::JoinHandle<SippOutcome>,
    std::thread::JoinHandle<SippOutcome>,
) {
    let carol = carol_watches(gw, log);
    let bob = Sipp::callee(bob_scenario, gw.sip_addr(), ("bob", "bob-secret-1"), DOMAIN)
        .unwrap_or_else(|e| panic!("{e}"))
        .silent();
    (carol, std::thread::spawn(move || bob.run()))
}

/// Accounts alice, bob and carol; carol's phone (SIPp `uac_blf_watch.xml`, its messages logged
/// to `log`) subscribed to bob, running in a thread.
fn carol_watches(gw: &Gateway, log: &Path) -> std::thread::JoinHandle<SippOutcome> {
    for user in ["alice", "bob", "carol"] {
        gw.create_user(user, &format!("{user}-secret-1"));
    }
    let sipp = watcher(gw, "uac_blf_watch.xml", "carol", "bob")
        .arg("-trace_msg")
        .arg("-message_file")
        .arg(log.to_string_lossy().into_owned());
    let carol = std::thread::spawn(move || sipp.run());
    assert!(
        wait_until(Duration::from_secs(20), || subscriptions(gw) == Some(1.0)),
        "carol's subscription did not start:\n{}",
        gw.log_tail(40)
    );
    carol
}

/// The NOTIFYs showed bob's one call (a repeat folded) early, confirmed and terminated, each
/// time with the same id and `direction`.
fn assert_bobs_call(notifies: &[Notify], direction: &str) {
    let mut seen: Vec<&Dialog> = Vec::new();
    for d in notifies.iter().flat_map(|n| n.dialogs.iter()) {
        if seen.last() != Some(&d) {
            seen.push(d);
        }
    }
    let id = seen.first().map(|d| d.0.as_str()).unwrap_or_default();
    let states: Vec<(&str, &str, &str)> = seen
        .iter()
        .map(|(i, dir, s)| (i.as_str(), dir.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            (id, direction, "early"),
            (id, direction, "confirmed"),
            (id, direction, "terminated"),
        ],
        "{notifies:#?}"
    );
}

/// Carol's phone watches bob. Alice calls bob (SIPp caller and callee), bob answers, alice
/// hangs up: carol's NOTIFYs show bob's dialog early (recipient), confirmed, terminated, with
/// versions 0, 1, 2, … and nothing of alice's; then carol unsubscribes (200 Expires 0, a
/// `terminated;reason=timeout` NOTIFY) and the gateway counts no subscription.
#[test]
fn a_watcher_sees_the_watched_users_call_ring_answer_and_end() {
    let Some(gw) = csps_tests::gateway_for("sipp") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("watcher_messages.log");
    let (carol, bob) = carol_watches_bob(&gw, &log, "uas_answer.xml");
    let alice = Sipp::caller(
        "uac_call.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "bob",
        DOMAIN,
    )
    .run();
    let bob = bob.join().expect("callee thread");
    assert_ok(&gw, "alice (caller)", &alice);
    assert_ok(&gw, "bob (callee)", &bob);
    let carol = carol.join().expect("watcher thread");
    assert_ok(&gw, "carol (watcher)", &carol);

    let notifies = received_notifies(&log);
    assert!(notifies.len() >= 4, "{notifies:#?}");
    let first = &notifies[0];
    assert!(
        first.subscription_state.starts_with("active;expires="),
        "{first:?}"
    );
    assert!(first.dialogs.is_empty(), "bob is idle at first: {first:?}");
    let versions: Vec<u64> = notifies.iter().map(|n| n.version).collect();
    let expected: Vec<u64> = (0..notifies.len() as u64).collect();
    assert_eq!(versions, expected, "one up per NOTIFY: {notifies:#?}");
    assert_bobs_call(&notifies, "recipient");
    let last = notifies.last().expect("a NOTIFY");
    assert_eq!(last.subscription_state, "terminated;reason=timeout");
    assert!(last.dialogs.is_empty(), "shown terminated once: {last:?}");
    assert!(
        wait_until(Duration::from_secs(10), || subscriptions(&gw) == Some(0.0)),
        "the subscription is still counted"
    );
}

/// Carol's phone watches bob, who calls alice (SIPp caller and callee): carol's NOTIFYs show
/// bob's dialog as the initiator's, early while alice's phone rings, then confirmed and
/// terminated; nothing of alice's line.
#[test]
fn a_watcher_sees_the_watched_users_own_call_dial_answer_and_end() {
    let Some(gw) = csps_tests::gateway_for("sipp") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("watcher_messages.log");
    let carol = carol_watches(&gw, &log);
    let alice = Sipp::callee(
        "uas_answer.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        DOMAIN,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .silent();
    let alice = std::thread::spawn(move || alice.run());
    let bob = Sipp::caller(
        "uac_call.xml",
        gw.sip_addr(),
        ("bob", "bob-secret-1"),
        "alice",
        DOMAIN,
    )
    .run();
    let alice = alice.join().expect("callee thread");
    assert_ok(&gw, "bob (caller)", &bob);
    assert_ok(&gw, "alice (callee)", &alice);
    let carol = carol.join().expect("watcher thread");
    assert_ok(&gw, "carol (watcher)", &carol);

    let notifies = received_notifies(&log);
    assert_bobs_call(&notifies, "initiator");
}

/// What a BLF key reads from an early `<dialog>` to pick the call up (RFC 4235 §4.1.6): the
/// Call-ID, the watched device's tag (`local-tag`), the other side's (`remote-tag`), and the
/// remote identity element.
#[derive(Debug)]
struct EarlyDialog {
    call_id: String,
    local_tag: String,
    remote_tag: String,
    remote: String,
}

/// `value` with the five predefined XML entities resolved.
fn unescape(value: &str) -> String {
    value
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The first early `<dialog>` with identifiers in the watcher's message log so far.
fn early_dialog(log: &Path) -> Option<EarlyDialog> {
    let text = std::fs::read_to_string(log).ok()?;
    text.split("<dialog ").skip(1).find_map(|part| {
        let tag = &part[..part.find('>')?];
        if !part.contains("<state>early</state>") {
            return None;
        }
        let remote = part.split_once("<remote>")?.1.split_once("</remote>")?.0;
        Some(EarlyDialog {
            call_id: unescape(&attribute(tag, "call-id")?),
            local_tag: unescape(&attribute(tag, "local-tag")?),
            remote_tag: unescape(&attribute(tag, "remote-tag")?),
            remote: remote.trim().to_owned(),
        })
    })
}

/// Directed call pickup from a BLF key (RFC 4235 + RFC 3891): carol's phone watches bob; alice
/// calls bob, whose phone rings without answering; carol's NOTIFY shows the early dialog with
/// `call-id`, `local-tag`, `remote-tag` and alice as remote identity. Carol's phone (another
/// SIPp) sends an INVITE with `Replaces: call-id;to-tag=remote-tag;from-tag=local-tag;early-only`
/// built from them and gets 200: the call is answered by carol, bob's phone gets CANCEL, alice
/// the BYE when carol hangs up, and the record names carol as callee.
#[test]
fn a_blf_key_picks_up_the_watched_users_ringing_call() {
    let Some(gw) = csps_tests::gateway_for("sipp") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("watcher_messages.log");
    let (watching, bob) = carol_watches_bob(&gw, &log, "uas_cancel.xml");
    let alice = Sipp::caller(
        "uac_hung_up.xml",
        gw.sip_addr(),
        ("alice", "alice-secret-1"),
        "bob",
        DOMAIN,
    );
    let alice = std::thread::spawn(move || alice.run());
    let mut early = None;
    let shown = wait_until(Duration::from_secs(15), || {
        early = early_dialog(&log);
        early.is_some()
    });
    assert!(
        shown,
        "no early dialog with identifiers in carol's NOTIFYs:\n{}\n--- gateway ---\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        gw.log_tail(40)
    );
    let early = early.expect("an early dialog");
    assert!(
        early
            .remote
            .contains(&format!("sip:alice@{DOMAIN}</identity>")),
        "{early:?}"
    );
    // RFC 3891 §3: the tags as the gateway, which gets the Replaces, holds the dialog.
    let replaces = format!(
        "{};to-tag={};from-tag={};early-only",
        early.call_id, early.remote_tag, early.local_tag
    );
    let picker = Sipp::caller(
        "uac_replaces.xml",
        gw.sip_addr(),
        ("carol", "carol-secret-1"),
        "bob",
        DOMAIN,
    )
    .key("replaces", &replaces)
    .arg("-rtp_echo");
    let picker = std::thread::spawn(move || picker.run());
    let picked = gw.answered_by(&format!("sip:carol@{DOMAIN}"));
    assert!(
        picked.is_ok(),
        "carol did not pick up with {replaces}: {picked:?}\n{}",
        gw.log_tail(60)
    );
    let bob = bob.join().expect("bob thread");
    assert_ok(&gw, "bob (rung, then cancelled)", &bob);
    let picker = picker.join().expect("picker thread");
    assert_ok(&gw, "carol (picking up)", &picker);
    let alice = alice.join().expect("alice thread");
    assert_ok(&gw, "alice (caller)", &alice);
    let watching = watching.join().expect("watcher thread");
    assert_ok(&gw, "carol (watcher)", &watching);
    let record = gw.ended_call();
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["callee"], format!("sip:carol@{DOMAIN}"), "{record}");
}

/// `Event: presence` is 489 Bad Event with `Allow-Events: dialog` (without a challenge); a
/// watched user that is no account is 404 after the challenge.
#[test]
fn other_packages_get_489_and_unknown_users_404() {
    let Some(gw) = csps_tests::gateway_for("sipp") else {
        return;
    };
    gw.create_user("carol", "carol-secret-1");
    let bad_event = watcher(&gw, "uac_blf_bad_event.xml", "carol", "bob").run();
    assert_ok(&gw, "Event: presence", &bad_event);
    let unknown = watcher(&gw, "uac_blf_unknown.xml", "carol", "nobody").run();
    assert_ok(&gw, "SUBSCRIBE to nobody", &unknown);
    assert_eq!(subscriptions(&gw), Some(0.0));
}
