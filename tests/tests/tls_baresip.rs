//! SIP over TLS (RFC 3261 §26.2, RFC 5630): a `tls:` listener serves the self-signed certificate
//! the gateway generates at first start (with a warning), the certificate a TLS client sees is
//! that file's (same SHA-1 thumbprint as the gateway logs), a real UA (baresip 1.0) registers
//! over TLS with digest and shows with transport `tls`, and two of them call each other with
//! SDES-SRTP whose keys cross only TLS (issue 4: keys travel over TLS).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use csps_tests::baresip::Baresip;
use csps_tests::{Gateway, GatewayOptions, free_port, have_tool, skip, wait_until};

/// A gateway with a TLS listener next to UDP and TCP; returns it and the TLS port.
fn start_tls() -> Option<(Gateway, u16)> {
    let port = free_port();
    match Gateway::start_with(GatewayOptions::default().listen(format!("tls:127.0.0.1:{port}"))) {
        Ok(gw) => Some((gw, port)),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

/// The first PEM certificate block of `text`.
fn first_cert_pem(text: &str) -> Option<String> {
    let begin = text.find("-----BEGIN CERTIFICATE-----")?;
    let end_tag = "-----END CERTIFICATE-----";
    let end = text[begin..].find(end_tag)? + begin + end_tag.len();
    Some(format!("{}\n", &text[begin..end]))
}

/// `openssl x509 -fingerprint -sha1` of a PEM certificate, as upper-case hex without colons.
fn sha1_fingerprint(pem: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("write PEM to openssl");
    let out = child.wait_with_output().expect("openssl x509");
    assert!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, fp) = text
        .trim()
        .split_once('=')
        .unwrap_or_else(|| panic!("unexpected openssl output: {text}"));
    fp.replace(':', "").to_ascii_uppercase()
}

#[test]
fn tls_listener_serves_the_generated_self_signed_certificate() {
    if !have_tool("openssl") || !have_tool("timeout") {
        skip("openssl (and coreutils timeout) not installed");
        return;
    }
    let Some((gw, port)) = start_tls() else {
        return;
    };
    let pem_path = gw.data_dir.path().join("certs").join("self-signed.pem");
    let pem = std::fs::read_to_string(&pem_path)
        .unwrap_or_else(|e| panic!("{}: {e}", pem_path.display()));
    let log = gw.log_lines();
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("self-signed")),
        "no warning about the self-signed certificate:\n{}",
        log.join("\n")
    );
    let file_cert = first_cert_pem(&pem).expect("a certificate in self-signed.pem");
    let file_fp = sha1_fingerprint(&file_cert);

    // A TLS client's view: the certificate the handshake presents.
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-showcerts"])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let shown = String::from_utf8_lossy(&out.stdout);
    let seen = first_cert_pem(&shown).unwrap_or_else(|| {
        panic!(
            "no certificate in the handshake (exit {}):\n{shown}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        sha1_fingerprint(&seen),
        file_fp,
        "the handshake presents another certificate than {}",
        pem_path.display()
    );
    // The thumbprint the gateway logs (the form Data.SipConfig.CertificateThumbPrint takes).
    assert!(
        log.iter()
            .any(|l| l.contains("TLS certificate loaded") && l.contains(&file_fp)),
        "the logged thumbprint is not {file_fp}:\n{}",
        log.join("\n")
    );
}

/// A headless baresip phone for `user` over TLS to `127.0.0.1:tls_port`, trusting `cafile`:
/// PCMU, answering by itself; with `tone_hz` it plays that sine and records what it decodes into
/// `dir` (`sndfile`), with `account_params` appended to its account (`;mediaenc=srtp-mand`).
fn tls_phone(
    dir: &Path,
    (tls_port, cafile): (u16, &Path),
    (user, pass): (&str, &str),
    (tone_hz, account_params): (Option<u32>, &str),
    commands: &[&str],
) -> Baresip {
    let audio = match tone_hz {
        Some(hz) => format!(
            "module\t\tausine.so\nmodule\t\tsndfile.so\nmodule\t\tsrtp.so\n\
             module\t\taubridge.so\nmodule_app\tmenu.so\naudio_player\taubridge,speaker-{user}\n\
             audio_source\tausine,{hz}\nausrc_srate\t48000\nausrc_channels\t2\n\
             auplay_srate\t48000\nauplay_channels\t2\nsnd_path\t{}\n",
            dir.display()
        ),
        None => "audio_player\tnone\naudio_source\tnone\n".to_owned(),
    };
    let config = format!(
        "poll_method\tepoll\n\
         sip_listen\t127.0.0.1:{}\n\
         sip_cafile\t{}\n\
         module_path\t/usr/lib/baresip/modules\n\
         module\t\tg711.so\n\
         module_app\taccount.so\n\
         {audio}\
         audio_alert\tnone\n\
         video_display\tnone\n\
         video_source\tnone\n\
         net_interface\t127.0.0.1\n",
        free_port(),
        cafile.display()
    );
    std::fs::write(dir.join("config"), config).expect("write baresip config");
    let account = format!(
        "<sip:{user}@csps.local;transport=tls>;auth_pass={pass};outbound=\"sip:127.0.0.1:{tls_port};transport=tls\";regint=600;audio_codecs=PCMU;answermode=auto{account_params}\n"
    );
    std::fs::write(dir.join("accounts"), account).expect("write baresip accounts");
    std::fs::write(dir.join("contacts"), "").expect("write baresip contacts");
    csps_tests::baresip::start(dir, commands)
}

#[test]
fn baresip_registers_over_tls() {
    if !have_tool("baresip") {
        skip("baresip not installed (run e2e/setup)");
        return;
    }
    let Some((gw, port)) = start_tls() else {
        return;
    };
    gw.create_user("tlsuser", "tls-password");
    let dir = tempfile::tempdir().expect("temp dir");
    let cafile = gw.data_dir.path().join("certs").join("self-signed.pem");
    let _baresip = tls_phone(
        dir.path(),
        (port, &cafile),
        ("tlsuser", "tls-password"),
        (None, ""),
        &[],
    );
    let registered = wait_until(Duration::from_secs(15), || {
        !gw.registrations_of("tlsuser").is_empty()
    });
    assert!(
        registered,
        "baresip did not register over TLS: {:?}; log:\n{}",
        gw.registrations(None),
        gw.log_tail(30)
    );
    let regs = gw.registrations_of("tlsuser");
    assert_eq!(regs.len(), 1, "{regs:?}");
    assert!(
        regs[0]["transport"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("tls")),
        "transport: {regs:?}"
    );
    assert!(
        regs[0]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "source: {regs:?}"
    );
    let ua = regs[0]["user_agent"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(ua.contains("baresip"), "user_agent: {ua}");
    // The connection stays open for the phone (the flow the gateway answers and calls on).
    assert!(
        gw.metric("csps_connections").is_some_and(|c| c >= 1.0),
        "{}",
        gw.metrics_text()
    );
}

/// `Data.SipConfig.Srtp=Required` with both phones on TLS and `mediaenc=srtp-mand`, and
/// `SrtpOverPlainTransport` left off: the SDES keys cross only TLS, both legs speak SRTP, and
/// each phone hears the other's tone through the gateway (which decrypts and re-encrypts with
/// each leg's own keys).
#[test]
fn srtp_call_between_two_tls_phones_carries_the_tones() {
    if !have_tool("baresip") {
        skip("baresip not installed (run e2e/setup)");
        return;
    }
    let Some((gw, port)) = start_tls() else {
        return;
    };
    gw.create_user("alice", "alice-secret-1");
    gw.create_user("bob", "bob-secret-1");
    let r = gw.api(
        "PUT",
        "/api/config/*/Data.SipConfig.Srtp",
        Some(&serde_json::json!("Required")),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let cafile = gw.data_dir.path().join("certs").join("self-signed.pem");
    let (alice_dir, bob_dir) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let _bob = tls_phone(
        bob_dir.path(),
        (port, &cafile),
        ("bob", "bob-secret-1"),
        (Some(1000), ";mediaenc=srtp-mand"),
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(15), || !gw
            .registrations_of("bob")
            .is_empty()),
        "bob did not register over TLS; log:\n{}",
        gw.log_tail(30)
    );
    let alice = tls_phone(
        alice_dir.path(),
        (port, &cafile),
        ("alice", "alice-secret-1"),
        (Some(600), ";mediaenc=srtp-mand"),
        &["/dial sip:bob@csps.local"],
    );
    let answered = wait_until(Duration::from_secs(15), || {
        gw.api("GET", "/api/calls", None)
            .json()
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["state"] == "answered"))
    });
    assert!(answered, "no answered call; log:\n{}", gw.log_tail(40));
    std::thread::sleep(Duration::from_secs(4));
    let calls = gw.api("GET", "/api/calls", None).json();
    let id = calls[0]["id"].as_u64().expect("call id");
    gw.admin_hang_up(id);
    drop(alice);
    let legs = &calls[0]["legs"];
    for leg in [0, 1] {
        assert_eq!(legs[leg]["srtp"], true, "{calls}");
        assert!(
            legs[leg]["counters"]["rtp_packets"].as_u64().unwrap_or(0) > 100,
            "{calls}"
        );
        // baresip sends a short keep-alive on its RTCP port at the start, which is no SRTCP
        // packet and is counted here; wrong keys would fail every one of the >100 packets.
        let failed = legs[leg]["counters"]["dropped_srtp"]
            .as_u64()
            .unwrap_or(u64::MAX);
        assert!(failed <= 2, "{calls}");
    }
    let tone = |dir: &Path, hz: f32| {
        csps_tests::audio::heard_in(dir)
            .map(|pcm| csps_tests::audio::tone_share(&pcm, hz))
            .expect("a recording")
    };
    let (bob_hears, alice_hears) = (tone(bob_dir.path(), 600.0), tone(alice_dir.path(), 1000.0));
    assert!(bob_hears > 0.5, "bob hears alice's 600 Hz at {bob_hears}");
    assert!(
        alice_hears > 0.5,
        "alice hears bob's 1000 Hz at {alice_hears}"
    );
    assert!(
        !gw.log_lines()
            .iter()
            .any(|l| l.contains("plain") && l.contains("SRTP") && l.contains("WARN")),
        "no warning about keys over a plain transport expected:\n{}",
        gw.log_tail(40)
    );
}
