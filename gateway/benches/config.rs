//! How fast configuration moves between servers, and how cheap reading it is. Prints a table; run
//! with `cargo bench -p csps --bench config [-- --changes N]`.
//!
//! - Propagation: FerretDB v1 (SQLite, no change streams, so the servers poll) on loopback; two
//!   servers `a` and `b`, each with its own client, [`LiveConfig`] and propagation task, exactly
//!   as `csps serve` runs them. A third client makes N global changes of
//!   `Data.SipConfig.TrustedIps` the way `PUT /api/config/*/…` writes them (every server entry,
//!   then `*`); each is timed from the start of the write until both servers' views hold it. The
//!   changes start at spread-out moments of the 250 ms polling interval.
//! - Reads: leaf reads per second from the in-memory view (`settings()`, one thread).

use std::sync::Arc;
use std::time::{Duration, Instant};

use csps::config::{GLOBAL, LiveConfig, set_leaf};
use csps::store::Store;
use csps::store::mongo::MongoStore;
use csps_tests::ferret::Ferret;

fn main() {
    let mut changes = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--changes" {
            changes = args
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n| (1..=10_000).contains(n))
                .expect("--changes takes a number in 1..=10000");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(changes));
}

async fn connect(f: &Ferret) -> MongoStore {
    MongoStore::connect(&format!("{}bench", f.uri()), None)
        .await
        .unwrap_or_else(|e| panic!("connect to FerretDB: {e}\n{}", f.log_tail()))
}

async fn server(f: &Ferret, name: &str) -> LiveConfig {
    let store: Arc<dyn Store> = Arc::new(connect(f).await);
    let config = LiveConfig::open(store.clone(), name).await.expect("open");
    csps::config::propagate::spawn(store, config.clone(), || {})
        .await
        .expect("MongoDB is watched");
    config
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(changes: usize) {
    let Some(f) = Ferret::start() else {
        eprintln!("ferretdb is missing: run e2e/setup");
        return;
    };
    let admin = connect(&f).await;
    let servers = [server(&f, "a").await, server(&f, "b").await];
    let mut times = Vec::with_capacity(changes);
    for i in 0..changes {
        let cidr = format!("10.{}.{}.0/24", i / 250, i % 250);
        let want = vec![cidr.parse::<ipnet::IpNet>().expect("cidr")];
        // Spread the changes over the polling phase: a change made right after the previous one
        // was seen would always wait one whole interval.
        let phase = (i as u64 * 97) % 250;
        tokio::time::sleep(Duration::from_millis(phase)).await;
        let t0 = Instant::now();
        for name in ["a", "b", GLOBAL] {
            let mut e = admin.get_config(name).await.expect("get").expect("entry");
            set_leaf(
                &mut e,
                "Data.SipConfig.TrustedIps",
                serde_json::json!([cidr]),
            );
            admin.put_config(name, &e).await.expect("put");
        }
        let deadline = t0 + Duration::from_secs(10);
        for s in &servers {
            let mut rx = s.subscribe();
            while rx.borrow_and_update().trusted_ips != want {
                assert!(
                    Instant::now() < deadline,
                    "change {i} did not reach {} within 10 s",
                    s.server()
                );
                let _ = tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
            }
        }
        times.push(t0.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;

    let view = &servers[0];
    let reads = 20_000_000u64;
    let t0 = Instant::now();
    let mut n = 0usize;
    for _ in 0..reads {
        n += std::hint::black_box(view.settings()).trusted_ips.len();
    }
    let read_time = t0.elapsed();
    std::hint::black_box(n);

    println!("| measure | value |");
    println!("|---|---|");
    println!("| global changes timed | {changes} |");
    println!(
        "| propagation to both servers p50 | {:.0} ms |",
        ms(percentile(&times, 0.5))
    );
    println!(
        "| propagation to both servers p99 | {:.0} ms |",
        ms(percentile(&times, 0.99))
    );
    println!(
        "| propagation max | {:.0} ms |",
        ms(*times.last().expect("changes > 0"))
    );
    println!(
        "| leaf reads from the in-memory view | {:.1} M/s ({:.1} ns each) |",
        reads as f64 / read_time.as_secs_f64() / 1e6,
        read_time.as_nanos() as f64 / reads as f64
    );
}
