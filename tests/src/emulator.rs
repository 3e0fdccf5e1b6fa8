//! Starts `e2e/teams-emulator` (Entra ID token endpoint, discovery and JWKS, Graph group
//! membership) as a real process on a free loopback port, signing with the committed test key
//! `tests/data/entra/test-signing-key.pem` (and `rogue-signing-key.pem` for forged tokens);
//! killed on drop. Its test facilities mint user tokens and show the requests it received.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{find_workspace_bin, free_port, http};

/// The emulator's test key files.
pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/entra")
        .join(name)
}

/// What the emulated tenant holds.
#[derive(Clone, Debug, Default)]
pub struct EmulatorOptions {
    /// The tenant id.
    pub tenant: String,
    /// Apps allowed the client-credentials grant: (client id, secret).
    pub clients: Vec<(String, String)>,
    /// Group memberships: (user object id, group id).
    pub members: Vec<(String, String)>,
    /// The gateway FQDN the Direct Routing proxies require in Contact; `Some` starts them.
    pub sip_fqdn: Option<String>,
}

/// A running `teams-emulator`.
pub struct TeamsEmulator {
    child: Child,
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
}

/// Why one start of the emulator failed.
enum StartFailure {
    /// It exited before answering (its port was taken, most likely): worth another port.
    ExitedAtStart(String),
    /// Anything else.
    Other(String),
}

impl TeamsEmulator {
    /// [`TeamsEmulator::start`], or `None` after [`crate::skip`] saying why it could not.
    pub fn start_or_skip(opts: &EmulatorOptions) -> Option<TeamsEmulator> {
        TeamsEmulator::start(opts).map_err(|e| crate::skip(&e)).ok()
    }

    /// Starts the emulator; `Err` names a missing prerequisite (the binary). A free port can be
    /// taken by another test's process before the emulator binds it: an emulator that exits at
    /// start is tried again on another port, three times at most.
    pub fn start(opts: &EmulatorOptions) -> Result<TeamsEmulator, String> {
        let bin = find_workspace_bin("teams-emulator", "TEAMS_EMULATOR_BIN").ok_or(
            "teams-emulator binary not found: run `cargo build --release --workspace --bins` \
             or set TEAMS_EMULATOR_BIN",
        )?;
        let mut last = String::new();
        for _ in 0..3 {
            match TeamsEmulator::start_on(&bin, opts) {
                Err(StartFailure::ExitedAtStart(why)) => last = why,
                Err(StartFailure::Other(why)) => return Err(why),
                Ok(emu) => return Ok(emu),
            }
        }
        Err(last)
    }

    /// One attempt of [`TeamsEmulator::start`] on a fresh port.
    fn start_on(
        bin: &std::path::Path,
        opts: &EmulatorOptions,
    ) -> Result<TeamsEmulator, StartFailure> {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--tenant")
            .arg(&opts.tenant)
            .arg("--signing-key")
            .arg(key_path("test-signing-key.pem"))
            .arg("--rogue-key")
            .arg(key_path("rogue-signing-key.pem"));
        for (id, secret) in &opts.clients {
            cmd.arg("--client").arg(format!("{id}={secret}"));
        }
        for (oid, group) in &opts.members {
            cmd.arg("--member").arg(format!("{oid}={group}"));
        }
        if let Some(fqdn) = &opts.sip_fqdn {
            cmd.arg("--sip-fqdn").arg(fqdn);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| StartFailure::Other(format!("spawn {}: {e}", bin.display())))?;
        let mut emu = TeamsEmulator { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = emu.child.try_wait() {
                let why = format!("teams-emulator exited at start ({status})");
                return Err(StartFailure::ExitedAtStart(why));
            }
            if http::request(addr, "GET", "/test/requests", None, None)
                .is_ok_and(|r| r.status == 200)
            {
                return Ok(emu);
            }
            if Instant::now() > deadline {
                let _ = emu.child.kill();
                let why = "teams-emulator did not answer within 10 s".to_owned();
                return Err(StartFailure::Other(why));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`: the authority and the Graph URL to configure.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A user token with `claims` (the emulator fills `iss`, `tid`, lifetime unless given),
    /// signed with the tenant's key, or with the rogue key under the same key id (`forged`).
    pub fn mint(&self, claims: Value, forged: bool) -> String {
        let key = if forged { "rogue" } else { "signing" };
        let body = json!({"claims": claims, "key": key}).to_string();
        let r = http::request(self.addr, "POST", "/test/mint", None, Some(&body))
            .unwrap_or_else(|e| panic!("POST /test/mint: {e}"));
        assert_eq!(r.status, 200, "POST /test/mint: {}", r.body);
        r.json()["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {}", r.body))
            .to_owned()
    }

    /// The requests received so far (oldest first), `{"method","path","body",…}`.
    pub fn requests(&self) -> Vec<Value> {
        let r = http::request(self.addr, "GET", "/test/requests", None, None)
            .unwrap_or_else(|e| panic!("GET /test/requests: {e}"));
        match r.json() {
            Value::Array(a) => a,
            other => panic!("GET /test/requests: {other}"),
        }
    }

    /// The received requests whose path ends with `suffix`.
    pub fn requests_to(&self, suffix: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
            .collect()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        let r = http::request(self.addr, "DELETE", "/test/requests", None, None)
            .unwrap_or_else(|e| panic!("DELETE /test/requests: {e}"));
        assert_eq!(r.status, 204, "DELETE /test/requests: {}", r.body);
    }
}

/// The emulated Direct Routing proxies, as `GET /test/sip` shows them.
#[derive(Clone, Debug)]
pub struct SipProxies {
    /// PEM of the emulator's test CA.
    pub ca_pem: String,
    /// PEM of the SBC certificate (for the FQDN, from the test CA) with its key: what a trunk
    /// peer presents for mutual TLS.
    pub sbc_pem: String,
    /// Its SHA-1 thumbprint (for `Data.SipConfig.CertificateThumbPrint`).
    pub sbc_thumbprint: String,
    /// Each proxy's address, in order (sip, sip2, sip3).
    pub addrs: Vec<SocketAddr>,
    /// Whether each is serving.
    pub up: Vec<bool>,
}

impl TeamsEmulator {
    /// The SIP proxies' CA, addresses and state.
    pub fn sip(&self) -> SipProxies {
        let r = http::request(self.addr, "GET", "/test/sip", None, None)
            .unwrap_or_else(|e| panic!("GET /test/sip: {e}"));
        assert_eq!(r.status, 200, "GET /test/sip: {}", r.body);
        let v = r.json();
        let proxies = v["proxies"].as_array().cloned().unwrap_or_default();
        SipProxies {
            ca_pem: v["ca_pem"].as_str().unwrap_or_default().to_owned(),
            sbc_pem: v["sbc_pem"].as_str().unwrap_or_default().to_owned(),
            sbc_thumbprint: v["sbc_thumbprint"].as_str().unwrap_or_default().to_owned(),
            addrs: proxies
                .iter()
                .filter_map(|p| p["addr"].as_str()?.parse().ok())
                .collect(),
            up: proxies.iter().map(|p| p["up"] == true).collect(),
        }
    }

    /// Stops (`false`) or restarts (`true`) proxy `n` (1..=3).
    pub fn set_proxy(&self, n: usize, up: bool) {
        let path = format!("/test/sip/{n}/{}", if up { "start" } else { "stop" });
        let r = http::request(self.addr, "POST", &path, None, Some(""))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(r.status, 204, "POST {path}: {}", r.body);
    }

    /// Makes proxy `n` (1..=3) send an OPTIONS ping on each open connection; how many it sent.
    pub fn ping(&self, n: usize) -> u64 {
        let path = format!("/test/sip/{n}/options");
        let r = http::request(self.addr, "POST", &path, None, Some(""))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(r.status, 200, "POST {path}: {}", r.body);
        r.json()["sent"].as_u64().unwrap_or(0)
    }

    /// The calls the proxies took part in (`GET /test/sip/calls`): `{"call_id","direction",
    /// "proxy","number","status","state","ended_by","proto","rtp":{"received","echoed","sent",
    /// "returned"}}`.
    pub fn sip_calls(&self) -> Vec<Value> {
        let r = http::request(self.addr, "GET", "/test/sip/calls", None, None)
            .unwrap_or_else(|e| panic!("GET /test/sip/calls: {e}"));
        match r.json() {
            Value::Array(a) => a,
            other => panic!("GET /test/sip/calls: {other}"),
        }
    }

    /// Makes proxy `n` call `to` at the SBC as Teams does (hanging up `hangup_after_ms` after
    /// the answer); the call's Call-ID.
    pub fn call_in(&self, n: usize, to: &str, hangup_after_ms: u64) -> String {
        let path = format!("/test/sip/{n}/call");
        let body = json!({"to": to, "hangup_after_ms": hangup_after_ms}).to_string();
        let r = http::request(self.addr, "POST", &path, None, Some(&body))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        assert_eq!(r.status, 200, "POST {path}: {}", r.body);
        r.json()["call_id"].as_str().unwrap_or_default().to_owned()
    }

    /// The SIP messages the proxies received (request log entries with `"face":"sip"`).
    pub fn sip_messages(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["face"] == "sip")
            .collect()
    }
}

/// A TLS client connection to `addr` that trusts only `ca_pem`, expects `name` in the server's
/// certificate and presents `client` (PEM of a certificate chain and its key) when given (TLS
/// 1.2+, ring).
pub fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    name: &str,
    client: Option<&str>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| format!("CA PEM: {e}"))?)
            .map_err(|e| format!("CA: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS versions: {e}"))?
    .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some(pem) => {
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client PEM: {e}"))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("client key: {e}"))?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    let server = rustls_pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| format!("{name}: {e}"))?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server)
        .map_err(|e| format!("TLS client: {e}"))?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    // Finish the handshake now, so a certificate that does not verify is an error here.
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    }
    Ok(tls)
}

impl TeamsEmulator {
    /// Points `gw`'s Teams trunk at the emulated proxies: the SBC certificate into
    /// `<data-dir>/certs/` (named by its thumbprint), the emulator's CA as `TeamsCaFile`, the
    /// FQDN, the three proxies by address and a keep-alive every `interval` seconds.
    pub fn attach_trunk(&self, gw: &crate::Gateway, fqdn: &str, interval: u32) {
        self.attach_trunk_trusting(gw, fqdn, interval, &self.sip().ca_pem);
    }

    /// [`Self::attach_trunk`], but the gateway trusts `ca_pem` for the proxies' certificates.
    pub fn attach_trunk_trusting(
        &self,
        gw: &crate::Gateway,
        fqdn: &str,
        interval: u32,
        ca_pem: &str,
    ) {
        let proxies: Vec<String> = self.sip().addrs.iter().map(|a| a.to_string()).collect();
        self.attach_trunk_with(gw, fqdn, interval, ca_pem, &proxies);
    }

    /// [`Self::attach_trunk`], but `Data.SipConfig.TeamsProxies` is `proxies` (domains that DNS
    /// locates, say).
    pub fn attach_trunk_to(
        &self,
        gw: &crate::Gateway,
        fqdn: &str,
        interval: u32,
        proxies: &[&str],
    ) {
        let proxies: Vec<String> = proxies.iter().map(|p| (*p).to_owned()).collect();
        self.attach_trunk_with(gw, fqdn, interval, &self.sip().ca_pem, &proxies);
    }

    fn attach_trunk_with(
        &self,
        gw: &crate::Gateway,
        fqdn: &str,
        interval: u32,
        ca_pem: &str,
        proxies: &[String],
    ) {
        let sip = self.sip();
        let dir = gw.data_dir.path();
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        std::fs::write(certs.join("sbc.pem"), &sip.sbc_pem).expect("write sbc.pem");
        let ca = dir.join("teams-ca.pem");
        std::fs::write(&ca, ca_pem).expect("write teams-ca.pem");
        let server = gw.server_name.as_deref().unwrap_or("*");
        for (leaf, value) in [
            (
                "Data.SipConfig.CertificateThumbPrint",
                json!(sip.sbc_thumbprint),
            ),
            (
                "Data.SipConfig.TeamsCaFile",
                json!(ca.display().to_string()),
            ),
            ("Data.SipConfig.TeamsOptionsInterval", json!(interval)),
            ("Data.SipConfig.TeamsProxies", json!(proxies)),
            ("Data.SipConfig.SbcFqdn", json!(fqdn)),
        ] {
            let r = gw.api("PUT", &format!("/api/config/{server}/{leaf}"), Some(&value));
            assert!(r.status < 300, "PUT {leaf}: {} {}", r.status, r.body);
        }
    }
}

impl Drop for TeamsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
