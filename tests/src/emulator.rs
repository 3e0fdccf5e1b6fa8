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
}

/// A running `teams-emulator`.
pub struct TeamsEmulator {
    child: Child,
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
}

impl TeamsEmulator {
    /// Starts the emulator; `Err` names a missing prerequisite (the binary).
    pub fn start(opts: &EmulatorOptions) -> Result<TeamsEmulator, String> {
        let bin = find_workspace_bin("teams-emulator", "TEAMS_EMULATOR_BIN").ok_or(
            "teams-emulator binary not found: run `cargo build --release --workspace --bins` \
             or set TEAMS_EMULATOR_BIN",
        )?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = Command::new(&bin);
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
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut emu = TeamsEmulator { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = emu.child.try_wait() {
                return Err(format!("teams-emulator exited at start ({status})"));
            }
            if http::request(addr, "GET", "/test/requests", None, None)
                .is_ok_and(|r| r.status == 200)
            {
                return Ok(emu);
            }
            if Instant::now() > deadline {
                let _ = emu.child.kill();
                return Err("teams-emulator did not answer within 10 s".into());
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

impl Drop for TeamsEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
