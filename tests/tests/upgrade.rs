//! The upgrade from an old-format local file (every setting in `csps.toml`) against the real
//! binary: the values land in the store (the server's entry and the absent global one), the file
//! keeps only the three local keys, the original is kept as a backup; running again changes
//! nothing, and an old file put back later neither overwrites the store nor the first backup. A
//! bad old value stops the start with the key's name and writes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use csps_tests::{Gateway, GatewayOptions, skip};
use serde_json::{Value, json};

const SECRET: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn old_file() -> String {
    format!(
        "server_name = \"up\"\nsecret_key = \"{SECRET}\"\n\n\
         [Data.System]\nMinRtpPort = 21000\nMaxRtpPort = 22000\n\n\
         [Data.SpsAzureApp]\nClientSecret = \"old-secret\"\n\n\
         [Data.SipConfig]\nTrustedIps = [\"10.9.0.0/16\"]\nSrtp = \"Required\"\nUse8KHz = true\n"
    )
}

fn start(config: &Path) -> Result<Gateway, String> {
    Gateway::start_with(
        GatewayOptions {
            server_name: None, // from the file
            ..GatewayOptions::default()
        }
        .arg("--config")
        .arg(config.to_string_lossy()),
    )
}

fn entry(gw: &Gateway, name: &str) -> Value {
    let r = gw.api("GET", &format!("/api/config/{name}"), None);
    assert_eq!(r.status, 200, "GET /api/config/{name}: {}", r.body);
    r.json()
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut b: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("config dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".bak"))
        .collect();
    b.sort();
    b
}

fn upgraded_lines(gw: &Gateway, mark: usize) -> usize {
    gw.log_since(mark)
        .iter()
        .filter(|l| l.contains("upgraded the old-format local file"))
        .count()
}

#[test]
fn old_format_file_is_moved_into_the_store_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("csps.toml");
    std::fs::write(&path, old_file()).expect("write");
    let mut gw = match start(&path) {
        Ok(gw) => gw,
        Err(why) => {
            skip(&why);
            return;
        }
    };
    assert_eq!(upgraded_lines(&gw, 0), 1, "{}", gw.log_tail(20));

    // The values are in this server's entry and in the global one (absent before).
    let own = entry(&gw, "up");
    assert_eq!(own["Data"]["System"]["MinRtpPort"], json!(21000));
    assert_eq!(own["Data"]["System"]["MaxRtpPort"], json!(22000));
    assert_eq!(
        own["Data"]["SipConfig"]["TrustedIps"],
        json!(["10.9.0.0/16"])
    );
    assert_eq!(own["Data"]["SipConfig"]["Srtp"], json!("Required"));
    assert_eq!(own["Data"]["SipConfig"]["Use8KHz"], json!(true));
    assert_eq!(
        own["Data"]["SipConfig"]["DefaultSipDomain"],
        json!("csps.local")
    );
    assert_eq!(entry(&gw, "*"), own);
    // A secret is kept (never shown): a `null` in GET, but the audit log saw the upgrade.
    assert_eq!(own["Data"]["SpsAzureApp"]["ClientSecret"], Value::Null);
    let audit = gw.api("GET", "/api/audit?limit=10", None).json();
    assert!(audit.to_string().contains("config.upgrade"), "{audit}");

    // The file keeps the three keys; the original is the backup.
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains("Data"), "{text}");
    assert!(text.contains("server_name = \"up\""), "{text}");
    assert!(text.contains(SECRET), "{text}");
    assert_eq!(backups(dir.path()), [dir.path().join("csps.toml.bak")]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("csps.toml.bak")).expect("backup"),
        old_file()
    );

    // Running again changes nothing: same entries, same file, no new backup, no upgrade.
    let (own0, global0, text0) = (entry(&gw, "up"), entry(&gw, "*"), text.clone());
    let mark = gw.log_len();
    gw.restart(Duration::from_secs(30)).expect("restart");
    assert_eq!(upgraded_lines(&gw, mark), 0);
    assert_eq!(entry(&gw, "up"), own0);
    assert_eq!(entry(&gw, "*"), global0);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text0);
    assert_eq!(backups(dir.path()).len(), 1);

    // An admin changes a value; the old file put back later does not overwrite it (the entries
    // exist), and its backup does not replace the first one.
    let r = gw.api(
        "PUT",
        "/api/config/up/Data.System.MinRtpPort",
        Some(&json!(21500)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let own1 = entry(&gw, "up");
    gw.stop(Duration::from_secs(30)).expect("stop");
    std::fs::write(&path, old_file()).expect("put the old file back");
    let mark = gw.log_len();
    gw.start_again().expect("start again");
    assert_eq!(upgraded_lines(&gw, mark), 1);
    assert_eq!(
        entry(&gw, "up"),
        own1,
        "existing entries are not overwritten"
    );
    assert_eq!(
        entry(&gw, "up")["Data"]["System"]["MinRtpPort"],
        json!(21500)
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text0);
    let b = backups(dir.path());
    assert_eq!(b.len(), 2, "{b:?}");
    for p in &b {
        assert_eq!(std::fs::read_to_string(p).expect("backup"), old_file());
    }
}

#[test]
fn a_bad_old_value_stops_the_start_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("csps.toml");
    let bad = old_file().replace("Srtp = \"Required\"", "Srtp = \"Sometimes\"");
    std::fs::write(&path, &bad).expect("write");
    match start(&path) {
        Ok(_) => panic!("started with Srtp = \"Sometimes\""),
        Err(why) if why.contains("exited before it was ready") => {
            assert!(why.contains("Data.SipConfig.Srtp"), "{why}");
        }
        Err(why) => {
            skip(&why);
            return;
        }
    }
    assert_eq!(std::fs::read_to_string(&path).expect("read"), bad);
    assert!(backups(dir.path()).is_empty());
}
