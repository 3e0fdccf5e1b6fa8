//! `csps-loadgen`: REGISTER-with-digest load over UDP, and the csps-vs-Kamailio benchmark.
//!
//! ```text
//! csps-loadgen run   --target 127.0.0.1:5060 [--server-pid PID] [common flags]
//! csps-loadgen bench [--only kamailio|csps] [--csps-bin target/release/csps]
//!                    [--kamailio-bin kamailio] [--kamailio-cfg e2e/kamailio/kamailio.cfg]
//!                    [--kamailio-children 4] [--kamailio-shm-mb 256] [common flags]
//! common: --accounts 10000 --rates 2000,4000,… --step-secs 5 --drain-secs 5 --pause-secs 1
//!         --domain csps.local --prefix u [--settle-secs 0] [--keep-logs]
//! csps-loadgen calls [--csps-bin PATH] [--concurrency 50,100,…] [--hold-secs 10]
//!                    [--ramp-rate 500] [--setup-rates 250,500,…] [--setup-secs 5]
//!                    [--media-sockets 4] [--max-loss-pct 0.1] [--max-jitter-ms 5] [--keep-going]
//!                    [--accounts 1000] [--transcode] [--srtp]
//! csps-loadgen codec-chain --codecs g722,opus --in speech.wav --out coded.wav [--rate 16000]
//! ```
//! `calls` plays both ends of every call through csps (see [`calls`]): concurrent calls with
//! RTP both ways, rising until a limit is crossed, then the call setup rate. `codec-chain` runs
//! a WAV file through the gateway's codecs alone (see [`chain`]).
//! Account `i` is `{prefix}{i:06}` with password `pw-{username}`. A step sends `rate × step-secs`
//! registrations, open loop, accounts round-robin, each with a fresh Call-ID: REGISTER, 401,
//! REGISTER with an MD5 digest answer (`qop=auth`), 200. "REGISTER/s" counts registrations
//! (each is two transactions).

mod bench;
mod calls;
mod chain;
mod load;
mod media;
mod sip;
mod sys;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_RATES: &str = "2000,4000,6000,8000,9000,10000,11000,12000,15000,20000";

fn usage() -> &'static str {
    "usage: csps-loadgen run --target IP:PORT [--server-pid PID] [common]\n       \
     csps-loadgen bench [--only kamailio|csps] [--csps-bin PATH] [--kamailio-bin PATH]\n                          \
     [--kamailio-cfg PATH] [--kamailio-children N] [--kamailio-shm-mb N] [common]\n\
     common: --accounts N (10000) --rates R1,R2,... (2000..20000, finer near 10000) --step-secs S (5)\n        \
     --drain-secs S (5) --pause-secs S (1) --domain D (csps.local) --prefix P (u)\n        \
     --settle-secs S (0; else also measure csps memory once its transactions end) --keep-logs\n       \
     csps-loadgen calls [--csps-bin PATH] [--concurrency N1,N2,... (50..2000)] [--hold-secs S (10)]\n                          \
     [--ramp-rate R (500)] [--setup-rates R1,... (250..3000; empty: none)] [--setup-secs S (5)]\n                          \
     [--media-sockets N (4)] [--max-loss-pct P (0.1)] [--max-jitter-ms M (5)] [--keep-going]\n                          \
     [--transcode (G.722 callers, Opus callees: every call transcoded)]\n                          \
     [--srtp (SDES-SRTP on both legs of every call)]\n                          \
     [--drain-secs S (10)] [--pause-secs S (1)] [--domain D (csps.local)]\n                          \
     [--accounts N (1000; callers and callees each, at least the largest step)]\n       \
     csps-loadgen codec-chain --codecs g722,opus --in IN.wav --out OUT.wav [--rate HZ (16000)]\n                          (codecs: pcmu, pcma, g722, opus as the gateway sends it, opus-silk as a capped receiver gets it)"
}

/// Flags without a value.
const FLAGS: &[&str] = &["keep-logs", "keep-going", "transcode", "srtp"];

/// `--flag value` pairs (and the value-less [`FLAGS`]).
fn parse_flags(args: &[String]) -> Result<HashMap<String, String>, String> {
    let mut m = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a}"));
        };
        if name == "help" {
            return Err(String::new());
        }
        if FLAGS.contains(&name) {
            m.insert(name.to_string(), String::new());
            continue;
        }
        let (k, v) = match name.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (
                name.to_string(),
                it.next()
                    .ok_or_else(|| format!("--{name} needs a value"))?
                    .clone(),
            ),
        };
        m.insert(k, v);
    }
    Ok(m)
}

fn get<T: std::str::FromStr>(
    f: &HashMap<String, String>,
    k: &str,
    default: T,
) -> Result<T, String> {
    match f.get(k) {
        Some(v) => v.parse().map_err(|_| format!("--{k}: cannot parse {v:?}")),
        None => Ok(default),
    }
}

fn plan(f: &HashMap<String, String>) -> Result<bench::Plan, String> {
    let rates = f
        .get("rates")
        .map_or(DEFAULT_RATES, String::as_str)
        .split(',')
        .map(|r| {
            r.trim()
                .parse::<f64>()
                .map_err(|_| format!("--rates: bad rate {r:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if rates.iter().any(|r| *r <= 0.0 || *r > 200_000.0) {
        return Err("--rates: each rate must be in (0, 200000]".into());
    }
    let step_secs: f64 = get(f, "step-secs", 5.0)?;
    let drain: f64 = get(f, "drain-secs", 5.0)?;
    let pause: f64 = get(f, "pause-secs", 1.0)?;
    let settle: f64 = get(f, "settle-secs", 0.0)?;
    if !(0.1..=120.0).contains(&step_secs)
        || !(0.0..=60.0).contains(&drain)
        || !(0.0..=60.0).contains(&pause)
        || !(0.0..=120.0).contains(&settle)
    {
        return Err(
            "--step-secs must be in [0.1, 120], --drain-secs and --pause-secs in [0, 60], --settle-secs in [0, 120]".into(),
        );
    }
    let accounts: u32 = get(f, "accounts", 10_000)?;
    if accounts == 0 || accounts > 1_000_000 {
        return Err("--accounts must be in [1, 1000000]".into());
    }
    Ok(bench::Plan {
        accounts,
        prefix: get(f, "prefix", "u".to_string())?,
        domain: get(f, "domain", "csps.local".to_string())?,
        rates,
        step_secs,
        drain: Duration::from_secs_f64(drain),
        pause: Duration::from_secs_f64(pause),
        settle: Duration::from_secs_f64(settle),
    })
}

fn run(f: &HashMap<String, String>) -> Result<(), String> {
    let plan = plan(f)?;
    let target: std::net::SocketAddr = f
        .get("target")
        .ok_or("--target IP:PORT is required")?
        .parse()
        .map_err(|_| "--target: expected IP:PORT")?;
    if !target.ip().is_loopback() {
        return Err("--target must be a loopback address".into());
    }
    let pid: Option<u32> = f
        .get("server-pid")
        .map(|p| p.parse())
        .transpose()
        .map_err(|_| "--server-pid: not a number")?;
    sys::raise_nofile();
    let (run, _) = bench::run_steps(&plan, target, pid, "target").map_err(|e| e.to_string())?;
    bench::summary(&[run]);
    Ok(())
}

fn bench_cmd(f: &HashMap<String, String>) -> Result<(), String> {
    let plan = plan(f)?;
    let only = f.get("only").map(String::as_str);
    let nofile = sys::raise_nofile();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = tempfile::Builder::new()
        .prefix("csps-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    println!(
        "REGISTER benchmark: {} accounts, rates {:?}/s, {} s per step, drain {:?}, RLIMIT_NOFILE {nofile}, {} CPUs",
        plan.accounts,
        plan.rates,
        plan.step_secs,
        plan.drain,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut runs = Vec::new();
    if only != Some("csps") {
        let k = bench::KamailioOpts {
            bin: get(f, "kamailio-bin", PathBuf::from("kamailio"))?,
            cfg: get(f, "kamailio-cfg", repo.join("e2e/kamailio/kamailio.cfg"))?,
            children: get(f, "kamailio-children", 4)?,
            shm_mb: get(f, "kamailio-shm-mb", 256)?,
        };
        println!();
        runs.push(
            bench::bench_kamailio(&plan, &k, work.path()).map_err(|e| format!("kamailio: {e}"))?,
        );
    }
    if only != Some("kamailio") {
        let bin: PathBuf = get(f, "csps-bin", repo.join("target/release/csps"))?;
        println!();
        match csps_usable(&bin) {
            Ok(()) => runs.push(bench::bench_csps(&plan, &bin).map_err(|e| format!("csps: {e}"))?),
            Err(why) if only == Some("csps") => return Err(why),
            Err(why) => println!("csps skipped: {why}"),
        }
    }
    bench::summary(&runs);
    if f.contains_key("keep-logs") {
        println!("logs kept in {}", work.keep().display());
    }
    Ok(())
}

/// Checks that `bin` is a csps that implements `serve` with the contract's flags.
fn csps_usable(bin: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .map_err(|e| {
            format!(
                "{}: {e} (build it with `cargo build --release -p csps`)",
                bin.display()
            )
        })?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--sip-listen") {
        Ok(())
    } else {
        Err(format!(
            "{} does not implement `serve --sip-listen` yet",
            bin.display()
        ))
    }
}

const DEFAULT_CONCURRENCY: &str = "50,100,200,400,600,800,1000,1200,1500,2000";
const DEFAULT_SETUP_RATES: &str = "250,500,1000,1500,2000,3000";

/// A comma-separated list of numbers (empty string: an empty list).
fn list<T: std::str::FromStr>(
    f: &HashMap<String, String>,
    k: &str,
    default: &str,
) -> Result<Vec<T>, String> {
    let v = f.get(k).map_or(default, String::as_str);
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("--{k}: bad value {s:?}"))
        })
        .collect()
}

fn calls_cmd(f: &HashMap<String, String>) -> Result<(), String> {
    let concurrency: Vec<u32> = list(f, "concurrency", DEFAULT_CONCURRENCY)?;
    let setup_rates: Vec<f64> = list(f, "setup-rates", DEFAULT_SETUP_RATES)?;
    if concurrency.iter().any(|n| *n == 0 || *n > 20_000) {
        return Err("--concurrency: each count must be in [1, 20000]".into());
    }
    if setup_rates.iter().any(|r| !(*r > 0.0 && *r <= 50_000.0)) {
        return Err("--setup-rates: each rate must be in (0, 50000]".into());
    }
    let hold: f64 = get(f, "hold-secs", 10.0)?;
    let setup_secs: f64 = get(f, "setup-secs", 5.0)?;
    let ramp_rate: f64 = get(f, "ramp-rate", 500.0)?;
    let drain: f64 = get(f, "drain-secs", 10.0)?;
    let pause: f64 = get(f, "pause-secs", 1.0)?;
    let media_sockets: usize = get(f, "media-sockets", 4)?;
    if !(1.0..=300.0).contains(&hold)
        || !(0.1..=120.0).contains(&setup_secs)
        || !(1.0..=50_000.0).contains(&ramp_rate)
        || !(0.0..=60.0).contains(&drain)
        || !(0.0..=60.0).contains(&pause)
        || !(1..=256).contains(&media_sockets)
    {
        return Err(
            "--hold-secs in [1, 300], --setup-secs in [0.1, 120], --ramp-rate in [1, 50000], \
                    --drain-secs and --pause-secs in [0, 60], --media-sockets in [1, 256]"
                .into(),
        );
    }
    let plan = calls::CallPlan {
        concurrency,
        hold: Duration::from_secs_f64(hold),
        ramp_rate,
        setup_rates,
        setup_secs,
        drain: Duration::from_secs_f64(drain),
        pause: Duration::from_secs_f64(pause),
        media_sockets,
        max_loss_pct: get(f, "max-loss-pct", 0.1)?,
        max_jitter_ms: get(f, "max-jitter-ms", 5.0)?,
        keep_going: f.contains_key("keep-going"),
        domain: get(f, "domain", "csps.local".to_string())?,
        accounts: get(f, "accounts", 1000)?,
        transcode: f.contains_key("transcode"),
        srtp: f.contains_key("srtp"),
    };
    if !(1..=20_000).contains(&plan.accounts) {
        return Err("--accounts must be in [1, 20000]".into());
    }
    let nofile = sys::raise_nofile();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin: PathBuf = get(f, "csps-bin", repo.join("target/release/csps"))?;
    csps_usable(&bin)?;
    println!(
        "call benchmark: RLIMIT_NOFILE {nofile}, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    calls::bench(&plan, &bin)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => parse_flags(&args[1..]).and_then(|f| run(&f)),
        Some("bench") => parse_flags(&args[1..]).and_then(|f| bench_cmd(&f)),
        Some("calls") => parse_flags(&args[1..]).and_then(|f| calls_cmd(&f)),
        Some("codec-chain") => parse_flags(&args[1..]).and_then(|f| {
            let path = |k: &str| {
                f.get(k)
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("--{k} is required"))
            };
            chain::run(
                f.get("codecs").map_or("", String::as_str),
                &path("in")?,
                &path("out")?,
                get(&f, "rate", 16_000)?,
            )
        }),
        _ => Err(String::new()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_empty() => {
            eprintln!("{}", usage());
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}\n{}", usage());
            ExitCode::from(2)
        }
    }
}
