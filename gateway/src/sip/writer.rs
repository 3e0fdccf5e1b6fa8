//! Group commit of registrations: the core hands over binding changes with the answers that must
//! wait for them; everything queued while one write runs goes into the next, so a burst of
//! REGISTERs costs one durable store write per batch, and each 200 OK leaves only once its binding
//! is on disk. A failed write turns the waiting answers into 500s (nothing is silently lost).

use std::sync::Arc;
use std::time::Duration;

use csps_sip::Response;
use csps_sip::transaction::TxnKey;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::{BindingKey, Registration, Store};

/// Changes that must be durable before `replies` are sent.
pub struct Commit {
    /// Bindings to insert or replace.
    pub upserts: Vec<Registration>,
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

/// Runs until the core drops its sender; answers come back on `done`.
pub async fn run(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Commit>,
    done: mpsc::Sender<Vec<(TxnKey, Response)>>,
) {
    while let Some(first) = rx.recv().await {
        // Under load a short wait fills the batch: one durable write (two fsyncs) then serves
        // many answers. Idle, an answer waits at most this long (well within a 10 ms group commit).
        if rx.len() < LINGER_BELOW {
            tokio::time::sleep(LINGER).await;
        }
        let mut upserts = first.upserts;
        let mut removals = first.removals;
        let mut replies = first.replies;
        let mut n = 1;
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => {
                    upserts.extend(c.upserts);
                    removals.extend(c.removals);
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
