//! A real DNS server for the tests: dnsmasq on a free loopback port, answering only the records a
//! test gives it (no upstream, no hosts file, no system configuration), killed on drop. Its log
//! (every query, with `--log-queries`) goes to a temporary file for failure messages.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Killed, free_port};

/// A running dnsmasq.
pub struct Dnsmasq {
    _child: Killed,
    /// Where it answers (UDP and TCP on 127.0.0.1).
    pub addr: SocketAddr,
    log: tempfile::NamedTempFile,
}

/// Where dnsmasq is: on the PATH, else Debian's `/usr/sbin` (not on a user's PATH).
fn binary() -> Option<PathBuf> {
    if crate::have_tool("dnsmasq") {
        return Some("dnsmasq".into());
    }
    let sbin = PathBuf::from("/usr/sbin/dnsmasq");
    sbin.is_file().then_some(sbin)
}

impl Dnsmasq {
    /// [`Dnsmasq::start`], or `None` after [`crate::skip`] saying why it could not.
    pub fn start_or_skip(records: &[String]) -> Option<Dnsmasq> {
        Dnsmasq::start(records).map_err(|e| crate::skip(&e)).ok()
    }

    /// Starts dnsmasq serving `records`, each a dnsmasq option such as
    /// `--srv-host=_sips._tcp.example.com,sip.example.com,5061,10,10` or
    /// `--host-record=sip.example.com,127.0.0.1`; `Err` names a missing prerequisite.
    pub fn start(records: &[String]) -> Result<Dnsmasq, String> {
        Dnsmasq::start_on(free_port(), records)
    }

    /// [`Dnsmasq::start`] on `port` (to replace a stopped one with other records).
    pub fn start_on(port: u16, records: &[String]) -> Result<Dnsmasq, String> {
        let bin = binary().ok_or("dnsmasq not installed (run e2e/setup: dnsmasq-base)")?;
        let log = tempfile::NamedTempFile::new().map_err(|e| format!("dnsmasq log: {e}"))?;
        let stderr = log.reopen().map_err(|e| format!("dnsmasq log: {e}"))?;
        let child = Command::new(&bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--log-queries",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut child = Killed(child);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(10);
        // It serves TCP as well as UDP: an accepted connection means it is listening.
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.0.try_wait() {
                let out = std::fs::read_to_string(log.path()).unwrap_or_default();
                return Err(format!("dnsmasq exited at start ({status}): {out}"));
            }
            if Instant::now() > deadline {
                return Err("dnsmasq did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Dnsmasq {
            _child: child,
            addr,
            log,
        })
    }

    /// What it logged so far (the queries it answered).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}
