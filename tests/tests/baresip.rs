//! RFC 3261 §10: a real UA (baresip 1.0) registers two accounts from one process.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use csps_tests::{Gateway, free_port, have_tool, skip, wait_until};

/// Kills baresip on drop, also on panic.
struct Baresip(Child);

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless baresip config: no audio or video modules, SIP on a free loopback port.
fn write_config(dir: &std::path::Path, sip_port: u16, accounts: &[(&str, &str)]) {
    let config = format!(
        "poll_method\tepoll\n\
         sip_listen\t127.0.0.1:{}\n\
         sip_transports\tudp\n\
         module_path\t/usr/lib/baresip/modules\n\
         module\t\tg711.so\n\
         module_app\taccount.so\n\
         audio_player\tnone\n\
         audio_source\tnone\n\
         audio_alert\tnone\n\
         video_display\tnone\n\
         video_source\tnone\n\
         net_interface\t127.0.0.1\n",
        free_port()
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
    let gw = match Gateway::start() {
        Ok(gw) => gw,
        Err(why) => {
            skip(&why);
            return;
        }
    };
    gw.create_user("alice", "alice-password");
    gw.create_user("bob", "bob-password");
    let dir = tempfile::tempdir().expect("temp dir");
    write_config(
        dir.path(),
        gw.sip_port,
        &[("alice", "alice-password"), ("bob", "bob-password")],
    );
    let child = Command::new("baresip")
        .arg("-f")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start baresip");
    let _baresip = Baresip(child);
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
