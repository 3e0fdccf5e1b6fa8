//! The comparison: the same rising REGISTER load against Kamailio 5.6 and against csps.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{self, LoadConfig, LoadGen, StepStats};
use crate::sys;

/// Settings shared by `run` and `bench`.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Accounts to register.
    pub accounts: u32,
    /// Username prefix.
    pub prefix: String,
    /// Domain / realm.
    pub domain: String,
    /// Registrations per second, one step each.
    pub rates: Vec<f64>,
    /// Length of a step's send phase.
    pub step_secs: f64,
    /// Bound on waiting for answers after a step.
    pub drain: Duration,
    /// Pause between steps.
    pub pause: Duration,
    /// csps only: after the last step, wait up to this long for its transactions to end (Timer J
    /// keeps each answered REGISTER's transaction 32 s) before measuring memory again.
    pub settle: Duration,
}

/// RSS growth over the run, in bytes per registered account.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// Right after the last step (live transactions included).
    pub at_load: f64,
    /// After the transactions ended (`--settle-secs`), when measured.
    pub settled: Option<f64>,
    /// Registrations the API listed.
    pub listed: usize,
}

/// One server's results.
pub struct ServerRun {
    /// "kamailio" or "csps".
    pub name: String,
    /// Per step: stats, server CPU seconds, loadgen CPU seconds.
    pub steps: Vec<(StepStats, f64, f64)>,
    /// csps only: RSS per registration.
    pub memory: Option<Memory>,
}

impl ServerRun {
    /// The highest offered rate of a clean step.
    pub fn best_clean(&self) -> Option<f64> {
        self.steps
            .iter()
            .filter(|(s, _, _)| s.clean())
            .map(|(s, _, _)| s.offered)
            .fold(None, |m, r| Some(m.map_or(r, |m: f64| m.max(r))))
    }
}

/// Runs every step of `plan` against `target`, measuring `server_pid`'s process tree.
pub fn run_steps(
    plan: &Plan,
    target: SocketAddr,
    server_pid: Option<u32>,
    name: &str,
) -> std::io::Result<(ServerRun, LoadGen)> {
    let mut lg = LoadGen::new(LoadConfig {
        target,
        domain: plan.domain.clone(),
        accounts: plan.accounts,
        prefix: plan.prefix.clone(),
        expires: 3600,
        drain: plan.drain,
    })?;
    let mut run = ServerRun {
        name: name.to_string(),
        steps: Vec::new(),
        memory: None,
    };
    println!("{}", header());
    for (i, &rate) in plan.rates.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(plan.pause);
        }
        let load = sys::load_average();
        let drops0 = sys::udp_rcvbuf_errors();
        let srv0 = server_pid.map(sys::cpu_seconds_tree);
        let me0 = sys::cpu_seconds_self();
        let st = lg.run_step(rate, plan.step_secs);
        let me = sys::cpu_seconds_self() - me0;
        let srv = match (server_pid, srv0) {
            (Some(p), Some(c0)) => sys::cpu_seconds_tree(p) - c0,
            _ => f64::NAN,
        };
        let drops = sys::udp_rcvbuf_errors().saturating_sub(drops0);
        println!("{} {:>6} {:>5.1}", row(name, &st, srv, me), drops, load);
        if !st.failure_codes.is_empty() {
            println!("    failure statuses: {:?}", st.failure_codes);
        }
        run.steps.push((st, srv, me));
    }
    Ok((run, lg))
}

/// The table header.
pub fn header() -> String {
    format!(
        "{:<9} {:>9} {:>10} {:>8} {:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "server",
        "offered/s",
        "achieved/s",
        "regs",
        "fail",
        "timeout",
        "retrans",
        "p50 ms",
        "p99 ms",
        "srv cpu s",
        "lg cpu s"
    )
}

/// One table row.
pub fn row(name: &str, s: &StepStats, srv_cpu: f64, lg_cpu: f64) -> String {
    format!(
        "{:<9} {:>9.0} {:>10.0} {:>8} {:>6} {:>7} {:>8} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>2}",
        name,
        s.offered,
        s.achieved(),
        s.completed,
        s.failures,
        s.timeouts,
        s.retransmissions,
        s.latency_ms(0.5),
        s.latency_ms(0.99),
        srv_cpu,
        lg_cpu,
        if s.clean() { "" } else { "*" }
    )
}

/// A child process killed (TERM, then KILL) on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        sys::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kamailio settings.
pub struct KamailioOpts {
    /// The `kamailio` executable.
    pub bin: PathBuf,
    /// e2e/kamailio/kamailio.cfg.
    pub cfg: PathBuf,
    /// UDP worker processes (`-n`).
    pub children: u32,
    /// Shared memory in MiB (`-m`).
    pub shm_mb: u32,
}

/// Writes the db_text `htable` table holding every account's password.
fn write_password_table(dir: &Path, plan: &Plan) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut t = String::from(
        "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) expires(int)\n",
    );
    for i in 0..plan.accounts {
        let u = load::username(&plan.prefix, i);
        let _ = writeln!(t, "{}:{u}:0:0:{}:0", i + 1, load::password(&u));
    }
    std::fs::write(dir.join("htable"), t)?;
    std::fs::write(
        dir.join("version"),
        "table_name(string) table_version(int)\nhtable:2\n",
    )
}

/// Starts Kamailio in the foreground on a free loopback port and runs the plan against it.
pub fn bench_kamailio(plan: &Plan, k: &KamailioOpts, work: &Path) -> std::io::Result<ServerRun> {
    let db = work.join("kamailio-db");
    let rundir = work.join("kamailio-run");
    std::fs::create_dir_all(&rundir)?;
    write_password_table(&db, plan)?;
    let port = csps_tests::free_port();
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let log_path = work.join("kamailio.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(&k.bin)
        .args(["-DD", "-E", "-f"])
        .arg(&k.cfg)
        .arg("-Y")
        .arg(&rundir)
        .args(["-l", &format!("udp:{target}")])
        .args(["-n", &k.children.to_string(), "-m", &k.shm_mb.to_string()])
        .arg("-A")
        .arg(format!("PASSWD_DB_URL=\"text://{}\"", db.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let server = Server { child };
    let pid = server.child.id();
    if !load::probe(target, Duration::from_secs(10)) {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        return Err(std::io::Error::other(format!(
            "kamailio did not answer on {target}; log:\n{tail}"
        )));
    }
    println!(
        "kamailio 5.6 pid {pid} on udp:{target}, {} workers, {} accounts (log {})",
        k.children,
        plan.accounts,
        log_path.display()
    );
    let (run, _lg) = run_steps(plan, target, Some(pid), "kamailio")?;
    drop(server);
    Ok(run)
}

/// Starts `bin` as server `bench` with UDP only on a free loopback port.
pub fn start_csps(bin: &Path) -> Result<csps_tests::Gateway, String> {
    csps_tests::Gateway::start_with(csps_tests::GatewayOptions {
        bin: Some(bin.to_path_buf()),
        server_name: Some("bench".into()),
        tcp: false,
        ready_timeout: Duration::from_secs(30),
        ..csps_tests::GatewayOptions::default()
    })
}

/// Starts csps, creates the accounts over REST, runs the plan, and measures RSS per registration.
pub fn bench_csps(plan: &Plan, bin: &Path) -> std::io::Result<ServerRun> {
    let gw = start_csps(bin).map_err(std::io::Error::other)?;
    let pid = gw.pid();
    let t = Instant::now();
    let mut http = csps_tests::http::Client::new(gw.http, Some(&gw.token));
    for i in 0..plan.accounts {
        let u = load::username(&plan.prefix, i);
        let body = serde_json::json!({"username": u, "password": load::password(&u), "domain": plan.domain});
        let r = http.request("POST", "/api/users", Some(&body.to_string()))?;
        if r.status != 201 && r.status != 409 {
            return Err(std::io::Error::other(format!(
                "POST /api/users {u}: {} {}",
                r.status, r.body
            )));
        }
        if i % 1000 == 999 {
            print!("\rcsps: {} users created", i + 1);
            let _ = std::io::stdout().flush();
        }
    }
    println!(
        "\rcsps pid {pid} on udp:{}, {} users created in {:.1}s",
        gw.sip_addr(),
        plan.accounts,
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = sys::vm_rss_kib(pid).unwrap_or(0);
    let (mut run, lg) = run_steps(plan, gw.sip_addr(), Some(pid), "csps")?;
    let rss1 = sys::vm_rss_kib(pid).unwrap_or(0);
    let registered = lg.registered_count();
    let listed = http
        .request("GET", "/api/registrations", None)
        .ok()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    if registered > 0 {
        let per = |rss: u64| (rss.saturating_sub(rss0) as f64 * 1024.0) / registered as f64;
        println!(
            "csps VmRSS {rss0} KiB -> {rss1} KiB right after the load, {registered} registered accounts ({listed} listed by the API)"
        );
        let mut memory = Memory {
            at_load: per(rss1),
            settled: None,
            listed,
        };
        if !plan.settle.is_zero() {
            let t = Instant::now();
            let mut left = live_transactions(&mut http);
            while left != Some(0) && t.elapsed() < plan.settle {
                std::thread::sleep(Duration::from_millis(500));
                left = live_transactions(&mut http);
            }
            let rss2 = sys::vm_rss_kib(pid).unwrap_or(0);
            println!(
                "csps VmRSS {rss2} KiB after {:.0} s of settling ({} live transactions)",
                t.elapsed().as_secs_f64(),
                left.map_or("?".to_string(), |n| n.to_string())
            );
            memory.settled = Some(per(rss2));
        }
        run.memory = Some(memory);
    }
    Ok(run)
}

/// The gateway's `csps_transactions` gauge, from `GET /metrics`.
fn live_transactions(http: &mut csps_tests::http::Client) -> Option<u64> {
    let r = http.request("GET", "/metrics", None).ok()?;
    r.body.lines().find_map(|l| {
        let v = l.strip_prefix("csps_transactions ")?;
        v.trim().parse::<f64>().ok().map(|f| f as u64)
    })
}

/// Prints the closing summary.
pub fn summary(runs: &[ServerRun]) {
    println!();
    println!(
        "clean = no failure, no timeout, no retransmission, achieved >= 95% of offered (rows marked * are not clean)"
    );
    for r in runs {
        match r.best_clean() {
            Some(b) => println!("{:<9} highest clean rate: {b:.0} REGISTER/s", r.name),
            None => println!("{:<9} highest clean rate: none", r.name),
        }
        if let Some(m) = r.memory {
            match m.settled {
                Some(settled) => println!(
                    "{:<9} memory per registration: {settled:.0} bytes once transactions ended, {:.0} bytes right after the load ({} registrations listed)",
                    r.name, m.at_load, m.listed
                ),
                None => println!(
                    "{:<9} memory per registration: {:.0} bytes right after the load, live transactions included ({} registrations listed; --settle-secs 40 measures after they end)",
                    r.name, m.at_load, m.listed
                ),
            }
        }
    }
    let best = |n: &str| {
        runs.iter()
            .find(|r| r.name == n)
            .and_then(ServerRun::best_clean)
    };
    if let (Some(c), Some(k)) = (best("csps"), best("kamailio")) {
        println!("ratio csps/kamailio: {:.2}", c / k);
    }
}
