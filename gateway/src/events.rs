//! The live event feed behind `GET /api/events`: one broadcast channel, owned here, that the
//! registrar's writer (bindings written or removed), the call directory (calls started, ended)
//! and the audited admin writes (configuration, users, policies) publish into. Publishing costs
//! one atomic load while nobody listens: the event's data is only built for a listener.
//! A listener that falls behind by more than [`CAPACITY`] events is told how many it missed.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// Events kept for a slow listener before it is told it lagged.
pub const CAPACITY: usize = 1024;

/// One event: its name (the SSE `event:` field) and JSON data.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `registration.added`, `registration.removed`, `call.started`, `call.answered`, `call.ended`,
    /// `config.changed`, `user.changed`, `policy.changed`.
    pub name: &'static str,
    /// What happened, as JSON.
    pub data: Value,
}

/// The feed; cheap to clone (one shared channel).
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    closed: Arc<watch::Sender<bool>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A feed nobody listens to yet.
    pub fn new() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
            closed: Arc::new(watch::channel(false).0),
        }
    }

    /// Whether anyone listens (publishers skip building events otherwise).
    pub fn listened(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes `name` with the data `data` builds, if anyone listens.
    pub fn publish(&self, name: &'static str, data: impl FnOnce() -> Value) {
        if self.listened() {
            let _ = self.tx.send(Arc::new(Event { name, data: data() }));
        }
    }

    /// A new listener: every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Tells the listeners' streams to end (the server is draining).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Flips to `true` when [`close`](Self::close) is called.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_built_without_a_listener() {
        let events = Events::new();
        events.publish("call.started", || panic!("built without a listener"));
        let mut rx = events.subscribe();
        events.publish("call.started", || serde_json::json!({"id": 1}));
        let got = rx.try_recv().expect("event");
        assert_eq!(got.name, "call.started");
        assert_eq!(got.data["id"], 1);
    }

    #[test]
    fn a_slow_listener_learns_how_much_it_missed() {
        let events = Events::new();
        let mut rx = events.subscribe();
        for i in 0..CAPACITY + 3 {
            events.publish("call.ended", || serde_json::json!({"id": i}));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 3),
            other => panic!("expected a lag, got {other:?}"),
        }
    }
}
