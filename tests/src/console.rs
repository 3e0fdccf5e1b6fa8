//! The web console's browser tests: a gateway serving the built console (`admin-ui/build`), the
//! node `oidc-provider` (e2e/console/idp.mjs) standing in for Entra ID with the admin app and
//! the end-user app configured in the gateway, and the Playwright scripts of `e2e/console/`
//! driving Debian's Chromium, whose output lines a test can answer while they run.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Gateway, GatewayOptions, Killed, e2e_dir, free_port, have_tool, skip};

/// The IdP's tenant.
pub const TENANT: &str = "7d3c2b1a-0f9e-4d8c-b7a6-958473625140";
/// The admin app (`Data.AdminAzureApp.ClientId`).
pub const CLIENT: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
/// The admin group the IdP puts its admin into.
pub const GROUP: &str = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
/// The end-user app (`Data.SpsAzureApp`): another client of the same tenant.
pub const USER_CLIENT: &str = "e5f6a7b8-c9d0-4e1f-8a2b-3c4d5e6f7a8b";

/// The repository's root.
pub fn repo() -> PathBuf {
    e2e_dir().parent().map(PathBuf::from).unwrap_or_default()
}

/// A gateway serving the built console, and the test IdP with the admin app and the end-user
/// app configured in the gateway.
pub struct Console {
    /// The gateway.
    pub gw: Gateway,
    /// `e2e/console`, where the scripts run.
    pub console_dir: PathBuf,
    /// The Chromium executable.
    pub chromium: String,
    /// Where the scripts save their screenshots.
    pub screens: PathBuf,
    _idp: Killed,
    /// Kept open: the IdP's stdout.
    _idp_out: BufReader<std::process::ChildStdout>,
}

/// Starts the gateway and the IdP for scripts that save screenshots into `screens` (created),
/// or `None` after `skip` when a prerequisite is missing (node, Chromium, the node packages, the
/// built console, or one of the `peers` the test runs).
pub fn start(peers: &[&str], screens: PathBuf) -> Option<Console> {
    let console_dir = e2e_dir().join("console");
    let ui = repo().join("admin-ui/dist");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if let Some(tool) = ["node"].iter().chain(peers).find(|t| !have_tool(t)) {
        skip(&format!("{tool} missing (run e2e/setup)"));
        return None;
    }
    if !PathBuf::from(&chromium).exists() {
        skip("chromium missing (run e2e/setup)");
        return None;
    }
    if !console_dir.join("node_modules/playwright-core").is_dir()
        || !console_dir.join("node_modules/oidc-provider").is_dir()
    {
        skip("e2e/console/node_modules missing (run e2e/setup)");
        return None;
    }
    if !ui.join("index.html").is_file() {
        skip("the console is not built (run admin-ui/build)");
        return None;
    }
    let gw = match Gateway::start_with(
        GatewayOptions::default()
            .arg("--ui-dir")
            .arg(ui.display().to_string()),
    ) {
        Ok(g) => g,
        Err(e) => {
            skip(&e);
            return None;
        }
    };
    let gateway_url = format!("http://{}", gw.http);
    let idp_port = free_port();
    let mut idp = Killed(
        Command::new("node")
            .current_dir(&console_dir)
            .args([
                "idp.mjs",
                "--port",
                &idp_port.to_string(),
                "--tenant",
                TENANT,
            ])
            .args(["--client", CLIENT, "--group", GROUP])
            .args(["--user-client", USER_CLIENT])
            .args(["--redirect", &format!("{gateway_url}/callback")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start idp.mjs"),
    );
    let mut idp_out = BufReader::new(idp.0.stdout.take().expect("idp stdout"));
    let mut line = String::new();
    idp_out.read_line(&mut line).expect("idp ready line");
    assert!(line.contains("\"ready\":true"), "idp.mjs: {line}");

    let authority = format!("http://127.0.0.1:{idp_port}");
    for (leaf, value) in [
        ("AdminAzureApp.Authority", authority.as_str()),
        ("AdminAzureApp.Tenant", TENANT),
        ("AdminAzureApp.ClientId", CLIENT),
        ("AdminAzureApp.AdminGroupId", GROUP),
        ("SpsAzureApp.Authority", authority.as_str()),
        ("SpsAzureApp.Tenant", TENANT),
        ("SpsAzureApp.ClientId", USER_CLIENT),
    ] {
        gw.set_global(leaf, serde_json::json!(value));
    }
    std::fs::create_dir_all(&screens).expect("screenshot folder");
    Some(Console {
        gw,
        console_dir,
        chromium,
        screens,
        _idp: idp,
        _idp_out: idp_out,
    })
}

/// Runs `node script args…` with Chromium, answering the lines it prints with `on_line`; its
/// last JSON line. Panics when the script fails or runs longer than 180 s.
pub fn drive(
    c: &Console,
    script: &str,
    args: &[&str],
    mut on_line: impl FnMut(&str),
) -> serde_json::Value {
    let mut driver = Killed(
        Command::new("node")
            .current_dir(&c.console_dir)
            .arg(script)
            .args(args)
            .env("CHROMIUM", &c.chromium)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}")),
    );
    let out = BufReader::new(driver.0.stdout.take().expect("driver stdout"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut result = serde_json::Value::Null;
    for line in out.lines() {
        let line = line.expect("driver output");
        assert!(Instant::now() < deadline, "the browser test took too long");
        if line.starts_with('{') {
            result = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
        } else {
            on_line(&line);
        }
    }
    let status = driver.0.wait().expect("driver exit");
    assert!(
        status.success() && result["ok"] == true,
        "{script} failed ({status}): {result:#}\nscreenshots in {}",
        c.screens.display()
    );
    result
}
