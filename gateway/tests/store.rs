//! The store suite on the embedded (redb) backend, each run in a fresh temporary directory, plus
//! durability across close and reopen.

mod store_suite;

use csps::store::embedded::{EmbeddedStore, FILE_NAME};

fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path()).expect("open the embedded store")
}

#[tokio::test]
async fn users() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_suite::suite_users(&open(&dir)).await;
}

#[tokio::test]
async fn registrations() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_suite::suite_registrations(&open(&dir)).await;
}

#[tokio::test]
async fn config() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_suite::suite_config(&open(&dir)).await;
}

#[tokio::test]
async fn audit() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_suite::suite_audit(&open(&dir)).await;
}

#[tokio::test]
async fn policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_suite::suite_policies(&open(&dir)).await;
}

#[tokio::test]
async fn call_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_suite::suite_call_records(&open(&dir)).await;
}

#[tokio::test]
async fn busy_marks() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_suite::suite_busy_marks(&open(&dir)).await;
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeded = {
        let store = EmbeddedStore::open_async(dir.path()).await.expect("open");
        store_suite::seed(&store).await
    };
    assert!(dir.path().join(FILE_NAME).is_file());
    let store = EmbeddedStore::open_async(dir.path()).await.expect("reopen");
    store_suite::check_seeded(&store, &seeded).await;
}

#[tokio::test]
async fn open_creates_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("a").join("b");
    EmbeddedStore::open(&nested).expect("open in a new directory");
    assert!(nested.join(FILE_NAME).is_file());
}

#[tokio::test]
async fn purge_expired_removes_only_lapsed_bindings() {
    use chrono::{Duration, Utc};
    use csps::store::Store;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let now = Utc::now();
    let old = store_suite::registration("sip:a@x", "contact:1", "s1", now - Duration::seconds(1));
    let live = store_suite::registration("sip:a@x", "contact:2", "s1", now + Duration::seconds(60));
    store
        .write_registrations(&[old, live], &[])
        .await
        .expect("write");
    assert_eq!(store.registration_count().await.expect("count"), 2);
    assert_eq!(store.purge_expired(now).await.expect("purge"), 1);
    assert_eq!(store.registration_count().await.expect("count"), 1);
}
