//! Live propagation between servers that share one store: a running server learns of changes
//! another server (or someone editing the database) made to its configuration entry or to the
//! users, without a restart.
//!
//! Where the store pushes changes (MongoDB change streams) each notification reloads what it is
//! about. Otherwise (FerretDB v1, a standalone mongod) the task polls the store's change counters
//! ([`Store::revisions`], two tiny documents) every [`POLL_INTERVAL`] and reloads only when one
//! moved. Either way everything is also reloaded every [`FULL_RELOAD`], which catches edits made
//! by hand without bumping a counter. The embedded store has one server only: no task runs, and
//! API writes reload the local view directly (as they do on every backend).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::LiveConfig;
use crate::store::{ChangeTopic, Revisions, Store};

/// How often the change counters are read when the store does not push changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often everything is reloaded regardless of counters and notifications.
pub const FULL_RELOAD: Duration = Duration::from_secs(30);

/// Starts watching the store for `config`'s server; `on_users` runs after users changed (the SIP
/// side rebuilds its account view). `None` when the store has a single server (nothing to watch).
pub async fn spawn(
    store: Arc<dyn Store>,
    config: LiveConfig,
    on_users: impl Fn() + Send + Sync + 'static,
) -> Option<JoinHandle<()>> {
    let first = match store.revisions().await {
        Ok(None) => return None,
        Ok(Some(r)) => Some(r),
        Err(e) => {
            tracing::warn!("reading the change counters failed: {e}");
            None
        }
    };
    let feed = match store.change_feed().await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("opening a change stream failed ({e}); polling for changes");
            None
        }
    };
    tracing::info!(
        mode = if feed.is_some() {
            "change stream"
        } else {
            "polling"
        },
        "watching the store for changes by other servers"
    );
    Some(tokio::spawn(run(store, config, on_users, first, feed)))
}

async fn run(
    store: Arc<dyn Store>,
    config: LiveConfig,
    on_users: impl Fn() + Send + Sync + 'static,
    mut last: Option<Revisions>,
    mut feed: Option<mpsc::Receiver<ChangeTopic>>,
) {
    let reload_config = || async {
        if let Err(e) = config.reload().await {
            tracing::warn!("reloading the configuration failed: {e}");
        }
    };
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut full = tokio::time::interval(FULL_RELOAD);
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    full.tick().await; // the first tick is immediate; everything was just loaded
    let mut failing = false;
    loop {
        tokio::select! {
            topic = async { feed.as_mut()?.recv().await }, if feed.is_some() => match topic {
                Some(ChangeTopic::Users) => on_users(),
                Some(_) => reload_config().await,
                None => {
                    // The stream broke: poll from now on, starting from a fresh reload.
                    feed = None;
                    last = None;
                }
            },
            _ = poll.tick(), if feed.is_none() => {
                let now = match store.revisions().await {
                    Ok(r) => r,
                    Err(e) => {
                        if !failing {
                            tracing::warn!("polling the change counters failed: {e}");
                        }
                        failing = true;
                        continue;
                    }
                };
                if failing {
                    tracing::info!("polling the change counters works again");
                    failing = false;
                }
                let (config_moved, users_moved) = match (last, now) {
                    (Some(a), Some(b)) => (a.config != b.config, a.users != b.users),
                    _ => (true, true),
                };
                last = now;
                if config_moved {
                    reload_config().await;
                }
                if users_moved {
                    on_users();
                }
            },
            _ = full.tick() => {
                reload_config().await;
                on_users();
            },
        }
    }
}
