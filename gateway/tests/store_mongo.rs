//! The store suite on the MongoDB backend, against FerretDB v1 (SQLite handler) started by each
//! test on free loopback ports in a temporary directory, plus what only a shared database shows:
//! a binding that moves between servers, the TTL fallback purge, durability across a restart of
//! the database.
//!
//! FerretDB comes from the test harness (`csps_tests::ferret`, which says where it finds the
//! binary). When it is missing the tests print SKIPPED and pass, unless `CSPS_E2E_REQUIRED=1`
//! (CI), where they fail.

mod store_suite;

use std::time::{Duration, Instant};

use chrono::Utc;
use csps::store::mongo::MongoStore;
use csps::store::{RegistrationFilter, Store};
use csps_tests::ferret::Ferret;

/// Connects a store to `f`'s server, database `db`.
async fn store(f: &Ferret, db: &str) -> MongoStore {
    MongoStore::connect(&f.uri(), Some(db))
        .await
        .unwrap_or_else(|e| panic!("connect to FerretDB: {e}\n{}", f.log_tail()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

#[tokio::test]
async fn users() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_users(&store(&f, "users").await).await;
}

#[tokio::test]
async fn registrations() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_registrations(&store(&f, "registrations").await).await;
}

#[tokio::test]
async fn config() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_config(&store(&f, "config").await).await;
}

#[tokio::test]
async fn audit() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_audit(&store(&f, "audit").await).await;
}

#[tokio::test]
async fn policies() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_policies(&store(&f, "policies").await).await;
}

#[tokio::test]
async fn call_records() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_call_records(&store(&f, "call_records").await).await;
}

#[tokio::test]
async fn busy_marks() {
    let Some(f) = Ferret::start() else { return };
    store_suite::suite_busy_marks(&store(&f, "busy_marks").await).await;
}

#[tokio::test]
async fn suites_share_one_server_on_separate_databases() {
    let Some(f) = Ferret::start() else { return };
    let (a, b) = (store(&f, "shared_a").await, store(&f, "shared_b").await);
    store_suite::suite_config(&a).await;
    // Another database on the same server sees none of it.
    store_suite::suite_config(&b).await;
    assert_eq!(a.database_name(), "shared_a");
}

#[tokio::test]
async fn data_survives_reconnect_and_database_restart() {
    let Some(mut f) = Ferret::start() else { return };
    let seeded = {
        let store = store(&f, "durable").await;
        store_suite::seed(&store).await
    };
    // A new client on the same server.
    store_suite::check_seeded(&store(&f, "durable").await, &seeded).await;
    // The database process restarted on the same files.
    f.stop();
    f.spawn();
    assert!(f.data_dir().read_dir().expect("data dir").next().is_some());
    store_suite::check_seeded(&store(&f, "durable").await, &seeded).await;
}

#[tokio::test]
async fn a_binding_moving_to_another_server_stays_one_document() {
    let Some(f) = Ferret::start() else { return };
    let (on_a, on_b) = (store(&f, "moving").await, store(&f, "moving").await);
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
    let store = store(&f, "expiry").await;
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
    let (a, b) = (store(&f, "lease").await, store(&f, "lease").await);
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

#[tokio::test]
async fn writes_bump_the_change_counters_and_ferretdb_has_no_change_stream() {
    let Some(f) = Ferret::start() else { return };
    let s = store(&f, "revisions").await;
    let r0 = s
        .revisions()
        .await
        .expect("revisions")
        .expect("MongoDB polls");
    s.put_config("a", &serde_json::json!({"Data": {}}))
        .await
        .expect("put");
    let r1 = s.revisions().await.expect("revisions").expect("some");
    assert_eq!((r1.config, r1.users), (r0.config + 1, r0.users));
    let u = s
        .create_user(store_suite::user("carol", "example.com"))
        .await
        .expect("create");
    s.update_user(u.clone()).await.expect("update");
    s.delete_user(u.id).await.expect("delete");
    let r2 = s.revisions().await.expect("revisions").expect("some");
    assert_eq!((r2.config, r2.users), (r1.config, r1.users + 3));
    // A refused write bumps nothing.
    assert!(s.delete_user(u.id).await.is_err());
    assert_eq!(s.revisions().await.expect("revisions"), Some(r2));
    // FerretDB v1 refuses $changeStream: servers poll.
    assert!(s.change_feed().await.expect("no error").is_none());
}

#[tokio::test]
async fn a_running_server_sees_changes_written_by_another() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let Some(f) = Ferret::start() else { return };
    let mine: Arc<dyn Store> = Arc::new(store(&f, "live").await);
    let other = store(&f, "live").await;
    let config = csps::config::LiveConfig::open(mine.clone(), "a")
        .await
        .expect("open");
    let users_seen = Arc::new(AtomicUsize::new(0));
    let seen = users_seen.clone();
    let task = csps::config::propagate::spawn(mine, config.clone(), move || {
        seen.fetch_add(1, Ordering::SeqCst);
    })
    .await
    .expect("MongoDB is watched");
    let mut rx = config.subscribe();
    assert!(config.settings().trusted_ips.is_empty());

    // Another server (here: a second client) changes a's entry directly in the store.
    let mut entry = other.get_config("a").await.expect("get").expect("a exists");
    csps::config::set_leaf(
        &mut entry,
        "Data.SipConfig.TrustedIps",
        serde_json::json!(["10.1.0.0/16"]),
    );
    other.put_config("a", &entry).await.expect("put");
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the change arrives within 5 s")
        .expect("sender alive");
    assert_eq!(
        config.settings().trusted_ips,
        vec!["10.1.0.0/16".parse::<ipnet::IpNet>().expect("cidr")]
    );

    // A user created elsewhere: the account view is told to reload.
    let before = users_seen.load(Ordering::SeqCst);
    other
        .create_user(store_suite::user("dave", "example.com"))
        .await
        .expect("create");
    let t0 = Instant::now();
    while users_seen.load(Ordering::SeqCst) == before {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "users change not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}

/// A call record handed to the archive while the database is down is not lost: the writer
/// retries, and the record is stored once the database is back (nothing counted as failed).
#[tokio::test]
async fn a_call_record_ended_during_a_database_outage_is_stored_when_it_is_back() {
    use csps::calls::archive::Archive;
    use csps::store::CallRecordQuery;
    let Some(mut f) = Ferret::start() else { return };
    let store = std::sync::Arc::new(store(&f, "outage").await);
    let metrics = csps::metrics::CallMetrics::default();
    let archive = Archive::start(store.clone(), "a", metrics.clone());
    f.stop();
    let call = store_suite::ended_call("a", 1, "sip:alice@x", "sip:bob@x", Utc::now());
    assert!(
        archive.keep(call.clone()),
        "handed over at once, database down or not"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.resume();
    assert!(
        archive.flush(Duration::from_secs(60)).await,
        "the writer did not finish"
    );
    assert_eq!(metrics.records_failed.get(), 0);
    assert_eq!(metrics.records_written.get(), 1);
    let listed = store
        .list_call_records(&CallRecordQuery::default())
        .await
        .expect("list");
    assert_eq!(listed, vec![call]);
}
