//! A network namespace joined to this host by a veth pair, so a test can send requests from a
//! non-loopback address (`10.233.N.2`) to a server on the host side (`10.233.N.1`). Needs root
//! and `ip` (iproute2); requests go through `curl` run inside the namespace. Names carry the
//! process id and a counter, so parallel tests and runs do not clash; [`NetNs`] deletes the
//! namespace (and with it the veth pair) on drop, also when the test panics.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::http::Response;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace with one veth link to the host.
pub struct NetNs {
    /// The namespace's name.
    pub name: String,
    host_link: String,
    /// The host side's address (servers bind or listen here).
    pub host_ip: Ipv4Addr,
    /// The namespace side's address (requests come from here).
    pub ns_ip: Ipv4Addr,
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates the namespace and the veth pair in a free `10.233.N.0/30`; `Err` says why not
    /// (not root, no `ip`, no `curl`).
    pub fn create() -> Result<NetNs, String> {
        for tool in ["ip", "curl"] {
            if !crate::have_tool(tool) {
                return Err(format!("`{tool}` is not installed (e2e/setup installs it)"));
            }
        }
        let unique = std::process::id()
            .wrapping_mul(64)
            .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
        let name = format!("csps-t{unique:x}");
        let used = run(&["ip", "-4", "-o", "addr", "show"]).unwrap_or_default();
        let subnet = (0..250u32)
            .map(|i| (unique.wrapping_add(i) % 250 + 1) as u8)
            .find(|n| !used.contains(&format!("10.233.{n}.")))
            .ok_or("no free 10.233.N.0/30 subnet")?;
        let mut ns = NetNs {
            name: name.clone(),
            host_link: format!("cva{unique:x}"),
            host_ip: Ipv4Addr::new(10, 233, subnet, 1),
            ns_ip: Ipv4Addr::new(10, 233, subnet, 2),
        };
        run(&["ip", "netns", "add", &name])?;
        // From here on, drop cleans up.
        let peer = format!("cvb{unique:x}");
        let host_link = ns.host_link.clone();
        let host_cidr = format!("{}/30", ns.host_ip);
        let ns_cidr = format!("{}/30", ns.ns_ip);
        let steps: [&[&str]; 7] = [
            &[
                "ip", "link", "add", &host_link, "type", "veth", "peer", "name", &peer,
            ],
            &["ip", "link", "set", &peer, "netns", &name],
            &["ip", "addr", "add", &host_cidr, "dev", &host_link],
            &["ip", "link", "set", &host_link, "up"],
            &[
                "ip", "netns", "exec", &name, "ip", "addr", "add", &ns_cidr, "dev", &peer,
            ],
            &[
                "ip", "netns", "exec", &name, "ip", "link", "set", &peer, "up",
            ],
            &[
                "ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up",
            ],
        ];
        for step in steps {
            if let Err(e) = run(step) {
                ns.cleanup();
                return Err(e);
            }
        }
        Ok(ns)
    }

    fn cleanup(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        // Normally gone with the namespace (its peer was inside); a half-made pair is not.
        let _ = run(&["ip", "link", "del", &self.host_link]);
    }

    /// One HTTP/1.1 request from inside the namespace with `curl`, to `addr` (on the host side),
    /// with a JSON `body` when given.
    pub fn curl(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Response, String> {
        let url = format!("http://{addr}{path}");
        let mut args: Vec<String> = [
            "ip",
            "netns",
            "exec",
            &self.name,
            "curl",
            "-sS",
            "--http1.1",
            "--noproxy",
            "*",
            "-m",
            "10",
            "-D",
            "-",
            "-X",
            method,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(t) = token {
            args.push("-H".into());
            args.push(format!("Authorization: Bearer {t}"));
        }
        for (n, v) in headers {
            args.push("-H".into());
            args.push(format!("{n}: {v}"));
        }
        if let Some(b) = body {
            args.push("-H".into());
            args.push("Content-Type: application/json".into());
            args.push("--data-raw".into());
            args.push(b.to_string());
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        parse_dump(&run(&refs)?)
    }
}

/// Parses `curl -D -` output: status line, headers, blank line, body.
fn parse_dump(out: &str) -> Result<Response, String> {
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in curl output: {out:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in curl output: {out:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.cleanup();
    }
}
