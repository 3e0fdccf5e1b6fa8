//! Ended calls' records in the store, and their retention. Owns the queue between the calls and
//! the store, the writer task that drains it, and the sweep that deletes records older than
//! `Data.System.CallRecordDays`.
//!
//! A call hands its record over when it ends ([`Archive::keep`]): a `try_send` onto a bounded
//! queue, so a slow or unreachable store never holds a call task up. A full queue drops the
//! record, counts it (`csps_call_records_dropped_total`) and logs. The writer takes what is
//! queued (up to [`BATCH`] records per write, so a burst of ended calls is one durable write),
//! retries a failed write with backoff, and counts what it finally could not write
//! (`csps_call_records_failed_total`).
//!
//! The sweep runs at start, every [`SWEEP_INTERVAL`] and at once when the configured number of
//! days changes. In a cluster every server sweeps every server's records with its own setting,
//! so the shortest retention configured on any server applies to all (set it on `*`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::record::CallRecord;
use crate::config::Settings;
use crate::metrics::CallMetrics;
use crate::store::{EndedCall, Store, StoreError};

/// Records waiting for the writer; beyond this they are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Records per store write.
pub const BATCH: usize = 256;
/// How often the retention sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Waits between the attempts of a failed write (then the batch is given up, and counted).
const RETRY_AFTER: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(5),
];

/// Runs once a record was written (or given up): the `call.ended` notice, so whoever reloads
/// the history on it finds the record there.
pub type AfterWrite = Box<dyn FnOnce() + Send>;

#[allow(clippy::large_enum_variant)] // nearly every job is a record: boxing would cost more
enum Job {
    Keep(EndedCall, Option<AfterWrite>),
    /// Answered once everything queued before it was written (or given up).
    Flush(oneshot::Sender<()>),
}

/// The calls' side of the archive: hands ended calls' records to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Archive {
    tx: mpsc::Sender<Job>,
    server: Arc<str>,
    metrics: CallMetrics,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Archive {
    /// Starts the writer into `store` for the calls of server `server`.
    pub fn start(store: Arc<dyn Store>, server: &str, metrics: CallMetrics) -> Archive {
        Archive::with_queue(store, server, metrics, QUEUE)
    }

    /// [`Archive::start`] with a queue of `queue` records (tests fill a small one).
    pub fn with_queue(
        store: Arc<dyn Store>,
        server: &str,
        metrics: CallMetrics,
        queue: usize,
    ) -> Archive {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(write(store, rx, metrics.clone()));
        Archive {
            tx,
            server: server.into(),
            metrics,
            dropped: Arc::default(),
        }
    }

    /// The stored form of `call` (a new `record_id`, this server's name). `None` while the
    /// call has not ended.
    pub fn stored(&self, call: &CallRecord) -> Option<EndedCall> {
        Some(EndedCall {
            record_id: Uuid::new_v4(),
            server: self.server.to_string(),
            id: call.id,
            call_id: call.call_id.clone(),
            caller: call.caller.clone(),
            callee: call.callee.clone(),
            started_at: call.started_at,
            answered_at: call.answered_at,
            ended_at: call.ended_at?,
            talk_secs: call.talk_secs,
            status: call.status,
            end_reason: call.end_reason.map(|r| r.as_str().to_owned()),
            emergency: call.emergency,
            messages: u64::try_from(call.messages).unwrap_or(u64::MAX),
            messages_dropped: call.messages_dropped,
            media: call.media.clone(),
        })
    }

    /// Queues `record` for the store without waiting; false (counted and logged) when the
    /// queue is full or the writer is gone.
    pub fn keep(&self, record: EndedCall) -> bool {
        self.keep_then(record, None)
    }

    /// [`Archive::keep`], and `after` runs once the record was written or given up (at once
    /// when it could not be queued).
    pub fn keep_then(&self, record: EndedCall, after: Option<AfterWrite>) -> bool {
        match self.tx.try_send(Job::Keep(record, after)) {
            Ok(()) => true,
            Err(e) => {
                self.metrics.records_dropped.inc();
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop and then ever more rarely: a flood of drops is one symptom.
                if n.is_power_of_two() {
                    let why = match &e {
                        mpsc::error::TrySendError::Full(_) => "the queue is full",
                        mpsc::error::TrySendError::Closed(_) => "the writer stopped",
                    };
                    tracing::warn!(
                        dropped = n,
                        "a call record was not stored: {why} (the store is slow or unreachable)"
                    );
                }
                if let Job::Keep(_, Some(after)) = e.into_inner() {
                    after();
                }
                false
            }
        }
    }

    /// Waits until every record queued before the call was written or given up, at most
    /// `timeout`; false when that did not happen in time.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (otx, orx) = oneshot::channel();
        tokio::time::timeout(timeout, async {
            self.tx.send(Job::Flush(otx)).await.is_ok() && orx.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

/// The writer: takes what is queued, writes it in batches, retries, counts.
async fn write(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>, metrics: CallMetrics) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut afters: Vec<AfterWrite> = Vec::new();
    let mut flushes = Vec::new();
    while let Some(job) = rx.recv().await {
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Keep(r, after) => {
                    batch.push(r);
                    afters.extend(after);
                }
                Job::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write_batch(store.as_ref(), &batch, &metrics).await;
            batch.clear();
        }
        for after in afters.drain(..) {
            after();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn write_batch(store: &dyn Store, batch: &[EndedCall], metrics: &CallMetrics) {
    let mut waits = RETRY_AFTER.iter();
    loop {
        match store.put_call_records(batch).await {
            Ok(()) => {
                metrics.records_written.inc_by(batch.len() as u64);
                return;
            }
            Err(e) => match waits.next() {
                Some(wait) => {
                    tracing::warn!("writing {} call records failed, retrying: {e}", batch.len());
                    tokio::time::sleep(*wait).await;
                }
                None => {
                    metrics.records_failed.inc_by(batch.len() as u64);
                    tracing::error!(
                        "writing {} call records failed {} times, giving them up: {e}",
                        batch.len(),
                        RETRY_AFTER.len() + 1
                    );
                    return;
                }
            },
        }
    }
}

/// Deletes the records of calls that ended more than `days` days before `now` (`0`: every
/// call ended before `now`); returns how many.
pub async fn sweep(store: &dyn Store, days: u32, now: DateTime<Utc>) -> Result<u64, StoreError> {
    store
        .purge_call_records(now - chrono::Duration::days(i64::from(days)))
        .await
}

/// Runs the retention sweep at start, every [`SWEEP_INTERVAL`], and whenever
/// `Data.System.CallRecordDays` changes in `settings`; ends when the settings are gone.
pub fn spawn_sweeper(
    store: Arc<dyn Store>,
    mut settings: watch::Receiver<Arc<Settings>>,
    metrics: CallMetrics,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut days = settings.borrow_and_update().call_record_days;
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now_days = settings.borrow_and_update().call_record_days;
                    if now_days == days {
                        continue;
                    }
                    tracing::info!(from = days, to = now_days, "call record retention changed");
                    days = now_days;
                }
            }
            match sweep(store.as_ref(), days, Utc::now()).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics.records_swept.inc_by(n);
                    tracing::info!(swept = n, days, "removed call records past their retention");
                }
                Err(e) => tracing::warn!("sweeping old call records failed: {e}"),
            }
        }
    })
}
