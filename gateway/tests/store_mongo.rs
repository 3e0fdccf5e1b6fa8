//! The store suite on the MongoDB backend, against FerretDB v1 (SQLite handler) started by each
//! test on free loopback ports in a temporary directory, plus what only a shared database shows:
//! a binding that moves between servers, the TTL fallback purge, durability across a restart of
//! the database.
//!
//! FerretDB is found through `FERRETDB_BIN`, then `PATH`, then `$HOME/go/bin` and
//! `$HOME/.local/bin` (`e2e/setup` installs it). When it is missing the tests print SKIPPED and
//! pass, unless `CSPS_E2E_REQUIRED=1` (CI), where they fail.

mod store_suite;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use csps::store::mongo::MongoStore;
use csps::store::{RegistrationFilter, Store};

/// How long FerretDB may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn e2e_required() -> bool {
    std::env::var("CSPS_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

/// Reports a missing prerequisite: panics under `CSPS_E2E_REQUIRED=1`, else prints and returns.
fn skip(why: &str) {
    if e2e_required() {
        panic!("prerequisite missing (CSPS_E2E_REQUIRED=1): {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// The FerretDB binary: `$FERRETDB_BIN`, then `PATH`, then `$HOME/go/bin`, `$HOME/.local/bin`.
fn ferretdb_bin() -> Option<PathBuf> {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A FerretDB process on its own directory and ports; killed on drop.
struct Ferret {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Ferret {
    /// Starts FerretDB, or returns `None` after [`skip`] when the binary is missing.
    fn start() -> Option<Ferret> {
        let Some(bin) = ferretdb_bin() else {
            skip("ferretdb not found (FERRETDB_BIN, PATH, ~/go/bin): run e2e/setup");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
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
    fn spawn(&mut self) {
        self.port = free_port();
        let debug = free_port();
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

    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("ferretdb.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    async fn store(&self, db: &str) -> MongoStore {
        MongoStore::connect(&self.uri(), Some(db))
            .await
            .unwrap_or_else(|e| panic!("connect to FerretDB: {e}\n{}", self.log_tail()))
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Ferret {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn users() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_users(&f.store("users").await).await;
}

#[tokio::test]
async fn registrations() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_registrations(&f.store("registrations").await).await;
}

#[tokio::test]
async fn config() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_config(&f.store("config").await).await;
}

#[tokio::test]
async fn audit() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_audit(&f.store("audit").await).await;
}

#[tokio::test]
async fn suites_share_one_server_on_separate_databases() {
    let Some(f) = Ferret::start() else { return };
    let (a, b) = (f.store("shared_a").await, f.store("shared_b").await);
    store_suite::suite_config(&a).await;
    // Another database on the same server sees none of it.
    store_suite::suite_config(&b).await;
    assert_eq!(a.database_name(), "shared_a");
}

#[tokio::test]
async fn data_survives_reconnect_and_database_restart() {
    let Some(mut f) = Ferret::start() else { return };
    let seeded = {
        let store = f.store("durable").await;
        store_suite::seed(&store).await
    };
    // A new client on the same server.
    store_suite::check_seeded(&f.store("durable").await, &seeded).await;
    // The database process restarted on the same files.
    f.stop();
    f.spawn();
    assert!(f.data_dir().read_dir().expect("data dir").next().is_some());
    store_suite::check_seeded(&f.store("durable").await, &seeded).await;
}

#[tokio::test]
async fn a_binding_moving_to_another_server_stays_one_document() {
    let Some(f) = Ferret::start() else { return };
    let (on_a, on_b) = (f.store("moving").await, f.store("moving").await);
    let now = Utc::now();
    let later = now + chrono::Duration::seconds(600);
    let aor = "sip:alice@example.com";
    let r = store_suite::registration(aor, "instance:<urn:uuid:7>;reg-id=1", "a", later);
    on_a.write_registrations(std::slice::from_ref(&r), &[])
        .await
        .expect("register on a");
    let mut moved = r.clone();
    moved.server = "b".to_owned();
    moved.cseq += 1;
    on_b.write_registrations(std::slice::from_ref(&moved), &[])
        .await
        .expect("register on b");

    let all = on_a
        .list_registrations(&RegistrationFilter::default(), now)
        .await
        .expect("list");
    assert_eq!(all, vec![moved.clone()], "one document, hosted by b");
    let only = |s: &str| RegistrationFilter {
        server: Some(s.to_owned()),
        ..Default::default()
    };
    assert!(
        on_a.list_registrations(&only("a"), now)
            .await
            .expect("list")
            .is_empty(),
        "a no longer loads it"
    );
    assert_eq!(
        on_a.list_registrations(&only("b"), now)
            .await
            .expect("list"),
        vec![moved]
    );
}

#[tokio::test]
async fn expired_bindings_are_filtered_and_purged_after_a_day() {
    let Some(f) = Ferret::start() else { return };
    let store = f.store("expiry").await;
    let now = Utc::now();
    let h = chrono::Duration::hours;
    let aor = "sip:bob@example.com";
    let live = store_suite::registration(aor, "contact:live", "a", now + h(1));
    let lapsed = store_suite::registration(aor, "contact:lapsed", "a", now - h(1));
    let old = store_suite::registration(aor, "contact:old", "a", now - h(25));
    let older = store_suite::registration(aor, "contact:older", "b", now - h(24 * 30));
    store
        .write_registrations(&[live.clone(), lapsed.clone(), old, older], &[])
        .await
        .expect("write");
    assert_eq!(
        store
            .list_registrations(&RegistrationFilter::default(), now)
            .await
            .expect("list"),
        vec![live.clone()],
        "lapsed bindings are never listed"
    );

    // FerretDB v1 has no TTL index: the fallback purge is what removes documents.
    assert!(!store.ttl_index(), "FerretDB v1 does not expire documents");
    let purged = store
        .purge_expired(now - chrono::Duration::days(1))
        .await
        .expect("purge");
    assert_eq!(purged, 2, "only documents expired for more than a day");
    // What remains (looking from the past, when all were live): the live one and the one that
    // lapsed an hour ago.
    let mut left: Vec<String> = store
        .list_registrations(&RegistrationFilter::default(), now - h(24 * 365))
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.binding)
        .collect();
    left.sort();
    assert_eq!(left, ["contact:lapsed", "contact:live"]);
}

#[tokio::test]
async fn the_purge_lease_has_one_holder_until_it_runs_out() {
    let Some(f) = Ferret::start() else { return };
    let (a, b) = (f.store("lease").await, f.store("lease").await);
    let now = Utc::now();
    let hold = chrono::Duration::hours(2);
    assert!(a.try_lease("purge", "a", now, hold).await.expect("a takes"));
    assert!(!b.try_lease("purge", "b", now, hold).await.expect("b waits"));
    assert!(
        a.try_lease("purge", "a", now, hold)
            .await
            .expect("a renews")
    );
    let after = now + chrono::Duration::hours(3);
    assert!(
        b.try_lease("purge", "b", after, hold)
            .await
            .expect("b takes over")
    );
    assert!(
        !a.try_lease("purge", "a", after, hold)
            .await
            .expect("a lost it")
    );
}

#[tokio::test]
async fn connect_fails_clearly_and_within_bounds() {
    // Nothing listens on this port: server selection gives up within its timeout.
    let port = free_port();
    let t0 = Instant::now();
    let uri = format!("mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=1500");
    match MongoStore::connect(&uri, None).await {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("cannot reach MongoDB"), "{msg}");
            assert!(msg.contains(&format!("127.0.0.1:{port}/csps")), "{msg}");
        }
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    match MongoStore::connect("mongodb+srv://cluster.example.com/", None).await {
        Err(e) => assert!(e.to_string().contains("mongodb+srv"), "{e}"),
        Ok(_) => panic!("SRV URIs are not supported"),
    }
    match MongoStore::connect("http://nope", None).await {
        Err(e) => assert!(e.to_string().contains("invalid MongoDB URI"), "{e}"),
        Ok(_) => panic!("not a MongoDB URI"),
    }
}

#[tokio::test]
async fn database_name_comes_from_the_uri_path() {
    let Some(f) = Ferret::start() else { return };
    let named = MongoStore::connect(&format!("{}fromuri", f.uri()), None)
        .await
        .expect("connect");
    assert_eq!(named.database_name(), "fromuri");
    let default = MongoStore::connect(&f.uri(), None).await.expect("connect");
    assert_eq!(default.database_name(), "csps");
}
