//! Runs SIPp with a scenario and reads its outcome: exit code and the statistics CSV.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One SIPp run (`-m calls`, bounded by `-timeout`).
#[derive(Clone, Debug)]
pub struct Sipp {
    scenario: PathBuf,
    target: SocketAddr,
    local_ip: String,
    local_port: Option<u16>,
    bind_local: bool,
    tcp: bool,
    calls: u32,
    rate: Option<u32>,
    timeout: Duration,
    keys: Vec<(String, String)>,
    auth: Option<(String, String)>,
    auth_uri: Option<String>,
    extra: Vec<String>,
}

/// What a SIPp run produced.
#[derive(Clone, Debug)]
pub struct SippOutcome {
    /// SIPp's exit code (0: all calls succeeded, 1: some failed, 99: none processed, …).
    pub code: i32,
    /// Successful calls (from the statistics CSV).
    pub successful: u64,
    /// Failed calls (from the statistics CSV).
    pub failed: u64,
    /// The last row of the statistics CSV, by column name.
    pub stats: HashMap<String, String>,
    /// stdout and stderr, plus the error log, for failure messages.
    pub output: String,
}

impl SippOutcome {
    /// True when every call passed and SIPp exited 0.
    pub fn ok(&self) -> bool {
        self.code == 0 && self.failed == 0 && self.successful > 0
    }
}

impl Sipp {
    /// A run of `scenario` (a path, or a name under `e2e/sipp/`) against `target`.
    pub fn new(scenario: impl AsRef<Path>, target: SocketAddr) -> Self {
        let p = scenario.as_ref();
        let scenario = if p.is_absolute() || p.exists() {
            p.to_path_buf()
        } else {
            crate::scenario(&p.to_string_lossy())
        };
        Self {
            scenario,
            target,
            local_ip: "127.0.0.1".into(),
            local_port: None,
            bind_local: true,
            tcp: false,
            calls: 1,
            rate: None,
            timeout: Duration::from_secs(15),
            keys: Vec::new(),
            auth: None,
            auth_uri: None,
            extra: Vec::new(),
        }
    }

    /// The local address SIPp binds and puts in Via/Contact (`-i`, `-bind_local`).
    pub fn local_ip(mut self, ip: &str) -> Self {
        self.local_ip = ip.into();
        self
    }

    /// A fixed local port (`-p`); by default a free one is picked.
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }

    /// TCP with one connection (`-t t1`) instead of UDP.
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// How many calls (`-m`).
    pub fn calls(mut self, n: u32) -> Self {
        self.calls = n;
        self
    }

    /// Calls per second (`-r`).
    pub fn rate(mut self, r: u32) -> Self {
        self.rate = Some(r);
        self
    }

    /// The global bound (`-timeout`, with `-timeout_error`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// A `[name]` keyword for the scenario (`-key name value`).
    pub fn key(mut self, name: &str, value: impl ToString) -> Self {
        self.keys.push((name.into(), value.to_string()));
        self
    }

    /// Digest credentials (`-au`, `-ap`).
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// The digest `uri` (`-auth_uri`, without `sip:`); by default SIPp uses the target's
    /// `ip:port`, which it writes unbracketed (`sip:::1:5060`) for IPv6 targets.
    pub fn auth_uri(mut self, host: &str) -> Self {
        self.auth_uri = Some(host.into());
        self
    }

    /// `user@domain` (password `password`) calling `callee@domain` with `scenario`, answering the
    /// gateway's 407 challenge, media on a free port; bounded to 30 s.
    pub fn caller(
        scenario: impl AsRef<Path>,
        target: SocketAddr,
        (user, password): (&str, &str),
        callee: &str,
        domain: &str,
    ) -> Self {
        Sipp::new(scenario, target)
            .key("user", user)
            .key("domain", domain)
            .key("callee", callee)
            .auth(user, password)
            .auth_uri(&format!("{callee}@{domain}"))
            .arg("-mp")
            .arg(crate::free_port().to_string())
            .timeout(Duration::from_secs(30))
    }

    /// `user@domain` registered (password `password`) with `register.xml` from a free port, then
    /// the callee `scenario` on that port, echoing media on another free port; bounded to 30 s.
    pub fn callee(
        scenario: impl AsRef<Path>,
        target: SocketAddr,
        (user, password): (&str, &str),
        domain: &str,
    ) -> Result<Self, String> {
        let port = crate::free_port();
        let reg = Sipp::new("register.xml", target)
            .local_port(port)
            .key("user", user)
            .key("domain", domain)
            .key("expires", 300)
            .auth(user, password)
            .timeout(Duration::from_secs(10))
            .run();
        if !reg.ok() {
            return Err(format!("{user} did not register:\n{}", reg.output));
        }
        Ok(Sipp::new(scenario, target)
            .local_port(port)
            .key("user", user)
            .arg("-mp")
            .arg(crate::free_port().to_string())
            .arg("-rtp_echo")
            .timeout(Duration::from_secs(30)))
    }

    /// Without `-rtp_echo`: the phone sends no media (a [`Sipp::callee`] that stays silent).
    pub fn silent(mut self) -> Self {
        self.extra.retain(|a| a != "-rtp_echo");
        self
    }

    /// One more command-line argument (`-rtp_echo`, `-mp 7000`, …).
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra.push(a.into());
        self
    }

    /// The local port this run will use (picks one if none was set).
    pub fn port(&mut self) -> u16 {
        let ip = self.local_ip.clone();
        *self
            .local_port
            .get_or_insert_with(|| crate::free_port_on(&ip))
    }

    /// Runs SIPp to completion (bounded by the timeout plus a grace period).
    pub fn run(mut self) -> SippOutcome {
        let dir = tempfile::Builder::new()
            .prefix("sipp-")
            .tempdir()
            .expect("create a temp dir for SIPp's files");
        let stat = dir.path().join("stat.csv");
        let err = dir.path().join("errors.log");
        let port = self.port();
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf")
            .arg(&self.scenario)
            .arg(self.target.to_string())
            .args(["-i", &self.local_ip, "-p", &port.to_string()])
            .args(["-m", &self.calls.to_string()])
            .args(["-timeout", &format!("{}s", self.timeout.as_secs().max(1))])
            .args(["-timeout_error", "-nostdin", "-trace_stat", "-trace_err"])
            .arg("-stf")
            .arg(&stat)
            .arg("-error_file")
            .arg(&err)
            .current_dir(dir.path())
            .stdin(Stdio::null());
        if self.bind_local {
            cmd.arg("-bind_local");
        }
        if self.tcp {
            cmd.args(["-t", "t1"]);
        }
        if let Some(r) = self.rate {
            cmd.args(["-r", &r.to_string()]);
        }
        if let Some((u, p)) = &self.auth {
            cmd.args(["-au", u, "-ap", p]);
        }
        if let Some(uri) = &self.auth_uri {
            cmd.args(["-auth_uri", uri]);
        }
        for (k, v) in &self.keys {
            cmd.args(["-key", k, v]);
        }
        cmd.args(&self.extra);
        let started = Instant::now();
        let out = cmd.output().expect("run sipp (install it with e2e/setup)");
        let code = out.status.code().unwrap_or(-1);
        let mut output = format!(
            "sipp {:?} exited {code} after {:?}\n{}{}",
            self.scenario.file_name().unwrap_or_default(),
            started.elapsed(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(e) = std::fs::read_to_string(&err) {
            output.push_str("\n--- errors ---\n");
            output.push_str(&e);
        }
        let stats = std::fs::read_to_string(&stat)
            .map(|s| parse_stat_csv(&s))
            .unwrap_or_default();
        let num = |k: &str| {
            stats
                .get(k)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        SippOutcome {
            code,
            successful: num("SuccessfulCall(C)"),
            failed: num("FailedCall(C)"),
            stats,
            output,
        }
    }
}

/// The last row of SIPp's `;`-separated statistics file, by column name.
pub fn parse_stat_csv(text: &str) -> HashMap<String, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return HashMap::new();
    };
    let Some(last) = lines.next_back() else {
        return HashMap::new();
    };
    header
        .split(';')
        .zip(last.split(';'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}
