//! A FerretDB v1 process (SQLite handler) on free loopback ports in its own temporary directory,
//! for tests and benchmarks that need a MongoDB-protocol server; killed on drop.
//!
//! The binary is found through `FERRETDB_BIN`, then `PATH`, then `$HOME/go/bin` and
//! `$HOME/.local/bin` (`e2e/setup` installs it into `/usr/local/bin`). When it is missing
//! [`Ferret::start`] reports it through [`crate::skip`] (a failure under `CSPS_E2E_REQUIRED=1`).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long FerretDB may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The FerretDB binary: `$FERRETDB_BIN`, then `PATH`, then `$HOME/go/bin`, `$HOME/.local/bin`.
pub fn ferretdb_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRETDB_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        dirs.push(home.join("go").join("bin"));
        dirs.push(home.join(".local").join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("ferretdb"))
        .find(|p| p.is_file())
}

/// A FerretDB process on its own directory and ports; killed on drop.
pub struct Ferret {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Ferret {
    /// Starts FerretDB, or returns `None` after [`crate::skip`] when the binary is missing.
    pub fn start() -> Option<Ferret> {
        let Some(bin) = ferretdb_bin() else {
            crate::skip("ferretdb not found (FERRETDB_BIN, PATH, ~/go/bin): run e2e/setup");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("csps-ferretdb-")
            .tempdir()
            .expect("tempdir");
        let mut f = Ferret {
            bin,
            dir,
            port: 0,
            child: None,
        };
        f.spawn();
        Some(f)
    }

    /// (Re)starts the process on the same data directory, on fresh ports.
    pub fn spawn(&mut self) {
        self.port = crate::free_port();
        self.spawn_on_port();
    }

    /// Starts the stopped process again on the same data directory and the same port, so
    /// clients connected before reach it again (an outage of the database, not a move).
    pub fn resume(&mut self) {
        self.spawn_on_port();
    }

    fn spawn_on_port(&mut self) {
        let debug = crate::free_port();
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("ferretdb.log")).expect("log file");
        let child = Command::new(&self.bin)
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", d.display()))
            .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
            .arg(format!("--debug-addr=127.0.0.1:{debug}"))
            .arg(format!("--state-dir={}", d.display()))
            .arg("--telemetry=disable")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "ferretdb exited ({status}) before listening:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "ferretdb did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last 30 lines FerretDB logged.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("ferretdb.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kills the process (the data directory stays; [`Ferret::spawn`] starts it again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `mongodb://127.0.0.1:<port>/` (no database: the client's default applies).
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    /// The data directory (SQLite files, the log).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Ferret {
    fn drop(&mut self) {
        self.stop();
    }
}
