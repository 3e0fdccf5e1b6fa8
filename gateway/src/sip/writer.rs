//! Group commit of registrations: the core hands over binding changes with the answers that must
//! wait for them; everything queued while one write runs goes into the next, so a burst of
//! REGISTERs costs one durable store write per batch, and each 200 OK leaves only once its binding
//! is on disk. A failed write turns the waiting answers into 500s (nothing is silently lost).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use csps_sip::Response;
use csps_sip::registrar::Binding;
use csps_sip::transaction::TxnKey;
use tokio::sync::mpsc;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::store::{BindingKey, Registration, Removal, Store};

/// Changes that must be durable before `replies` are sent.
pub struct Commit {
    /// Bindings to insert or replace (turned into store records here, off the core task).
    pub upserts: Vec<Binding>,
    /// Bindings to remove.
    pub removals: Vec<BindingKey>,
    /// Server transactions to answer once written.
    pub replies: Vec<(TxnKey, Response)>,
}

/// A batch smaller than this waits [`LINGER`] for more before it is written.
const LINGER_BELOW: usize = 32;
/// How long a small batch waits for company.
const LINGER: Duration = Duration::from_millis(1);
/// Largest number of commits folded into one store write.
const MAX_BATCH: usize = 1024;

/// The store record of a binding held by `server`.
pub fn record(server: &str, b: &Binding) -> Registration {
    Registration {
        aor: b.aor.clone(),
        binding: b.key.clone(),
        contact: b.contact.clone(),
        server: server.to_owned(),
        transport: b.source.transport.as_str().to_owned(),
        source: b.source.addr.to_string(),
        local: b.local.to_string(),
        user_agent: b.user_agent.clone(),
        expires_at: DateTime::<Utc>::from(b.expires_at),
        instance_id: b.instance_id.clone(),
        reg_id: b.reg_id,
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        q: b.q,
        nat: b.nat,
    }
}

/// Tells the event feed's listeners (if any) about a durable batch.
fn publish(events: &Events, upserts: &[Registration], removals: &[Removal]) {
    if !events.listened() {
        return;
    }
    for r in upserts {
        events.publish("registration.added", || {
            serde_json::to_value(crate::api::registrations::RegistrationView::from(r.clone()))
                .unwrap_or_default()
        });
    }
    for r in removals {
        events.publish("registration.removed", || {
            serde_json::json!({ "aor": r.key.aor, "binding": r.key.binding, "server": r.server })
        });
    }
}

/// Runs until the core drops its sender; answers come back on `done`. Records name `server`.
/// Each binding written or removed is published on `events` once durable.
pub async fn run(
    server: String,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    events: Events,
    mut rx: mpsc::Receiver<Commit>,
    done: mpsc::Sender<Vec<(TxnKey, Response)>>,
) {
    while let Some(first) = rx.recv().await {
        // Under load a short wait fills the batch: one durable write (two fsyncs) then serves
        // many answers. Idle, an answer waits at most this long (well within a 10 ms group commit).
        if rx.len() < LINGER_BELOW {
            tokio::time::sleep(LINGER).await;
        }
        let mut upserts: Vec<Registration> =
            first.upserts.iter().map(|b| record(&server, b)).collect();
        let mut removals: Vec<Removal> = first
            .removals
            .into_iter()
            .map(|key| Removal::by(&server, key))
            .collect();
        let mut replies = first.replies;
        let mut n = 1;
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => {
                    upserts.extend(c.upserts.iter().map(|b| record(&server, b)));
                    removals.extend(c.removals.into_iter().map(|key| Removal::by(&server, key)));
                    replies.extend(c.replies);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let mut attempt = 0;
        let result = loop {
            match store.write_registrations(&upserts, &removals).await {
                Ok(()) => break Ok(()),
                Err(e) if attempt < 2 => {
                    attempt += 1;
                    tracing::warn!("registration write failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                metrics.store_commits.inc();
                publish(&events, &upserts, &removals);
            }
            Err(e) => {
                tracing::error!(bindings = upserts.len(), "registration write failed: {e}");
                metrics.store_failures.inc();
                for (_, resp) in replies.iter_mut() {
                    let mut failed = Response {
                        status: 500,
                        reason: "Server Internal Error".to_owned(),
                        headers: resp.headers.clone(),
                        body: Default::default(),
                    };
                    failed.headers.remove("Contact");
                    failed.headers.remove("Date");
                    failed.headers.push("Retry-After", "5");
                    *resp = failed;
                }
            }
        }
        if done.send(replies).await.is_err() {
            return;
        }
    }
}
