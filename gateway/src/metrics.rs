//! Prometheus metrics (`GET /metrics`): counters and gauges updated with atomics from the SIP
//! driver, encoded in the text exposition format on request.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label for messages dropped, by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Label for the token refresh task's results, by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `refreshed`, `failed` or `needs_reactivation`.
    pub outcome: String,
}

/// Label for SIP requests, by method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// Method token.
    pub method: String,
}

/// Label for SIP responses sent, by status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `1xx` … `6xx`.
    pub class: String,
}

/// Label of a policy decision: the kind and the module (`v<version>-<hash prefix>`, `builtin`,
/// `emergency`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `routing`, `admission`, `quirks`.
    pub kind: String,
    /// Which module decided.
    pub module: String,
}

/// Label of a policy failure: kind, module, and why (`fuel`, `timeout`, `memory`, `trap`,
/// `invalid`, `unavailable`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyFailureLabel {
    /// `routing`, `admission`, `quirks`.
    pub kind: String,
    /// The module that failed.
    pub module: String,
    /// Why.
    pub reason: String,
}

/// Label of a failed call: the final status the caller got.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallStatusLabel {
    /// `404`, `486`, `487`, …
    pub status: String,
}

/// The calls' metrics, cloned into the call directory (each metric shares its value with the
/// registered one).
#[derive(Clone, Debug)]
pub struct CallMetrics {
    /// Calls running on this server (ringing or answered).
    pub active: Gauge<i64, AtomicI64>,
    /// INVITEs that started a call or were refused after authentication (404, 480, 503, …).
    pub attempts: Counter<u64, AtomicU64>,
    /// Calls answered.
    pub setups: Counter<u64, AtomicU64>,
    /// Calls that ended unanswered, by the final status the caller got.
    pub failures: Family<CallStatusLabel, Counter<u64, AtomicU64>>,
    /// Seconds from the INVITE to the first ringing, early media or answer the caller got.
    pub post_dial_delay: Histogram,
    /// Seconds from the answer to the end of answered calls.
    pub talk_time: Histogram,
    /// Ended calls' records written to the store.
    pub records_written: Counter<u64, AtomicU64>,
    /// Ended calls' records not stored because the writer's queue was full.
    pub records_dropped: Counter<u64, AtomicU64>,
    /// Ended calls' records the store refused on every attempt.
    pub records_failed: Counter<u64, AtomicU64>,
    /// Call records deleted by the retention sweep.
    pub records_swept: Counter<u64, AtomicU64>,
    /// RTP packets the legs of ended calls sent to the gateway (counted when a call ends).
    pub rtp_packets: Counter<u64, AtomicU64>,
    /// RTP packets lost on the way from the legs of ended calls (counted when a call ends).
    pub rtp_lost: Counter<u64, AtomicU64>,
    /// The highest interarrival jitter (ms) of each leg of ended calls that measured one.
    pub rtp_jitter_max: Histogram,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            active: Gauge::default(),
            attempts: Counter::default(),
            setups: Counter::default(),
            failures: Family::default(),
            post_dial_delay: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            talk_time: Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0]),
            records_written: Counter::default(),
            records_dropped: Counter::default(),
            records_failed: Counter::default(),
            records_swept: Counter::default(),
            rtp_packets: Counter::default(),
            rtp_lost: Counter::default(),
            rtp_jitter_max: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0]),
        }
    }
}

impl CallMetrics {
    /// Counts a call that ended unanswered with `status` to the caller.
    pub fn failed(&self, status: u16) {
        self.failures
            .get_or_create(&CallStatusLabel {
                status: status.to_string(),
            })
            .inc();
    }
}

/// Every metric csps exports.
pub struct Metrics {
    registry: Registry,
    /// Live bindings held by this server.
    pub registrations: Gauge<i64, AtomicI64>,
    /// Live SIP transactions.
    pub transactions: Gauge<i64, AtomicI64>,
    /// Open stream connections (TCP, TLS).
    pub connections: Gauge<i64, AtomicI64>,
    /// Failed digest authentications.
    pub auth_failures: Counter<u64, AtomicU64>,
    /// Source/account pairs or sources locked out after repeated failures.
    pub auth_lockouts: Counter<u64, AtomicU64>,
    /// Messages dropped without an answer, by reason.
    pub dropped: Family<ReasonLabel, Counter<u64, AtomicU64>>,
    /// Requests received, by method.
    pub requests: Family<MethodLabel, Counter<u64, AtomicU64>>,
    /// Responses sent, by class.
    pub responses: Family<StatusLabel, Counter<u64, AtomicU64>>,
    /// Registration batches written to the store.
    pub store_commits: Counter<u64, AtomicU64>,
    /// Registration writes that failed (answered 500, nothing lost silently).
    pub store_failures: Counter<u64, AtomicU64>,
    /// Policy decisions, by kind and module.
    pub policy_decisions: Family<PolicyLabel, Counter<u64, AtomicU64>>,
    /// Policy module failures answered by the built-in rule, by kind, module and reason.
    pub policy_failures: Family<PolicyFailureLabel, Counter<u64, AtomicU64>>,
    /// Calls: running, attempts, setups, failures, timings.
    pub calls: CallMetrics,
    /// Open `GET /api/events` streams.
    pub event_listeners: Gauge<i64, AtomicI64>,
    /// Live dialog-event subscriptions (busy-lamp fields) on this server.
    pub dialog_subscriptions: Gauge<i64, AtomicI64>,
    /// Teams presence requests to Graph that failed, by reason (`throttled`, `unavailable`,
    /// `refused`, `token`, `lagged`; `store`: a busy mark not written or removed).
    pub presence_failures: Family<ReasonLabel, Counter<u64, AtomicU64>>,
    /// Refresh tokens the nightly task handled, by outcome (`refreshed`, `failed`,
    /// `needs_reactivation`), one per account.
    pub token_refreshes: Family<OutcomeLabel, Counter<u64, AtomicU64>>,
    /// `requests` children of the methods in [`HOT_METHODS`], resolved once: the family's lookup
    /// allocates a label and takes a lock, per message otherwise.
    hot_requests: [OnceLock<Counter<u64, AtomicU64>>; HOT_METHODS.len()],
    /// `responses` children by class (index 1..=6), resolved once.
    hot_responses: [OnceLock<Counter<u64, AtomicU64>>; 7],
}

/// Methods whose request counter is cached.
const HOT_METHODS: [&str; 6] = ["REGISTER", "OPTIONS", "INVITE", "ACK", "BYE", "CANCEL"];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("csps");
        let m = Metrics {
            registrations: Gauge::default(),
            transactions: Gauge::default(),
            connections: Gauge::default(),
            auth_failures: Counter::default(),
            auth_lockouts: Counter::default(),
            dropped: Family::default(),
            requests: Family::default(),
            responses: Family::default(),
            store_commits: Counter::default(),
            store_failures: Counter::default(),
            policy_decisions: Family::default(),
            policy_failures: Family::default(),
            calls: CallMetrics::default(),
            event_listeners: Gauge::default(),
            dialog_subscriptions: Gauge::default(),
            presence_failures: Family::default(),
            token_refreshes: Family::default(),
            registry: Registry::default(),
            hot_requests: Default::default(),
            hot_responses: Default::default(),
        };
        registry.register(
            "registrations",
            "Live SIP registrations (bindings) on this server",
            m.registrations.clone(),
        );
        registry.register(
            "transactions",
            "Live SIP transactions",
            m.transactions.clone(),
        );
        registry.register(
            "connections",
            "Open SIP stream connections",
            m.connections.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed digest authentications",
            m.auth_failures.clone(),
        );
        registry.register(
            "auth_lockouts",
            "Sources locked out after repeated auth failures",
            m.auth_lockouts.clone(),
        );
        registry.register(
            "sip_dropped",
            "SIP messages dropped without an answer",
            m.dropped.clone(),
        );
        registry.register("sip_requests", "SIP requests received", m.requests.clone());
        registry.register("sip_responses", "SIP responses sent", m.responses.clone());
        registry.register(
            "store_commits",
            "Registration batches made durable",
            m.store_commits.clone(),
        );
        registry.register(
            "store_failures",
            "Registration writes that failed",
            m.store_failures.clone(),
        );
        registry.register(
            "policy_decisions",
            "Policy decisions, by kind and deciding module",
            m.policy_decisions.clone(),
        );
        registry.register(
            "policy_failures",
            "Policy module failures answered by the built-in rule",
            m.policy_failures.clone(),
        );
        registry.register(
            "dialog_subscriptions",
            "Live dialog-event subscriptions (busy-lamp fields) on this server",
            m.dialog_subscriptions.clone(),
        );
        registry.register(
            "event_listeners",
            "Open GET /api/events streams",
            m.event_listeners.clone(),
        );
        registry.register(
            "presence_failures",
            "Teams presence requests to Graph that failed, by reason",
            m.presence_failures.clone(),
        );
        registry.register(
            "token_refreshes",
            "Users' refresh tokens the refresh task handled, by outcome",
            m.token_refreshes.clone(),
        );
        let c = &m.calls;
        registry.register(
            "calls_active",
            "Calls running on this server",
            c.active.clone(),
        );
        registry.register(
            "call_attempts",
            "INVITEs that started a call or were refused after authentication",
            c.attempts.clone(),
        );
        registry.register("call_setups", "Calls answered", c.setups.clone());
        registry.register(
            "call_failures",
            "Calls ended unanswered, by the final status the caller got",
            c.failures.clone(),
        );
        registry.register(
            "call_post_dial_delay_seconds",
            "From the INVITE to the first ringing, early media or answer",
            c.post_dial_delay.clone(),
        );
        registry.register(
            "call_talk_seconds",
            "From the answer to the end of answered calls",
            c.talk_time.clone(),
        );
        registry.register(
            "call_records_written",
            "Ended calls' records written to the store",
            c.records_written.clone(),
        );
        registry.register(
            "call_records_dropped",
            "Ended calls' records not stored: the writer's queue was full",
            c.records_dropped.clone(),
        );
        registry.register(
            "call_records_failed",
            "Ended calls' records the store refused on every attempt",
            c.records_failed.clone(),
        );
        registry.register(
            "call_records_swept",
            "Call records deleted after Data.System.CallRecordDays",
            c.records_swept.clone(),
        );
        registry.register(
            "rtp_packets",
            "RTP packets the legs of ended calls sent to the gateway (counted as calls end)",
            c.rtp_packets.clone(),
        );
        registry.register(
            "rtp_lost",
            "RTP packets lost on the way from the legs of ended calls (RFC 3550 expected less \
             received; counted as calls end)",
            c.rtp_lost.clone(),
        );
        registry.register(
            "rtp_jitter_max_ms",
            "The highest interarrival jitter (RFC 3550, ms) of each leg of ended calls",
            c.rtp_jitter_max.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one dropped message.
    pub fn drop_msg(&self, reason: &str) {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one response sent.
    pub fn response_sent(&self, status: u16) {
        let class = usize::from(status / 100);
        let family = || {
            let class = format!("{class}xx");
            self.responses.get_or_create(&StatusLabel { class }).clone()
        };
        match self.hot_responses.get(class) {
            Some(c) if class > 0 => c.get_or_init(family).inc(),
            _ => family().inc(),
        };
    }

    /// Counts one request received.
    pub fn request_received(&self, method: &str) {
        let family = || {
            self.requests
                .get_or_create(&MethodLabel {
                    method: method.to_owned(),
                })
                .clone()
        };
        match HOT_METHODS.iter().position(|m| *m == method) {
            Some(i) => self.hot_requests[i].get_or_init(family).inc(),
            None => family().inc(),
        };
    }

    /// Counts one policy decision.
    pub fn policy_decision(&self, kind: &str, module: &str) {
        self.policy_decision_counter(kind, module).inc();
    }

    /// The decision counter of a kind and module, to keep and count without a lookup.
    pub fn policy_decision_counter(&self, kind: &str, module: &str) -> Counter<u64, AtomicU64> {
        self.policy_decisions
            .get_or_create(&PolicyLabel {
                kind: kind.to_owned(),
                module: module.to_owned(),
            })
            .clone()
    }

    /// Counts one policy module failure.
    pub fn policy_failure(&self, kind: &str, module: &str, reason: &str) {
        self.policy_failures
            .get_or_create(&PolicyFailureLabel {
                kind: kind.to_owned(),
                module: module.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
