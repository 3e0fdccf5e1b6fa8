//! schemathesis (PyPI, installed by `e2e/setup` into its venv) fuzzes the real gateway from its
//! own `/api/openapi.json`, with the break-glass admin token from localhost: every documented
//! operation gets its examples, the coverage phase's boundary values and hypothesis-generated
//! valid and invalid requests, and every answer must be no 5xx and match the document (status
//! code, content type, headers, body schema). Bounded: a few examples per operation, one worker,
//! a fixed seed, killed after `LIMIT`. The endless event stream (`GET /api/events`) is left out
//! (tests/tests/events.rs covers it). Also checks that the Swagger UI is served from the binary
//! (vendored, no download) to local clients and refused to a proxied request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use csps_tests::{Gateway, http, skip};

/// The whole schemathesis run may take this long.
const LIMIT: Duration = Duration::from_secs(240);
/// Test cases per operation and phase (schemathesis `--max-examples`).
const MAX_EXAMPLES: &str = "30";
/// The checks every response must pass (schemathesis 4.x names). `ignored_auth` replays each
/// operation that declares the bearer scheme as required without the token and with a wrong one,
/// and wants a 401/403 (operations whose security also lists `{}`, the config APIs and the
/// document, are optional-auth and skipped by schemathesis).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
    response_headers_conformance,response_schema_conformance,negative_data_rejection,\
    use_after_free,ensure_resource_availability,ignored_auth";

/// The schemathesis executable: `$CSPS_SCHEMATHESIS`, the venv of `e2e/setup`, else the PATH.
fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CSPS_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("CSPS_VENV") {
        venvs.push(v.into());
    }
    venvs.push("/opt/csps-venv".into());
    if let Some(home) = std::env::var_os("HOME") {
        venvs.push(PathBuf::from(home).join(".cache/csps/venv"));
    }
    let in_venv = venvs
        .into_iter()
        .map(|v| v.join("bin/schemathesis"))
        .find(|p| p.is_file());
    in_venv.or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("schemathesis"))
            .find(|p| p.is_file())
    })
}

/// The status code of a raw `GET path` carrying the extra header lines.
fn raw_status(gw: &Gateway, path: &str, extra: &str) -> u16 {
    let mut s = TcpStream::connect(gw.http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{extra}Connection: close\r\n\r\n",
        gw.http
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn schemathesis_finds_no_server_error_or_schema_mismatch() {
    let Some(st) = schemathesis() else {
        skip("schemathesis not found (e2e/setup installs it into /opt/csps-venv)");
        return;
    };
    let Some(gw) = Gateway::start_or_skip() else {
        return;
    };

    // The Swagger UI comes out of the binary, to local clients only.
    let ui = http::request(gw.http, "GET", "/swagger/", None, None).expect("GET /swagger/");
    assert_eq!(ui.status, 200, "{}", ui.body);
    assert!(ui.body.contains("swagger-ui"), "{}", ui.body);
    assert_eq!(raw_status(&gw, "/swagger/", ""), 200);
    assert_eq!(
        raw_status(&gw, "/swagger/", "X-Forwarded-For: 198.51.100.1\r\n"),
        403
    );

    let report = tempfile::tempdir().expect("report dir");
    let url = format!("http://{}/api/openapi.json", gw.http);
    let mut child = Command::new(&st)
        .args(["run", &url])
        .args(["--header", &format!("Authorization: Bearer {}", gw.token)])
        .args(["--checks", CHECKS])
        // `GET /api/events` is an endless `text/event-stream`: schemathesis reads every body to
        // its end, so each case would only wait out `--request-timeout` and fail. Its access
        // rules and its events are tested by tests/tests/events.rs instead.
        .args(["--exclude-path", "/api/events"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--workers", "1", "--seed", "7", "--no-color"])
        .args(["--generation-database", "none", "--request-timeout", "20"])
        .arg("--report-dir")
        .arg(report.path())
        .current_dir(report.path())
        .env(
            "SCHEMATHESIS_HOOKS",
            concat!(env!("CARGO_MANIFEST_DIR"), "/data/schemathesis_hooks.py"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", st.display()));
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let readers = [
        std::thread::spawn(move || read_all(out.as_mut())),
        std::thread::spawn(move || read_all(err.as_mut())),
    ];
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let [out, err] = readers.map(|r| r.join().unwrap_or_default());
    eprintln!("{out}\n{err}");
    eprintln!("schemathesis took {:.0?}", start.elapsed());
    let status = status.unwrap_or_else(|| panic!("schemathesis ran longer than {LIMIT:?}"));
    assert!(
        status.success(),
        "schemathesis found failures ({status}); see its output above"
    );
    // A run that tested nothing would also exit 0.
    assert!(
        passed_cases(&out) > 0,
        "schemathesis tested nothing:\n{out}"
    );
    assert!(
        gw.log_lines().iter().all(|l| !l.contains("panicked")),
        "the gateway panicked"
    );
}

/// The `M` of schemathesis's summary line `N generated, M passed, …`.
fn passed_cases(out: &str) -> u64 {
    out.lines()
        .find(|l| l.contains(" generated, "))
        .and_then(|l| l.split(", ").find_map(|p| p.trim().strip_suffix(" passed")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn read_all(r: Option<&mut impl Read>) -> String {
    let mut s = String::new();
    if let Some(r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}
