//! Registration write throughput of the embedded store as the SIP driver's group commit uses it:
//! batches of upserts, each batch one durable (fsync'd) transaction. Prints a table; run with
//! `cargo bench -p csps --bench store`.

#[path = "../tests/store_suite/mod.rs"]
mod store_suite;

use std::time::Instant;

use chrono::{Duration, Utc};
use csps::store::Store;
use csps::store::embedded::EmbeddedStore;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open_async(dir.path()).await.expect("open");
    let bindings = 20_000usize;
    let expires = Utc::now() + Duration::seconds(3600);
    let regs: Vec<_> = (0..bindings)
        .map(|i| {
            let mut r = store_suite::registration(
                &format!("sip:user{i}@example.com"),
                &format!("contact:sip:user{i}@192.0.2.{}:5060", i % 250),
                "s1",
                expires,
            );
            r.user_agent = Some("Yealink SIP-T46U 66.86.0.15".to_owned());
            r
        })
        .collect();
    println!("| batch | round | upserts | time (s) | upserts/s | ms per durable commit |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for batch in [1usize, 50, 150, 500] {
        for round in ["insert", "replace"] {
            let n = if batch == 1 { 1_000 } else { bindings };
            let t = Instant::now();
            for chunk in regs[..n].chunks(batch) {
                store.write_registrations(chunk, &[]).await.expect("write");
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "| {batch} | {round} | {n} | {secs:.2} | {:.0} | {:.2} |",
                n as f64 / secs,
                secs * 1000.0 / n.div_ceil(batch) as f64
            );
        }
    }
    let file = dir.path().join(csps::store::embedded::FILE_NAME);
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let t = Instant::now();
    let all = store
        .list_registrations(&Default::default(), Utc::now())
        .await
        .expect("list");
    println!(
        "\nfile size {} KiB for {bindings} bindings; listing all {} took {:.1} ms",
        size / 1024,
        all.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
}
