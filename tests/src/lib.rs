//! Helpers for the integration tests: start `csps`, wait for its ports, talk SIP and HTTP.
//!
//! The gateway is started as a real process (`csps serve`) in a temporary data directory on free
//! loopback ports; [`Gateway`] kills it on drop, also when a test panics. HTTP goes through a tiny
//! blocking HTTP/1.1 client ([`http`]); SIPp runs through [`Sipp`]; hand-made SIP over std sockets
//! through [`raw`]; a FerretDB for the MongoDB store through [`ferret`]. A gateway can be stopped with SIGTERM and started again on the same data
//! directory and ports ([`Gateway::restart`]).
//!
//! Tests are skipped (with a message on stderr) when the `csps` binary or the peer tool is not
//! available, unless `CSPS_E2E_REQUIRED=1` is set, which turns a skip into a failure (CI sets it).

#![forbid(unsafe_code)]

pub mod audio;
pub mod baresip;
pub mod console;
pub mod dnsmasq;
pub mod emulator;
pub mod ferret;
pub mod http;
pub mod linphone;
pub mod netns;
pub mod raw;
pub mod sipp;
pub mod sse;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use sipp::{Sipp, SippOutcome};

/// Where `e2e/` lives, for scenario files and configs.
pub fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e")
}

/// The path of a SIPp scenario under `e2e/sipp/`.
pub fn scenario(name: &str) -> PathBuf {
    e2e_dir().join("sipp").join(name)
}

/// True when a missing prerequisite must fail the test instead of skipping it.
pub fn e2e_required() -> bool {
    std::env::var("CSPS_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

/// Reports a missing prerequisite: panics under `CSPS_E2E_REQUIRED=1`, else prints and returns.
pub fn skip(why: &str) {
    if e2e_required() {
        panic!("prerequisite missing (CSPS_E2E_REQUIRED=1): {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Finds the `csps` binary: `$CSPS_BIN`, else `target/<profile>/csps` above the test executable.
pub fn find_csps_bin() -> Option<PathBuf> {
    find_workspace_bin("csps", "CSPS_BIN")
}

/// Finds a binary of this workspace: `$<env>`, else `target/<profile>/<name>` above the test
/// executable.
pub fn find_workspace_bin(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    // A test executable lives in target/<profile>/deps/; the binary in target/<profile>/.
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The `csps` binary if it exists and implements `serve` with the contract's flags.
pub fn usable_csps_bin() -> Result<PathBuf, String> {
    let bin = find_csps_bin().ok_or_else(|| {
        "csps binary not found: run `cargo build -p csps` or set CSPS_BIN".to_string()
    })?;
    let out = Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !help.contains("--sip-listen") {
        return Err(format!(
            "{} does not implement `serve --sip-listen` yet",
            bin.display()
        ));
    }
    Ok(bin)
}

/// True when `tool` is on the PATH.
pub fn have_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// The one port of Chromium's restricted list in 10000–19999 (`net/base/port_util.cc`).
const BROWSER_UNSAFE_PORT: u16 = 10_080;

/// A free TCP port on 127.0.0.1 whose UDP twin is also free (released before returning).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free for both TCP and UDP on `ip`, and its next three UDP ports too (SIPp's `-mp P`
/// binds P..P+3); released before returning.
///
/// Ports come from 10000–19999, handed out by a process-wide counter in strides of four: below
/// the gateway's RTP pool (20000–30000) and the kernel's ephemeral range (32768+), so a port
/// handed to one test is never the one the kernel just gave another test's client socket, nor
/// one a gateway took for media. The start depends on the process id, so two test binaries
/// running side by side begin apart. Ports browsers refuse to load pages from (Chromium's and
/// Firefox's restricted list holds 10080 in this range: `ERR_UNSAFE_PORT`) are never handed out,
/// since any of them may become a gateway's HTTP port that a browser test opens.
pub fn free_port_on(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = (std::process::id() % (SPAN / 4)) * 4;
    for _ in 0..SPAN / 4 {
        let n = NEXT.fetch_add(4, Ordering::Relaxed);
        let port = (FIRST + (seed + n) % SPAN) as u16;
        if (port..port + 4).contains(&BROWSER_UNSAFE_PORT) {
            continue;
        }
        let tcp = TcpListener::bind((ip, port));
        let udp: Vec<_> = (0..4).map(|k| UdpSocket::bind((ip, port + k))).collect();
        if tcp.is_ok() && udp.iter().all(Result::is_ok) {
            return port;
        }
    }
    panic!(
        "no port free for both TCP and UDP on {ip} in {FIRST}..{}",
        FIRST + SPAN
    );
}

/// A gateway with default options for a test that needs `tool` (SIPp, baresip…); `None` after
/// [`skip`] when the tool or the binary is missing.
pub fn gateway_for(tool: &str) -> Option<Gateway> {
    if !have_tool(tool) {
        skip(&format!("{tool} not installed (run e2e/setup)"));
        return None;
    }
    match Gateway::start() {
        Ok(gw) => Some(gw),
        Err(why) => {
            skip(&why);
            None
        }
    }
}

/// How to start a gateway.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// The binary; `None` means [`usable_csps_bin`].
    pub bin: Option<PathBuf>,
    /// `--server-name`.
    pub server_name: Option<String>,
    /// Add a TCP listener on the same port as UDP.
    pub tcp: bool,
    /// Extra arguments after `serve`.
    pub extra_args: Vec<String>,
    /// How long to wait for `/healthz`.
    pub ready_timeout: Duration,
    /// Keep the gateway's stderr in the test output (else only its tail on failure).
    pub echo_log: bool,
    /// Address the HTTP listener binds (default 127.0.0.1); with `0.0.0.0` the tests still talk
    /// to it on 127.0.0.1, and a network namespace the test made can reach it on its veth.
    pub http_ip: std::net::IpAddr,
    /// Environment variables set for the process (beside the test's own).
    pub env: Vec<(String, String)>,
}

impl GatewayOptions {
    /// Adds a SIP listener (`tls:127.0.0.1:5061`, `udp:[::1]:5060`) to the default UDP (and TCP)
    /// one on 127.0.0.1.
    pub fn listen(mut self, spec: impl Into<String>) -> Self {
        self.extra_args.push("--sip-listen".into());
        self.extra_args.push(spec.into());
        self
    }

    /// Adds one more argument after `serve`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            bin: None,
            server_name: Some("test".into()),
            tcp: true,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            echo_log: std::env::var_os("CSPS_TEST_LOG").is_some(),
            http_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            env: Vec::new(),
        }
    }
}

/// A running `csps serve` on loopback ports, killed on drop.
pub struct Gateway {
    child: Child,
    /// The temporary data directory (removed on drop).
    pub data_dir: tempfile::TempDir,
    /// The SIP port (UDP, and TCP when enabled), on 127.0.0.1.
    pub sip_port: u16,
    /// The HTTP address.
    pub http: SocketAddr,
    /// The bearer token from `<data-dir>/admin-token`.
    pub token: String,
    /// The server name passed on the command line, if any.
    pub server_name: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
    bin: PathBuf,
    args: Vec<std::ffi::OsString>,
    opts: GatewayOptions,
    /// The threads copying the current process's output into `log`.
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Removes ANSI escape sequences (colours of the text log) from a line.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters and intermediates up to a final byte in @..~.
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Spawns `bin args…` with piped output copied (without colours) into `log` by the returned
/// threads, which end when the process closes its output.
fn spawn_logged(
    bin: &Path,
    args: &[std::ffi::OsString],
    env: &[(String, String)],
    log: &Arc<Mutex<Vec<String>>>,
    echo: bool,
) -> Result<(Child, Vec<std::thread::JoinHandle<()>>), String> {
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let readers = keep_output(&mut child, log, echo.then_some("[csps]"));
    Ok((child, readers))
}

/// Moves every line `child` prints (stdout and stderr, colours removed) into `log`, from one
/// thread per pipe; with `echo`, also to stderr after that prefix.
pub(crate) fn keep_output(
    child: &mut Child,
    log: &Arc<Mutex<Vec<String>>>,
    echo: Option<&'static str>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = Arc::clone(log);
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if let Some(prefix) = echo {
                    eprintln!("{prefix} {line}");
                }
                if let Ok(mut l) = log.lock() {
                    l.push(line);
                }
            }
        }));
    }
    readers
}

impl Gateway {
    /// [`Gateway::start`], or `None` after [`skip`] saying why it could not.
    pub fn start_or_skip() -> Option<Gateway> {
        Gateway::start().map_err(|e| skip(&e)).ok()
    }

    /// Starts a gateway with the default options; `Err` names a missing prerequisite.
    pub fn start() -> Result<Gateway, String> {
        Self::start_with(GatewayOptions::default())
    }

    /// Starts a gateway, waits for `/healthz` and reads the admin token.
    pub fn start_with(opts: GatewayOptions) -> Result<Gateway, String> {
        let bin = match opts.bin.clone() {
            Some(b) => b,
            None => usable_csps_bin()?,
        };
        let data_dir = tempfile::Builder::new()
            .prefix("csps-test-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let sip_port = free_port();
        let http_port = free_port();
        let http_port = if opts.http_ip.is_loopback() || opts.http_ip.is_unspecified() {
            http_port
        } else {
            free_port_on(&opts.http_ip.to_string())
        };
        let bind = SocketAddr::new(opts.http_ip, http_port);
        let http: SocketAddr = if opts.http_ip.is_unspecified() {
            ([127, 0, 0, 1], http_port).into()
        } else {
            bind
        };
        let mut args: Vec<std::ffi::OsString> = vec![
            "serve".into(),
            "--data-dir".into(),
            data_dir.path().into(),
            "--sip-listen".into(),
            format!("udp:127.0.0.1:{sip_port}").into(),
            "--http-listen".into(),
            bind.to_string().into(),
        ];
        if opts.tcp {
            args.push("--sip-listen".into());
            args.push(format!("tcp:127.0.0.1:{sip_port}").into());
        }
        if let Some(name) = &opts.server_name {
            args.push("--server-name".into());
            args.push(name.into());
        }
        args.extend(opts.extra_args.iter().map(Into::into));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, readers) = spawn_logged(&bin, &args, &opts.env, &log, opts.echo_log)?;
        let mut gw = Gateway {
            child,
            data_dir,
            sip_port,
            http,
            token: String::new(),
            server_name: opts.server_name.clone(),
            log,
            bin,
            args,
            opts: opts.clone(),
            readers,
        };
        gw.wait_ready(opts.ready_timeout)?;
        Ok(gw)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let token_path = self.data_dir.path().join("admin-token");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "csps exited before it was ready ({status}); log tail:\n{}",
                    self.log_tail(30)
                ));
            }
            let healthy = http::request(self.http, "GET", "/healthz", None, None)
                .is_ok_and(|r| r.status == 200);
            let token = std::fs::read_to_string(&token_path).unwrap_or_default();
            if healthy && !token.trim().is_empty() {
                self.token = token.trim().to_string();
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "csps not ready within {timeout:?} (healthz={healthy}); log tail:\n{}",
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id, for /proc measurements.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) to the process with `kill -s`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("run kill -s {sig}: {e}"));
        assert!(status.success(), "kill -s {sig} {} failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit; `None` while it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.settle_log();
                    return Some(status);
                }
                Ok(None) => {}
                Err(e) => panic!("waiting for csps: {e}"),
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// After the process exited: lets the output threads copy its last lines (bounded, 2 s).
    fn settle_log(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    /// Stops the process with SIGTERM and waits (bounded by `timeout`) for it to drain and exit;
    /// `Err` (after killing it) when it did not exit in time.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.settle_log();
            return Ok(status);
        }
        self.signal("TERM");
        match self.wait_exit(timeout) {
            Some(status) => Ok(status),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(format!(
                    "csps did not exit within {timeout:?} of SIGTERM; log tail:\n{}",
                    self.log_tail(30)
                ))
            }
        }
    }

    /// Starts the stopped process again with the same data directory, ports and flags, and waits
    /// until it is ready. Its log is appended to the same buffer (see [`Gateway::log_len`]).
    pub fn start_again(&mut self) -> Result<(), String> {
        if let Ok(None) = self.child.try_wait() {
            return Err("csps is still running; stop it first".into());
        }
        self.settle_log();
        let (child, readers) = spawn_logged(
            &self.bin,
            &self.args,
            &self.opts.env,
            &self.log,
            self.opts.echo_log,
        )?;
        self.child = child;
        self.readers = readers;
        self.wait_ready(self.opts.ready_timeout)
    }

    /// Stops the process with SIGTERM (bounded by `stop_timeout`) and starts it again on the same
    /// data directory and ports; returns how the first process exited.
    pub fn restart(&mut self, stop_timeout: Duration) -> Result<ExitStatus, String> {
        let status = self.stop(stop_timeout)?;
        self.start_again()?;
        Ok(status)
    }

    /// Every line logged so far (stdout and stderr, colours removed), over all starts.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How many lines were logged so far (a mark for [`Gateway::log_since`]).
    pub fn log_len(&self) -> usize {
        self.log.lock().map(|l| l.len()).unwrap_or_default()
    }

    /// The lines logged after `mark` (from [`Gateway::log_len`]).
    pub fn log_since(&self, mark: usize) -> Vec<String> {
        let log = self.log_lines();
        log.get(mark..).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// `GET /metrics` (no token); panics unless 200.
    pub fn metrics_text(&self) -> String {
        let r = http::request(self.http, "GET", "/metrics", None, None)
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
        r.body
    }

    /// The sum of the samples of metric `name` (every label set) in `GET /metrics`, `None` when
    /// no sample has that name. `name` is the full sample name (`csps_auth_failures_total`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_sum(&self.metrics_text(), name, &[])
    }

    /// The one running call that is a conference room with `n` legs (`GET /api/calls`), if
    /// there is one.
    pub fn room_with(&self, n: usize) -> Option<serde_json::Value> {
        let calls = self.api("GET", "/api/calls", None).json();
        calls.as_array()?.iter().find_map(|c| {
            (c["conference"].is_string() && c["legs"].as_array().is_some_and(|l| l.len() == n))
                .then(|| c.clone())
        })
    }

    /// An administrator hangs up call `id` (`DELETE /api/calls/{id}`: every phone in it gets a
    /// BYE, which also closes baresip's recordings), and the list of calls is empty within 10 s;
    /// then half a second for the phones to write their recordings.
    pub fn admin_hang_up(&self, id: u64) {
        let del = self.api("DELETE", &format!("/api/calls/{id}"), None);
        assert_eq!(del.status, 204, "{}", del.body);
        assert!(
            self.no_calls_within(Duration::from_secs(10)),
            "call {id} did not end"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Waits up to 15 s for a call to be answered, lets it run `length`, takes `GET /api/calls`,
    /// and hangs the first call up as an administrator ([`Gateway::admin_hang_up`]); the list.
    pub fn talk_then_hang_up(&self, length: Duration) -> serde_json::Value {
        let answered = wait_until(Duration::from_secs(15), || {
            self.api("GET", "/api/calls", None)
                .json()
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c["state"] == "answered"))
        });
        assert!(
            answered,
            "no answered call; gateway log:\n{}",
            self.log_tail(40)
        );
        std::thread::sleep(length);
        let calls = self.api("GET", "/api/calls", None).json();
        let id = calls[0]["id"].as_u64().expect("call id");
        self.admin_hang_up(id);
        calls
    }

    /// The text of the first message of call `id` on `leg` (`a`, `b`) with this `method`,
    /// `direction` (`in`, `out`) and response `status` (`None`: a request), from the call's
    /// ladder (`GET /api/calls/{id}/messages`); panics when there is none.
    pub fn call_message(
        &self,
        id: u64,
        leg: &str,
        (method, direction, status): (&str, &str, Option<u16>),
    ) -> String {
        let messages = self
            .api("GET", &format!("/api/calls/{id}/messages"), None)
            .json();
        messages
            .as_array()
            .and_then(|m| {
                m.iter().find(|m| {
                    m["leg"] == leg
                        && m["method"] == method
                        && m["direction"] == direction
                        && m["status"].as_u64() == status.map(u64::from)
                })
            })
            .and_then(|m| m["text"].as_str())
            .unwrap_or_else(|| {
                panic!("no {direction} {method} on leg {leg} of call {id}: {messages}")
            })
            .to_owned()
    }

    /// The record of the one ended call, once `GET /api/calls/history` lists it (within 10 s).
    pub fn ended_call(&self) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let listed = wait_until(Duration::from_secs(10), || {
            last = self.api("GET", "/api/calls/history", None).json();
            last.as_array().is_some_and(|a| a.len() == 1)
        });
        assert!(listed, "no ended call in the history: {last}");
        last[0].clone()
    }

    /// Waits up to 10 s for the first call of `GET /api/calls` to be answered with `party`
    /// (`sip:user@domain`) as its callee's leg (after a pickup or takeover); the last list read,
    /// `Ok` when it came to that.
    pub fn answered_by(&self, party: &str) -> Result<serde_json::Value, serde_json::Value> {
        let mut calls = serde_json::Value::Null;
        let answered = wait_until(Duration::from_secs(10), || {
            calls = self.api("GET", "/api/calls", None).json();
            calls[0]["state"] == "answered" && calls[0]["legs"][1]["party"] == party
        });
        if answered { Ok(calls) } else { Err(calls) }
    }

    /// True when `GET /api/calls` is empty within `timeout`.
    pub fn no_calls_within(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.api("GET", "/api/calls", None)
                .json()
                .as_array()
                .is_some_and(|a| a.is_empty())
        })
    }

    /// The SIP address on 127.0.0.1.
    pub fn sip_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.sip_port).into()
    }

    /// The last `n` lines the gateway logged.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        log[log.len().saturating_sub(n)..].join("\n")
    }

    /// Sets the configuration leaf `Data.<leaf>` on every server (`*`) through the API, and
    /// panics unless the gateway took it (200).
    pub fn set_global(&self, leaf: &str, value: serde_json::Value) {
        let path = format!("/api/config/*/Data.{leaf}");
        let r = self.api("PUT", &path, Some(&value));
        assert_eq!(r.status, 200, "PUT {path}: {}", r.body);
    }

    /// A request with the admin token; the body is JSON.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> http::Response {
        let body = body.map(|b| b.to_string());
        http::request(self.http, method, path, Some(&self.token), body.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A request with the admin token and a binary body of `content_type` (a WASM component).
    pub fn api_bytes(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> http::Response {
        http::request_bytes(
            self.http,
            method,
            path,
            Some(&self.token),
            content_type,
            body,
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Creates a user in the default domain; panics unless the answer is 201.
    pub fn create_user(&self, username: &str, password: &str) -> serde_json::Value {
        let r = self.api(
            "POST",
            "/api/users",
            Some(&serde_json::json!({"username": username, "password": password})),
        );
        assert_eq!(r.status, 201, "POST /api/users {username}: {}", r.body);
        r.json()
    }

    /// Creates the account `account` (the JSON of `POST /api/users`) and sets its `activated`
    /// flag as an admin does; its id. Panics unless both answers are the expected ones.
    pub fn create_account(&self, account: serde_json::Value, activated: bool) -> String {
        let r = self.api("POST", "/api/users", Some(&account));
        assert_eq!(r.status, 201, "POST /api/users {account}: {}", r.body);
        let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
        let r = self.api(
            "PATCH",
            &format!("/api/users/{id}"),
            Some(&serde_json::json!({ "activated": activated })),
        );
        assert_eq!(r.status, 200, "PATCH activated: {}", r.body);
        assert_eq!(r.json()["activated"], activated, "{}", r.body);
        id
    }

    /// Adds a trusted range for this server (`--server-name`, else `*`); panics unless 201.
    pub fn trust(&self, cidr: &str) {
        let server = self.server_name.as_deref().unwrap_or("*");
        let r = self.api(
            "POST",
            &format!("/api/config/{server}/trusted-ips"),
            Some(&serde_json::json!({ "cidr": cidr })),
        );
        assert_eq!(r.status, 201, "POST trusted-ips {cidr}: {}", r.body);
    }

    /// `GET /api/registrations`, optionally for one AoR.
    pub fn registrations(&self, aor: Option<&str>) -> Vec<serde_json::Value> {
        let path = match aor {
            Some(a) => format!("/api/registrations?aor={}", http::encode_query(a)),
            None => "/api/registrations".to_string(),
        };
        let r = self.api("GET", &path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        match r.json() {
            serde_json::Value::Array(a) => a,
            other => panic!("GET {path}: not a list: {other}"),
        }
    }

    /// Registrations whose `aor` contains `user@` (tolerates `sip:` prefixes and parameters).
    pub fn registrations_of(&self, user: &str) -> Vec<serde_json::Value> {
        let needle = format!("{user}@");
        self.registrations(None)
            .into_iter()
            .filter(|r| r["aor"].as_str().is_some_and(|a| a.contains(&needle)))
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("csps log tail:\n{}", self.log_tail(60));
        }
    }
}

/// A child process killed (and reaped) on drop, also when a test panics.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sums the samples named `name` in a Prometheus/OpenMetrics text exposition whose labels include
/// every `(label, value)` of `labels`; `None` when no such sample exists.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rfind('}') {
            Some(end) => (&line[..=end], line[end + 1..].trim()),
            None => match line.split_once(char::is_whitespace) {
                Some((s, v)) => (s, v.trim()),
                None => continue,
            },
        };
        let (sample, label_text) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if sample != name {
            continue;
        }
        let has = |k: &str, v: &str| {
            label_text
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .any(|(lk, lv)| lk.trim() == k && lv.trim().trim_matches('"') == v)
        };
        if !labels.iter().all(|(k, v)| has(k, v)) {
            continue;
        }
        // A timestamp may follow the value.
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *sum.get_or_insert(0.0) += v;
    }
    sum
}
