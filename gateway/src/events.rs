//! The live event feed behind `GET /api/events`: one broadcast channel, owned here, that the
//! registrar's writer (bindings written or removed), the call directory (calls started,
//! answered, ended) and the audited admin writes (configuration, users, policies) publish into.
//! Publishing costs one atomic load while nobody listens: the event's data is only built for a
//! listener. A listener that falls behind by more than [`CAPACITY`] events is told how many it
//! missed; listeners are counted (`csps_event_listeners`) from [`Events::listen`] to their drop.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

/// Events kept for a slow listener before it is told it lagged.
pub const CAPACITY: usize = 1024;

/// One event: its name (the SSE `event:` field) and JSON data.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `registration.added`, `registration.removed`, `call.started`, `call.answered`, `call.ended`,
    /// `config.changed`, `user.changed`, `policy.changed`, `lagged`.
    pub name: &'static str,
    /// What happened, as JSON.
    pub data: Value,
}

/// The feed; cheap to clone (one shared channel).
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    closed: Arc<watch::Sender<bool>>,
    listeners: Gauge<i64, AtomicI64>,
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
            listeners: Gauge::default(),
        }
    }

    /// The same feed, counting its listeners in `gauge` (the registered metric).
    pub fn counted_by(mut self, gauge: Gauge<i64, AtomicI64>) -> Self {
        self.listeners = gauge;
        self
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

    /// A new listener: every event published from now on, until the feed closes.
    pub fn listen(&self) -> Listener {
        self.listeners.inc();
        Listener {
            rx: self.tx.subscribe(),
            closed: self.closed.subscribe(),
            listeners: self.listeners.clone(),
        }
    }

    /// Ends every listener's stream (the server is draining).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// What a listener gets next.
#[derive(Debug)]
pub enum Next {
    /// An event.
    Event(Arc<Event>),
    /// This many events were lost because the listener fell behind.
    Lagged(u64),
}

/// One listener of the feed (a `GET /api/events` stream); counted until dropped.
pub struct Listener {
    rx: broadcast::Receiver<Arc<Event>>,
    closed: watch::Receiver<bool>,
    listeners: Gauge<i64, AtomicI64>,
}

impl Listener {
    /// The next event; `None` once the feed is closed.
    pub async fn next(&mut self) -> Option<Next> {
        if *self.closed.borrow_and_update() {
            return None;
        }
        tokio::select! {
            r = self.rx.recv() => match r {
                Ok(e) => Some(Next::Event(e)),
                Err(RecvError::Lagged(n)) => Some(Next::Lagged(n)),
                Err(RecvError::Closed) => None,
            },
            // Closed, or every sender gone.
            _ = self.closed.changed() => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.listeners.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(next: Option<Next>) -> Arc<Event> {
        match next {
            Some(Next::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn nothing_is_built_without_a_listener() {
        let events = Events::new();
        events.publish("call.started", || panic!("built without a listener"));
        let mut l = events.listen();
        events.publish("call.started", || serde_json::json!({"id": 1}));
        let got = event(l.next().await);
        assert_eq!(got.name, "call.started");
        assert_eq!(got.data["id"], 1);
    }

    #[tokio::test]
    async fn a_slow_listener_learns_how_much_it_missed() {
        let events = Events::new();
        let mut l = events.listen();
        for i in 0..CAPACITY + 3 {
            events.publish("call.ended", || serde_json::json!({"id": i}));
        }
        match l.next().await {
            Some(Next::Lagged(n)) => assert_eq!(n, 3),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(event(l.next().await).data["id"], 3);
    }

    #[tokio::test]
    async fn listeners_are_counted_and_end_when_the_feed_closes() {
        let gauge = Gauge::<i64, AtomicI64>::default();
        let events = Events::new().counted_by(gauge.clone());
        let (mut a, b) = (events.listen(), events.listen());
        assert_eq!(gauge.get(), 2);
        drop(b);
        assert_eq!(gauge.get(), 1);
        events.publish("user.changed", || serde_json::json!({}));
        events.close();
        // Closing wins over what is still queued: a draining server ends every stream at once.
        assert!(a.next().await.is_none());
        assert!(a.next().await.is_none());
        drop(a);
        assert_eq!(gauge.get(), 0);
    }
}
