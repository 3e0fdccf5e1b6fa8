//! SIP over TLS (RFC 3261 §26.2, RFC 5630): a `tls:` listener serves the self-signed certificate
//! the gateway generates at first start (with a warning), the certificate a TLS client sees is
//! that file's (same SHA-1 thumbprint as the gateway logs), and a real UA (baresip 1.0) registers
//! over TLS with digest and shows with transport `tls`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use csps_tests::{Gateway, GatewayOptions, free_port, have_tool, skip, wait_until};

/// Kills baresip on drop, also on panic.
struct Baresip(Child);

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// A headless baresip config registering `user` over TLS to `127.0.0.1:tls_port`.
fn write_config(dir: &Path, tls_port: u16, cafile: &Path, user: &str, pass: &str) {
    let config = format!(
        "poll_method\tepoll\n\
         sip_listen\t127.0.0.1:{}\n\
         sip_cafile\t{}\n\
         module_path\t/usr/lib/baresip/modules\n\
         module\t\tg711.so\n\
         module_app\taccount.so\n\
         audio_player\tnone\n\
         audio_source\tnone\n\
         audio_alert\tnone\n\
         video_display\tnone\n\
         video_source\tnone\n\
         net_interface\t127.0.0.1\n",
        free_port(),
        cafile.display()
    );
    std::fs::write(dir.join("config"), config).expect("write baresip config");
    let account = format!(
        "<sip:{user}@csps.local;transport=tls>;auth_pass={pass};outbound=\"sip:127.0.0.1:{tls_port};transport=tls\";regint=600;audio_codecs=PCMU\n"
    );
    std::fs::write(dir.join("accounts"), account).expect("write baresip accounts");
    std::fs::write(dir.join("contacts"), "").expect("write baresip contacts");
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
    write_config(dir.path(), port, &cafile, "tlsuser", "tls-password");
    let child = Command::new("baresip")
        .arg("-f")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start baresip");
    let _baresip = Baresip(child);
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
