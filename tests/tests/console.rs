//! The web console in a real browser: the gateway serves the built app (`admin-ui/build`), the
//! node `oidc-provider` (e2e/console/idp.mjs) stands in for Entra ID, and Playwright drives
//! Debian's Chromium (e2e/console/console.mjs): an admin signs in with the authorization-code
//! flow and PKCE, changes a global leaf and sees it on the server's entry, sees a 422 message,
//! adds a trusted IP, creates the phone's SIP account, sets a new password and activates it,
//! finds its changes in the audit log, and watches a SIPp phone's registration (digest, with the
//! password set in the console) appear without a reload, then a call between two SIPp phones,
//! which the admin hangs up there (both phones get the gateway's BYE), and the call's SIP ladder.
//! Screenshots land in `<target>/tmp/console/`. Prints the first load time.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csps_tests::sipp::Sipp;
use csps_tests::{Gateway, GatewayOptions, e2e_dir, free_port, have_tool, skip};

const TENANT: &str = "7d3c2b1a-0f9e-4d8c-b7a6-958473625140";
const CLIENT: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
const GROUP: &str = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";

/// Kills the child on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    e2e_dir().parent().map(PathBuf::from).unwrap_or_default()
}

#[test]
fn admin_signs_in_edits_configuration_and_sees_a_registration_live() {
    let console_dir = e2e_dir().join("console");
    let ui = repo().join("admin-ui/dist");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !have_tool("node") || !have_tool("sipp") || !PathBuf::from(&chromium).exists() {
        return skip("node, sipp or chromium missing (run e2e/setup)");
    }
    if !console_dir.join("node_modules/playwright-core").is_dir()
        || !console_dir.join("node_modules/oidc-provider").is_dir()
    {
        return skip("e2e/console/node_modules missing (run e2e/setup)");
    }
    if !ui.join("index.html").is_file() {
        return skip("the console is not built (run admin-ui/build)");
    }
    let gw = match Gateway::start_with(
        GatewayOptions::default()
            .arg("--ui-dir")
            .arg(ui.display().to_string()),
    ) {
        Ok(g) => g,
        Err(e) => return skip(&e),
    };
    let server = gw.server_name.clone().unwrap_or_default();
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

    for (leaf, value) in [
        ("Authority", format!("http://127.0.0.1:{idp_port}")),
        ("Tenant", TENANT.into()),
        ("ClientId", CLIENT.into()),
        ("AdminGroupId", GROUP.into()),
    ] {
        let r = gw.api(
            "PUT",
            &format!("/api/config/*/Data.AdminAzureApp.{leaf}"),
            Some(&serde_json::json!(value)),
        );
        assert_eq!(r.status, 200, "{leaf}: {}", r.body);
    }

    let screens = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    let mut driver = Killed(
        Command::new("node")
            .current_dir(&console_dir)
            .args([
                "console.mjs",
                "--gateway",
                &gateway_url,
                "--server",
                &server,
            ])
            .args([
                "--user",
                "console-bob",
                "--password",
                "secret-cb",
                "--screens",
                &screens.display().to_string(),
            ])
            .env("CHROMIUM", &chromium)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start console.mjs"),
    );
    let out = BufReader::new(driver.0.stdout.take().expect("driver stdout"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut result = serde_json::Value::Null;
    let mut phones = Vec::new();
    for line in out.lines() {
        let line = line.expect("driver output");
        assert!(Instant::now() < deadline, "the browser test took too long");
        if line == "await-registration" {
            // The page is open; the phone registers now (digest: 401, then 200) with the
            // password the console set (the account was created with another one).
            let reg = Sipp::new("register.xml", gw.sip_addr())
                .key("user", "console-bob")
                .key("domain", "csps.local")
                .key("expires", 300)
                .auth("console-bob", "secret-cb")
                .timeout(Duration::from_secs(10))
                .run();
            assert!(reg.ok(), "console-bob did not register:\n{}", reg.output);
        } else if line == "await-call" {
            // A call the console shows and hangs up: consolealice calls consolecarol; both
            // SIPp phones then expect the gateway's BYE.
            gw.create_user("consolealice", "secret-ca");
            gw.create_user("consolecarol", "secret-cc");
            let callee = Sipp::callee(
                "uas_answer.xml",
                gw.sip_addr(),
                ("consolecarol", "secret-cc"),
                "csps.local",
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let caller = Sipp::caller(
                "uac_hung_up.xml",
                gw.sip_addr(),
                ("consolealice", "secret-ca"),
                "consolecarol",
                "csps.local",
            );
            phones.push(std::thread::spawn(move || callee.run()));
            phones.push(std::thread::spawn(move || caller.run()));
        } else if line.starts_with('{') {
            result = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
        }
    }
    let status = driver.0.wait().expect("console.mjs exit");
    assert!(
        status.success() && result["ok"] == true,
        "console test failed ({status}): {result:#}\nscreenshots in {}",
        screens.display()
    );
    for phone in phones {
        let run = phone.join().expect("SIPp thread");
        assert!(
            run.ok(),
            "a phone of the hung-up call failed:\n{}\n--- gateway ---\n{}",
            run.output,
            gw.log_tail(40)
        );
    }
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
    println!(
        "console first load (localhost, to the sign-in button): {} ms; screenshots in {}",
        result["first_load_ms"],
        screens.display()
    );
}
