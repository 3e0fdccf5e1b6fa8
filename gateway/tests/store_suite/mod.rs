//! The backend-independent store test suite: generic async checks over `&dyn Store` that every
//! backend (embedded, MongoDB) runs. A backend's test file includes it with `mod store_suite;`
//! and calls each `suite_*` on a fresh, empty store.
#![allow(dead_code)]

use chrono::{DateTime, Duration, Utc};
use csps::store::{
    BindingKey, Ha1, HashAlgorithm, Registration, RegistrationFilter, Removal, Store, StoreError,
    User,
};
use serde_json::json;
use uuid::Uuid;

/// A user record with one HA1, as the API would build it.
pub fn user(username: &str, domain: &str) -> User {
    User {
        id: Uuid::new_v4(),
        username: username.to_owned(),
        domain: domain.to_owned(),
        display_name: Some(format!("{username} display")),
        upn: None,
        phone_number: Some("+15551230000".to_owned()),
        enabled: true,
        activated: false,
        ha1: vec![Ha1 {
            realm: domain.to_owned(),
            algorithm: HashAlgorithm::Md5,
            hash: "0123456789abcdef0123456789abcdef".to_owned(),
        }],
        created_at: Utc::now(),
        teams: Default::default(),
    }
}

/// A binding of `aor` on `server`, expiring at `expires_at`.
pub fn registration(
    aor: &str,
    binding: &str,
    server: &str,
    expires_at: DateTime<Utc>,
) -> Registration {
    Registration {
        aor: aor.to_owned(),
        binding: binding.to_owned(),
        contact: format!("<sip:{binding}@192.0.2.10:5060>"),
        server: server.to_owned(),
        transport: "udp".to_owned(),
        source: "192.0.2.10:5060".to_owned(),
        local: "192.0.2.1:5060".to_owned(),
        user_agent: Some("suite/1.0".to_owned()),
        expires_at,
        instance_id: None,
        reg_id: None,
        call_id: format!("{binding}-call"),
        cseq: 1,
        q: None,
        nat: false,
    }
}

/// Users: create, unique (case-insensitive) username per domain, find, list, update, delete.
pub async fn suite_users(store: &dyn Store) {
    let alice = user("alice", "example.com");
    let created = store
        .create_user(alice.clone())
        .await
        .expect("create alice");
    assert_eq!(created, alice);
    assert_eq!(
        store.get_user(alice.id).await.expect("get alice"),
        Some(alice.clone())
    );

    // Same name, other case, same domain: conflict; other domain: fine.
    let dup = user("ALICE", "Example.COM");
    match store.create_user(dup).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("duplicate username must conflict, got {other:?}"),
    }
    let alice2 = user("alice", "other.example");
    store
        .create_user(alice2.clone())
        .await
        .expect("same username in another domain");

    let found = store
        .find_user("Alice", "EXAMPLE.com")
        .await
        .expect("find alice");
    assert_eq!(found.map(|u| u.id), Some(alice.id));
    assert_eq!(
        store
            .find_user("nobody", "example.com")
            .await
            .expect("find"),
        None
    );
    assert_eq!(store.get_user(Uuid::new_v4()).await.expect("get"), None);

    let mut bob = user("bob", "example.com");
    store.create_user(bob.clone()).await.expect("create bob");
    // The activation's binding (identity, sealed token, refresh state) round-trips.
    bob.teams = csps::store::TeamsLink {
        identity: Some(csps::store::TeamsIdentity {
            tenant: "t".into(),
            oid: "0b4f7d8e-1234-4abc-9def-00112233aabb".into(),
            upn: "bob@example.com".into(),
            phone_number: Some("+15551230001".into()),
            activated_at: Utc::now(),
        }),
        refresh_token: Some("v1.sealed".into()),
        refreshed_at: Some(Utc::now()),
        needs_reactivation: Some("AADSTS50173: revoked".into()),
    };
    store.update_user(bob.clone()).await.expect("bind bob");
    assert_eq!(
        store.get_user(bob.id).await.expect("get bob"),
        Some(bob.clone())
    );
    let mut ids: Vec<Uuid> = store
        .list_users()
        .await
        .expect("list")
        .iter()
        .map(|u| u.id)
        .collect();
    ids.sort();
    let mut want = vec![alice.id, alice2.id, bob.id];
    want.sort();
    assert_eq!(ids, want);

    // Update: fields change; a rename to a taken name conflicts; a rename frees the old name.
    let mut changed = alice.clone();
    changed.display_name = None;
    changed.enabled = false;
    store
        .update_user(changed.clone())
        .await
        .expect("update alice");
    assert_eq!(
        store.get_user(alice.id).await.expect("get"),
        Some(changed.clone())
    );
    let mut clash = changed.clone();
    clash.username = "Bob".to_owned();
    match store.update_user(clash).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("rename onto a taken username must conflict, got {other:?}"),
    }
    let mut renamed = changed.clone();
    renamed.username = "alicia".to_owned();
    store.update_user(renamed.clone()).await.expect("rename");
    assert_eq!(
        store
            .find_user("alice", "example.com")
            .await
            .expect("find")
            .map(|u| u.id),
        None
    );
    assert_eq!(
        store
            .find_user("ALICIA", "example.com")
            .await
            .expect("find")
            .map(|u| u.id),
        Some(alice.id)
    );
    store
        .create_user(user("alice", "example.com"))
        .await
        .expect("the old name is free again");
    match store.update_user(user("ghost", "example.com")).await {
        Err(StoreError::NotFound) => {}
        other => panic!("updating a missing user must be NotFound, got {other:?}"),
    }

    // Delete: gone, its name is free, a second delete is NotFound.
    store.delete_user(bob.id).await.expect("delete bob");
    assert_eq!(store.get_user(bob.id).await.expect("get"), None);
    assert_eq!(
        store.find_user("bob", "example.com").await.expect("find"),
        None
    );
    match store.delete_user(bob.id).await {
        Err(StoreError::NotFound) => {}
        other => panic!("second delete must be NotFound, got {other:?}"),
    }
    store
        .create_user(user("bob", "example.com"))
        .await
        .expect("bob's name is free after delete");
}

/// Registrations: upsert replaces by key, removals, expiry and server/AoR filters.
pub async fn suite_registrations(store: &dyn Store) {
    let now = Utc::now();
    let later = now + Duration::seconds(600);
    let all = RegistrationFilter::default();

    let a1 = registration("sip:alice@example.com", "contact:a1", "s1", later);
    let a2 = registration("sip:alice@example.com", "contact:a2", "s2", later);
    let b1 = registration("sip:bob@example.com", "contact:b1", "s1", later);
    // An AoR that is a prefix of another must not leak into its range.
    let p1 = registration("sip:alice@example.co", "contact:p1", "s1", later);
    store
        .write_registrations(&[a1.clone(), a2.clone(), b1.clone(), p1.clone()], &[])
        .await
        .expect("write");
    assert_eq!(
        store
            .list_registrations(&all, now)
            .await
            .expect("list")
            .len(),
        4
    );

    // Same key again: replaced, still one record.
    let mut a1b = a1.clone();
    a1b.cseq = 2;
    a1b.contact = "<sip:a1@198.51.100.7:5062>".to_owned();
    store
        .write_registrations(std::slice::from_ref(&a1b), &[])
        .await
        .expect("re-register");
    let alice = RegistrationFilter {
        aor: Some("sip:alice@example.com".to_owned()),
        ..Default::default()
    };
    let mut got = store.list_registrations(&alice, now).await.expect("list");
    got.sort_by(|x, y| x.binding.cmp(&y.binding));
    assert_eq!(got, vec![a1b.clone(), a2.clone()]);

    let s1 = RegistrationFilter {
        server: Some("s1".to_owned()),
        ..Default::default()
    };
    let mut got: Vec<String> = store
        .list_registrations(&s1, now)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.binding)
        .collect();
    got.sort();
    assert_eq!(got, ["contact:a1", "contact:b1", "contact:p1"]);
    let both = RegistrationFilter {
        server: Some("s2".to_owned()),
        aor: Some("sip:alice@example.com".to_owned()),
    };
    assert_eq!(
        store.list_registrations(&both, now).await.expect("list"),
        vec![a2.clone()]
    );

    // Expiry: a binding that lapses is not listed after its time (`expires_at > now`).
    let soon = registration(
        "sip:carol@example.com",
        "contact:c1",
        "s1",
        now + Duration::seconds(5),
    );
    store
        .write_registrations(std::slice::from_ref(&soon), &[])
        .await
        .expect("write");
    let carol = RegistrationFilter {
        aor: Some("sip:carol@example.com".to_owned()),
        ..Default::default()
    };
    assert_eq!(
        store
            .list_registrations(&carol, now)
            .await
            .expect("list")
            .len(),
        1
    );
    assert!(
        store
            .list_registrations(&carol, soon.expires_at)
            .await
            .expect("list")
            .is_empty(),
        "a binding is expired at its expires_at"
    );
    assert_eq!(
        store
            .list_registrations(&all, now + Duration::seconds(60))
            .await
            .expect("list")
            .len(),
        4
    );

    // Removals and upserts in one call; removing a missing key is not an error.
    let a3 = registration(
        "sip:alice@example.com",
        "instance:<urn:uuid:1>;reg-id=1",
        "s1",
        later,
    );
    store
        .write_registrations(
            std::slice::from_ref(&a3),
            &[
                Removal::by("s1", a1.key()),
                Removal::by(
                    "s1",
                    BindingKey {
                        aor: "sip:nobody@example.com".to_owned(),
                        binding: "contact:x".to_owned(),
                    },
                ),
            ],
        )
        .await
        .expect("write");
    let mut got: Vec<String> = store
        .list_registrations(&alice, now)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.binding)
        .collect();
    got.sort();
    assert_eq!(got, ["contact:a2", "instance:<urn:uuid:1>;reg-id=1"]);

    // The phone behind a2 moved to s1; s2 (its old server) removing it leaves s1's document,
    // and s1 removing it removes it.
    let mut moved = a2.clone();
    moved.server = "s1".to_owned();
    store
        .write_registrations(std::slice::from_ref(&moved), &[])
        .await
        .expect("move");
    store
        .write_registrations(&[], &[Removal::by("s2", a2.key())])
        .await
        .expect("stale removal");
    let held = store.list_registrations(&alice, now).await.expect("list");
    assert!(
        held.contains(&moved),
        "a removal by the old server deleted the new server's binding: {held:?}"
    );
    store
        .write_registrations(&[], &[Removal::by("s1", a2.key())])
        .await
        .expect("removal");
    let held = store.list_registrations(&alice, now).await.expect("list");
    assert!(!held.iter().any(|r| r.binding == "contact:a2"), "{held:?}");
    store
        .write_registrations(&[], &[])
        .await
        .expect("empty write");
    store.flush().await.expect("flush");
}

/// Configuration entries: absent, put, overwrite, list.
pub async fn suite_config(store: &dyn Store) {
    assert_eq!(store.get_config("*").await.expect("get"), None);
    let global = json!({"Data": {"SipConfig": {"TrustedIps": ["10.0.0.0/8"]}}});
    store.put_config("*", &global).await.expect("put");
    assert_eq!(store.get_config("*").await.expect("get"), Some(global));
    let s1 = json!({"Data": {"SipConfig": {"DefaultSipDomain": "sip.example.com"}}});
    store.put_config("s1", &s1).await.expect("put");
    let s1b = json!({"Data": {"SipConfig": {"DefaultSipDomain": "other.example"}}});
    store.put_config("s1", &s1b).await.expect("overwrite");
    assert_eq!(store.get_config("s1").await.expect("get"), Some(s1b));
    let mut names = store.list_config().await.expect("list");
    names.sort();
    assert_eq!(names, ["*", "s1"]);
}

/// Busy marks: unmarking removes the server's own mark before reading the others' live ones;
/// a renewed mark replaces the earlier one; lapsed marks never count and are swept; UPNs are
/// compared case-insensitively; users are independent.
pub async fn suite_busy_marks(store: &dyn Store) {
    let now = Utc::now();
    let alice = "Alice@Contoso.test";
    let soon = now + Duration::minutes(5);
    let none: Vec<String> = Vec::new();
    assert_eq!(
        store.unmark_busy(alice, "a", now).await.expect("unmark"),
        none
    );
    for server in ["a", "b", "c"] {
        store.mark_busy(alice, server, soon).await.expect("mark");
    }
    store
        .mark_busy("bob@contoso.test", "b", soon)
        .await
        .expect("mark bob");
    // c crashed: its mark lapses (a renewal replaced it with an earlier time).
    store
        .mark_busy("alice@contoso.test", "c", now - Duration::seconds(1))
        .await
        .expect("renew c");
    assert_eq!(
        store
            .unmark_busy("alice@contoso.test", "a", now)
            .await
            .expect("unmark a"),
        ["b"],
        "b's mark is live, c's lapsed, a's own removed"
    );
    // c's lapsed mark was swept: a minute earlier it would still count.
    assert_eq!(
        store
            .unmark_busy(alice, "d", now - Duration::minutes(1))
            .await
            .expect("unmark d"),
        ["b"],
        "c's lapsed mark was swept"
    );
    // a's mark is gone: b ends last and finds nobody.
    assert_eq!(
        store.unmark_busy(alice, "b", now).await.expect("unmark b"),
        none
    );
    assert_eq!(
        store
            .unmark_busy("bob@contoso.test", "a", now)
            .await
            .expect("unmark bob"),
        ["b"],
        "bob's mark is his own"
    );
    // A mark lapses at its time, not after it.
    store.mark_busy(alice, "b", soon).await.expect("mark");
    assert_eq!(store.unmark_busy(alice, "a", soon).await.expect("at"), none);
}

/// Writes one of each record (for a durability check across reopen); returns what was written.
pub async fn seed(store: &dyn Store) -> (User, Registration, serde_json::Value) {
    let u = user("durable", "example.com");
    store.create_user(u.clone()).await.expect("create");
    let r = registration(
        "sip:durable@example.com",
        "contact:d1",
        "s1",
        Utc::now() + Duration::seconds(3600),
    );
    store
        .write_registrations(std::slice::from_ref(&r), &[])
        .await
        .expect("write");
    let c = json!({"Data": {"System": {"Name": "durable"}}});
    store.put_config("s1", &c).await.expect("put");
    (u, r, c)
}

/// Checks that what [`seed`] wrote is there (after the store was closed and reopened).
pub async fn check_seeded(store: &dyn Store, seeded: &(User, Registration, serde_json::Value)) {
    let (u, r, c) = seeded;
    assert_eq!(store.get_user(u.id).await.expect("get"), Some(u.clone()));
    assert_eq!(
        store
            .find_user("DURABLE", "example.com")
            .await
            .expect("find")
            .map(|x| x.id),
        Some(u.id)
    );
    let f = RegistrationFilter {
        aor: Some(r.aor.clone()),
        ..Default::default()
    };
    assert_eq!(
        store
            .list_registrations(&f, Utc::now())
            .await
            .expect("list"),
        vec![r.clone()]
    );
    assert_eq!(store.get_config("s1").await.expect("get"), Some(c.clone()));
    match store.create_user(user("Durable", "EXAMPLE.COM")).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("the unique index survives reopen, got {other:?}"),
    }
}

/// The audit log keeps entries in time order and lists the newest first.
pub async fn suite_audit(store: &dyn Store) {
    use csps::store::AuditEntry;
    assert!(store.list_audit(10).await.expect("list").is_empty());
    let t0 = chrono::Utc::now();
    for i in 0..5i64 {
        let e = AuditEntry {
            at: t0 + chrono::Duration::milliseconds(i),
            actor: "admin-token".into(),
            action: "config.put".into(),
            target: format!("Data.SipConfig.MinExpires#{i}"),
            old: Some(json!(60)),
            new: Some(json!(60 + i)),
        };
        store.append_audit(&e).await.expect("append");
    }
    // Two entries in the same instant are both kept.
    let same = AuditEntry {
        at: t0,
        actor: "localhost".into(),
        action: "user.create".into(),
        target: "alice".into(),
        old: None,
        new: Some(json!({"username": "alice"})),
    };
    store
        .append_audit(&same)
        .await
        .expect("append same instant");
    let all = store.list_audit(100).await.expect("list");
    assert_eq!(all.len(), 6);
    assert_eq!(all[0].target, "Data.SipConfig.MinExpires#4", "newest first");
    assert_eq!(store.list_audit(2).await.expect("list").len(), 2);
    assert!(all.iter().any(|e| e.action == "user.create"));
}

/// A policy record of `kind` with `size` bytes of (non-WASM) content.
pub fn policy(kind: &str, version: u64, size: usize) -> csps::store::PolicyRecord {
    use csps::store::{PolicyMeta, PolicyRecord};
    let wasm: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    PolicyRecord {
        meta: PolicyMeta {
            kind: kind.to_owned(),
            version,
            hash: format!("{version:064x}"),
            size: size as u64,
            uploaded_at: Utc::now(),
            uploaded_by: "admin-token".into(),
            disabled: None,
        },
        wasm,
    }
}

/// Policy modules: one per kind, replaced by a new version, listed without bytes, several MiB
/// kept exactly, a disabled reason kept, deleted (NotFound the second time).
pub async fn suite_policies(store: &dyn Store) {
    assert!(store.list_policies().await.expect("list").is_empty());
    assert_eq!(store.get_policy("routing").await.expect("get"), None);

    let routing = policy("routing", 1, 3 << 20);
    store.put_policy(&routing).await.expect("put routing");
    let quirks = policy("quirks", 1, 1000);
    store.put_policy(&quirks).await.expect("put quirks");
    assert_eq!(
        store.get_policy("routing").await.expect("get"),
        Some(routing.clone()),
        "3 MiB read back exactly"
    );

    let mut v2 = policy("routing", 2, 2000);
    v2.meta.disabled = Some("switched off by admin-token".into());
    store.put_policy(&v2).await.expect("replace routing");
    assert_eq!(
        store.get_policy("routing").await.expect("get"),
        Some(v2.clone())
    );
    let listed = store.list_policies().await.expect("list");
    assert_eq!(
        listed,
        vec![quirks.meta.clone(), v2.meta.clone()],
        "by kind, no bytes"
    );

    store.delete_policy("routing").await.expect("delete");
    assert_eq!(store.get_policy("routing").await.expect("get"), None);
    match store.delete_policy("routing").await {
        Err(StoreError::NotFound) => {}
        other => panic!("deleting twice must be NotFound, got {other:?}"),
    }
    assert_eq!(
        store.list_policies().await.expect("list"),
        vec![quirks.meta]
    );
}

/// An ended call handled by `server`, from `caller` to `callee`, ended at `ended_at`.
pub fn ended_call(
    server: &str,
    id: u64,
    caller: &str,
    callee: &str,
    ended_at: DateTime<Utc>,
) -> csps::store::EndedCall {
    let answered = id.is_multiple_of(2);
    csps::store::EndedCall {
        record_id: Uuid::new_v4(),
        server: server.to_owned(),
        id,
        call_id: format!("call-{server}-{id}"),
        caller: caller.to_owned(),
        callee: callee.to_owned(),
        started_at: ended_at - Duration::seconds(30),
        answered_at: answered.then(|| ended_at - Duration::milliseconds(25_500)),
        ended_at,
        talk_secs: if answered { 25 } else { 0 },
        status: Some(if answered { 200 } else { 486 }),
        end_reason: Some(
            if answered {
                "caller_hung_up"
            } else {
                "callee_refused"
            }
            .to_owned(),
        ),
        emergency: id == 3,
        messages: 7,
        messages_dropped: 0,
        media: match answered {
            true => vec![
                csps::store::LegMedia {
                    party: caller.to_owned(),
                    codec: Some("G722/8000".into()),
                    rtp_packets: 1_275,
                    rtp_lost: 3,
                    jitter_ms: Some(2.375),
                    jitter_max_ms: Some(11.5),
                    remote_loss_permille: Some(12),
                    remote_jitter_ms: Some(1.25),
                },
                csps::store::LegMedia {
                    party: callee.to_owned(),
                    codec: Some("opus/48000".into()),
                    rtp_packets: 1_270,
                    rtp_lost: 0,
                    jitter_ms: None,
                    jitter_max_ms: None,
                    remote_loss_permille: None,
                    remote_jitter_ms: None,
                },
            ],
            false => Vec::new(),
        },
    }
}

/// Call records: a record reads back exactly (nanoseconds, absent answer), newest first with
/// ties ordered by record id, pages by limit/offset and by the `before` cursor without gaps or
/// repeats, `since` and `user` filters (case-insensitive, regex characters literal), a rewrite
/// of one record replaces it, and the sweep removes exactly what ended before its cut (a
/// simulated clock: fixed times, no waiting).
pub async fn suite_call_records(store: &dyn Store) {
    use csps::store::CallRecordQuery;
    let q = CallRecordQuery::default;
    assert!(
        store
            .list_call_records(&q())
            .await
            .expect("list")
            .is_empty()
    );
    let t0 = DateTime::parse_from_rfc3339("2026-03-01T10:00:00.123456789Z")
        .expect("time")
        .with_timezone(&Utc);
    let at = |mins: i64| t0 + Duration::minutes(mins);
    let mut calls = vec![
        ended_call("a", 1, "sip:alice@csps.local", "sip:bob@csps.local", at(0)),
        ended_call(
            "b",
            1,
            "sip:carol@csps.local",
            "sip:alice@csps.local",
            at(10),
        ),
        ended_call("a", 2, "sip:bob@csps.local", "sip:dave@csps.local", at(20)),
        ended_call("a", 3, "anonymous", "sip:112@csps.local", at(30)),
        // Same instant as the one before, on the other server.
        ended_call("b", 2, "sip:ALICE@csps.local", "sip:a.b@csps.local", at(30)),
        ended_call(
            "b",
            3,
            "sip:axb@csps.local",
            "sip:+15551230000@csps.local",
            at(40),
        ),
    ];
    store.put_call_records(&calls).await.expect("put");
    // Newest first; equal ends by record id, descending.
    calls.sort_by_key(|c| std::cmp::Reverse((c.ended_at, c.record_id)));
    let all = store.list_call_records(&q()).await.expect("list");
    assert_eq!(all, calls, "every record, exactly as written, newest first");
    assert!(all.iter().any(|c| c.answered_at.is_none()));

    // Pages by offset.
    let page = |limit, offset| CallRecordQuery {
        limit,
        offset,
        ..q()
    };
    assert_eq!(
        store.list_call_records(&page(2, 0)).await.expect("p1"),
        calls[..2]
    );
    assert_eq!(
        store.list_call_records(&page(2, 2)).await.expect("p2"),
        calls[2..4]
    );
    assert_eq!(
        store.list_call_records(&page(10, 5)).await.expect("p3"),
        calls[5..]
    );
    assert!(
        store
            .list_call_records(&page(0, 0))
            .await
            .expect("0")
            .is_empty()
    );
    assert!(
        store
            .list_call_records(&page(5, 6))
            .await
            .expect("past")
            .is_empty()
    );
    // Pages by the cursor: strictly before the last one's end.
    let before = |b| CallRecordQuery {
        before: Some(b),
        ..q()
    };
    assert_eq!(
        store
            .list_call_records(&before(at(30)))
            .await
            .expect("before"),
        calls[3..],
        "strictly before"
    );
    assert_eq!(
        store
            .list_call_records(&before(at(30) + Duration::nanoseconds(1)))
            .await
            .expect("before"),
        calls[1..],
        "nanosecond precision"
    );
    // Since: at or after.
    let since = CallRecordQuery {
        since: Some(at(20)),
        before: Some(at(40)),
        ..q()
    };
    assert_eq!(
        store.list_call_records(&since).await.expect("since"),
        calls[1..4]
    );
    let inverted = CallRecordQuery {
        since: Some(at(40)),
        before: Some(at(20)),
        ..q()
    };
    assert!(
        store
            .list_call_records(&inverted)
            .await
            .expect("inverted")
            .is_empty()
    );
    // User: caller or callee contains it, case-insensitively; `.` and `+` are literal.
    let user = |u: &str| CallRecordQuery {
        user: Some(u.to_owned()),
        ..q()
    };
    let ids = |v: Vec<csps::store::EndedCall>| {
        v.into_iter()
            .map(|c| format!("{}{}", c.server, c.id))
            .collect::<Vec<_>>()
    };
    let mut alice = ids(store
        .list_call_records(&user("Alice"))
        .await
        .expect("alice"));
    alice.sort();
    assert_eq!(alice, ["a1", "b1", "b2"]);
    assert_eq!(
        ids(store.list_call_records(&user("a.b@")).await.expect("dot")),
        ["b2"],
        "a dot matches only a dot"
    );
    assert_eq!(
        ids(store.list_call_records(&user("+1555")).await.expect("plus")),
        ["b3"]
    );
    assert!(
        store
            .list_call_records(&user("("))
            .await
            .expect("paren")
            .is_empty()
    );
    let alice_page = CallRecordQuery {
        user: Some("alice".into()),
        limit: 1,
        offset: 1,
        ..q()
    };
    assert_eq!(
        store.list_call_records(&alice_page).await.expect("page"),
        calls
            .iter()
            .filter(|c| alice_page.matches(c))
            .skip(1)
            .take(1)
            .cloned()
            .collect::<Vec<_>>(),
        "the offset counts matching records only"
    );

    // Writing a record again replaces it.
    let mut again = calls[0].clone();
    again.messages = 9;
    store
        .put_call_records(std::slice::from_ref(&again))
        .await
        .expect("rewrite");
    let all = store.list_call_records(&q()).await.expect("list");
    assert_eq!(all.len(), calls.len());
    assert_eq!(all[0], again);
    store.put_call_records(&[]).await.expect("nothing to write");

    // The sweep: strictly before the cut, every server's.
    assert_eq!(store.purge_call_records(at(0)).await.expect("sweep"), 0);
    assert_eq!(store.purge_call_records(at(30)).await.expect("sweep"), 3);
    let left = store.list_call_records(&q()).await.expect("list");
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|c| c.ended_at >= at(30)), "{left:?}");
    assert_eq!(store.purge_call_records(at(30)).await.expect("sweep"), 0);
    assert_eq!(store.purge_call_records(at(60)).await.expect("sweep"), 3);
    assert!(
        store
            .list_call_records(&q())
            .await
            .expect("list")
            .is_empty()
    );
}
