//! RFC 3261 §10: a real UA (baresip 1.0) registers two accounts from one process.

use std::time::Duration;

use csps_tests::{Gateway, have_tool, skip, wait_until};

/// A headless baresip config: no audio or video modules, SIP on a free loopback port.
fn write_config(dir: &std::path::Path, sip_port: u16, accounts: &[(&str, &str)]) {
    let config = format!(
        "{}audio_player\tnone\naudio_source\tnone\n",
        csps_tests::baresip::config_head()
    );
    std::fs::write(dir.join("config"), config).expect("write baresip config");
    let accounts: String = accounts
        .iter()
        .map(|(user, pass)| {
            format!(
                "<sip:{user}@csps.local>;auth_pass={pass};outbound=\"sip:127.0.0.1:{sip_port};transport=udp\";regint=600;audio_codecs=PCMU\n"
            )
        })
        .collect();
    std::fs::write(dir.join("accounts"), accounts).expect("write baresip accounts");
    std::fs::write(dir.join("contacts"), "").expect("write baresip contacts");
}

#[test]
fn baresip_registers_two_accounts() {
    if !have_tool("baresip") {
        skip("baresip not installed (run e2e/setup)");
        return;
    }
    let Some(gw) = Gateway::start_or_skip() else {
        return;
    };
    gw.create_user("alice", "alice-password");
    gw.create_user("bob", "bob-password");
    let dir = tempfile::tempdir().expect("temp dir");
    write_config(
        dir.path(),
        gw.sip_port,
        &[("alice", "alice-password"), ("bob", "bob-password")],
    );
    let _baresip = csps_tests::baresip::start(dir.path(), &[]);
    let both = wait_until(Duration::from_secs(15), || {
        !gw.registrations_of("alice").is_empty() && !gw.registrations_of("bob").is_empty()
    });
    assert!(both, "registrations: {:?}", gw.registrations(None));
    let ua = gw.registrations_of("alice")[0]["user_agent"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(ua.contains("baresip"), "user_agent: {ua}");
}
