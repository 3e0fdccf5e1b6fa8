//! Registration write throughput of the embedded store, as the SIP driver's group commit uses it
//! (batches of ~150 upserts, each batch one durable transaction). Reports, never asserts timing:
//! `cargo test -p csps --release --test store_bench -- --ignored --nocapture`.

mod store_suite;

use std::time::Instant;

use chrono::{Duration, Utc};
use csps::store::Store;
use csps::store::embedded::EmbeddedStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn registration_upserts_per_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open_async(dir.path()).await.expect("open");
    let bindings = 20_000usize;
    let batch = 150usize;
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
    for round in 0..2 {
        // Round 0 inserts, round 1 replaces (re-registrations).
        let t = Instant::now();
        for chunk in regs.chunks(batch) {
            store.write_registrations(chunk, &[]).await.expect("write");
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "round {round}: {bindings} upserts in batches of {batch}: {:.2} s, {:.0}/s, {:.2} ms/commit",
            secs,
            bindings as f64 / secs,
            secs * 1000.0 / bindings.div_ceil(batch) as f64
        );
    }
    let file = dir.path().join(csps::store::embedded::FILE_NAME);
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    println!("file size {} KiB for {bindings} bindings", size / 1024);
    let t = Instant::now();
    let all = store
        .list_registrations(&Default::default(), Utc::now())
        .await
        .expect("list");
    println!(
        "list all {}: {:.1} ms",
        all.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
}
