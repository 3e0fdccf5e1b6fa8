//! The policy engine: owns the loaded WASM policy module of each kind (routing, admission,
//! device quirks), runs decisions in the sandbox ([`sandbox`]), falls back to the built-in rule
//! (`csps-policy-rules`) when there is no module, when it is switched off, or when it traps, runs
//! out of fuel or time or memory, or answers something invalid — and counts all of it per module
//! for `/metrics` and the API. After [`Limits::failure_limit`] failures within
//! [`Limits::failure_window`] a module is switched off, and says why.
//!
//! The API is synchronous and free of I/O: a decision is a few microseconds of CPU, bounded by
//! fuel and a wall-clock deadline, so a caller runs it in place. A call that must keep the module
//! it began with [`pin`](PolicyEngine::pin)s it (an `Arc` of the loaded module) and decides
//! through the pin; a new upload replaces the slot for new pins only.
//!
//! Emergency numbers (`Data.SipConfig.EmergencyNumbers`) are routed by the built-in rule before
//! any policy runs.

pub mod hooks;
pub mod sandbox;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use csps_policy_rules as rules;
pub use rules::{Edits, Message as QuirkMessage, RegisterRequest, Route, RouteRequest, Verdict};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::Metrics;
use crate::store::{PolicyMeta, PolicyRecord, Store};

/// The kinds of policy, one world each in `wit/policy.wit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Where calls go.
    Routing,
    /// Which REGISTERs skip the challenge.
    Admission,
    /// Edits of messages to and from device families.
    Quirks,
}

impl PolicyKind {
    /// Every kind, in slot order.
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::Routing,
        PolicyKind::Admission,
        PolicyKind::Quirks,
    ];

    /// `routing`, `admission`, `quirks` (also the world's name).
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Routing => "routing",
            PolicyKind::Admission => "admission",
            PolicyKind::Quirks => "quirks",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Bounds of every decision and of a module's failures.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Fuel (≈ WebAssembly instructions) per decision, instantiation included.
    pub fuel: u64,
    /// Wall-clock deadline per decision.
    pub deadline: Duration,
    /// Linear memory cap per instance, bytes.
    pub memory: usize,
    /// Instance slots in the pool (concurrent decisions).
    pub instances: u32,
    /// Failures within `failure_window` that switch a module off.
    pub failure_limit: usize,
    /// See `failure_limit`.
    pub failure_window: Duration,
    /// Routing and admission answers kept per module, by request (0: none; see [`Answers`]).
    pub answer_cache: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 5_000_000,
            deadline: Duration::from_millis(20),
            memory: 16 << 20,
            instances: 1024,
            failure_limit: 5,
            failure_window: Duration::from_secs(60),
            answer_cache: 4096,
        }
    }
}

/// Why a module's answer was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Failure {
    /// It ran out of fuel.
    Fuel,
    /// It ran past the deadline.
    Timeout,
    /// It wanted more memory than the cap.
    Memory,
    /// It trapped (a panic, an abort, an out-of-bounds access, a WASI call).
    Trap,
    /// Its answer was not one the host can act on.
    Invalid,
    /// No instance slot was free (not the module's fault; not counted towards switching it off).
    Unavailable,
}

impl Failure {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Fuel => "fuel",
            Failure::Timeout => "timeout",
            Failure::Memory => "memory",
            Failure::Trap => "trap",
            Failure::Invalid => "invalid",
            Failure::Unavailable => "unavailable",
        }
    }
}

/// Who made a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecidedBy {
    /// The built-in rule: no module loaded, or the loaded one is switched off.
    Builtin,
    /// The built-in emergency rule (before any policy).
    Emergency,
    /// Nobody: the message is outside the declared interests of the quirks module of this
    /// version, so it was passed on unedited without entering the module (and not counted).
    OutsideInterest {
        /// The module's version.
        version: u64,
    },
    /// The module of this version.
    Module {
        /// Its version.
        version: u64,
        /// Its SHA-256.
        hash: Arc<str>,
    },
    /// The built-in rule, because the module of this version failed.
    Fallback {
        /// The failed module's version.
        version: u64,
        /// Its SHA-256.
        hash: Arc<str>,
        /// How it failed.
        failure: Failure,
    },
}

impl DecidedBy {
    /// The module version that decided (`None`: a built-in rule did).
    pub fn version(&self) -> Option<u64> {
        match self {
            DecidedBy::Module { version, .. } => Some(*version),
            _ => None,
        }
    }
}

/// A decision and who made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<T> {
    /// What was decided.
    pub value: T,
    /// By whom.
    pub by: DecidedBy,
}

/// A loaded module: what the store says of it, the prepared component, its counters.
pub struct Module {
    /// Its description (kind, version, hash, upload).
    pub meta: PolicyMeta,
    /// When this server loaded it.
    pub loaded_at: DateTime<Utc>,
    hash: Arc<str>,
    /// `v<version>-<hash prefix>`, the `module` label in `/metrics`.
    label: String,
    prepared: sandbox::Prepared,
    decisions: AtomicU64,
    health: Mutex<Health>,
    answers: Mutex<Answers>,
}

/// A module's routing and admission answers by request, so a question asked again (a phone's
/// next INVITE from the same address, the same caller dialling the same number) is answered
/// without entering the sandbox.
///
/// Exact, not an approximation: a decision runs in a fresh instance that can reach no clock, no
/// randomness (the one seed import is a constant) and nothing outside, so a module's answer is a
/// function of the request alone, and a fresh instance would answer the same again. Only
/// answers that passed the check are kept; failures never are (a module that timed out once
/// under load is asked again). Bounded by [`Limits::answer_cache`]: full, it starts over. Each
/// module has its own, so a new upload starts empty; a switched-off module is not consulted.
#[derive(Default)]
struct Answers {
    routes: HashMap<RouteRequest, Route>,
    verdicts: HashMap<RegisterRequest, Verdict>,
}

impl Answers {
    /// The answer kept for `req` in `map`, or `ask`'s (kept when `check` passes it).
    fn answer<K: Clone + Eq + Hash, V: Clone>(
        answers: &Mutex<Answers>,
        cap: usize,
        map: fn(&mut Answers) -> &mut HashMap<K, V>,
        req: &K,
        ask: impl FnOnce() -> Result<V, (Failure, String)>,
        check: impl FnOnce(&V) -> Result<(), String>,
    ) -> Result<V, (Failure, String)> {
        if cap == 0 {
            return ask();
        }
        if let Some(v) = answers
            .lock()
            .ok()
            .and_then(|mut a| map(&mut a).get(req).cloned())
        {
            return Ok(v);
        }
        let v = ask()?;
        if check(&v).is_ok()
            && let Ok(mut a) = answers.lock()
        {
            let m = map(&mut a);
            if m.len() >= cap {
                m.clear();
            }
            m.insert(req.clone(), v.clone());
        }
        Ok(v)
    }
}

#[derive(Default)]
struct Health {
    recent: VecDeque<Instant>,
    failures: BTreeMap<Failure, u64>,
    last_error: Option<String>,
    disabled: Option<String>,
}

/// A module (or the built-in rule) held for the length of a call.
#[derive(Clone)]
pub struct Pinned(Option<Arc<Module>>);

impl Pinned {
    /// No module: the built-in rule (where there is no engine).
    pub fn builtin() -> Pinned {
        Pinned(None)
    }

    /// The pinned module's version (`None`: the built-in rule).
    pub fn version(&self) -> Option<u64> {
        self.0.as_ref().map(|m| m.meta.version)
    }

    /// True when a module is pinned and switched on, so a decision runs in the sandbox; false
    /// when the built-in rule decides (the hooks' fast path skips building a request then).
    pub fn is_active(&self) -> bool {
        self.0.as_ref().is_some_and(|m| !m.is_disabled())
    }

    /// Whether the pinned quirks module wants a message with these traits (its declared
    /// interests; see [`rules::Interest::matches`]). True without a module: the built-in rule
    /// decides what it edits.
    pub fn wants(
        &self,
        direction: rules::Direction,
        method: Option<&str>,
        user_agent: Option<&str>,
        has_sdp: bool,
    ) -> bool {
        self.0.as_ref().is_none_or(|m| {
            m.prepared
                .interests()
                .is_none_or(|i| rules::wanted(i, direction, method, user_agent, has_sdp))
        })
    }
}

/// A policy's state as `GET /api/policies` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"kind": "routing", "source": "module", "version": 3,
    "hash": "9f2c4e0b5d1a7c3e8f6b2d4a0c9e1f3b5d7a9c1e3f5b7d9a1c3e5f7b9d1a3c5e", "size": 61234,
    "uploaded_at": "2026-11-26T09:00:00Z", "uploaded_by": "admin-token",
    "loaded_at": "2026-11-26T09:00:01Z", "decisions": 1520, "failures": {"timeout": 1},
    "last_error": "ran past the 20 ms deadline", "disabled_reason": null}))]
pub struct PolicyStatus {
    /// `routing`, `admission`, `quirks`.
    pub kind: PolicyKind,
    /// `module` when an uploaded module is loaded, else `builtin`.
    #[schema(value_type = String, example = "module")]
    pub source: &'static str,
    /// The module's version (`null` for the built-in rule).
    pub version: Option<u64>,
    /// SHA-256 of the component.
    pub hash: Option<String>,
    /// Size in bytes.
    pub size: Option<u64>,
    /// When it was uploaded, and by whom.
    pub uploaded_at: Option<DateTime<Utc>>,
    /// Who uploaded it.
    pub uploaded_by: Option<String>,
    /// When this server loaded it.
    pub loaded_at: Option<DateTime<Utc>>,
    /// Decisions asked of the module on this server.
    pub decisions: u64,
    /// Failures by reason (`fuel`, `timeout`, `memory`, `trap`, `invalid`, `unavailable`).
    #[schema(value_type = BTreeMap<String, u64>)]
    pub failures: BTreeMap<Failure, u64>,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// Why the module is switched off (`null` while it is on).
    pub disabled_reason: Option<String>,
}

/// Why a module cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// It is not a component implementing the kind's world (the message says what is wrong).
    #[error("{0}")]
    Invalid(String),
    /// The engine could not start.
    #[error("policy engine: {0}")]
    Engine(String),
}

/// The engine: one slot per kind, the sandbox, the emergency list, the metrics.
pub struct PolicyEngine {
    sandbox: sandbox::Sandbox,
    slots: [RwLock<Option<Arc<Module>>>; 3],
    emergency: RwLock<Arc<Vec<String>>>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// The `module="builtin"` decision counter of each kind, resolved once: the hooks count
    /// every built-in decision on the packet path, where the family's lookup would allocate.
    builtin: [Counter<u64, AtomicU64>; 3],
}

/// SHA-256 of `wasm`, lower-case hex.
pub fn hash(wasm: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(wasm))
}

impl PolicyEngine {
    /// An engine with no module loaded (every decision built-in), counting into `metrics`.
    pub fn new(metrics: Arc<Metrics>, limits: Limits) -> Result<PolicyEngine, PolicyError> {
        let builtin =
            PolicyKind::ALL.map(|k| metrics.policy_decision_counter(k.as_str(), "builtin"));
        Ok(PolicyEngine {
            sandbox: sandbox::Sandbox::new(&limits).map_err(PolicyError::Engine)?,
            slots: Default::default(),
            emergency: RwLock::new(Arc::new(Vec::new())),
            limits,
            metrics,
            builtin,
        })
    }

    /// The limits every decision runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Sets the numbers routed by the built-in emergency rule.
    pub fn set_emergency_numbers(&self, numbers: Vec<String>) {
        if let Ok(mut e) = self.emergency.write() {
            *e = Arc::new(numbers);
        }
    }

    /// The module of `kind` now (or the built-in rule), to hold for the length of a call.
    pub fn pin(&self, kind: PolicyKind) -> Pinned {
        Pinned(self.slots[kind.slot()].read().ok().and_then(|s| s.clone()))
    }

    /// Routes a call with the current routing module.
    pub fn route(&self, req: &RouteRequest) -> Decision<Route> {
        self.route_with(&self.pin(PolicyKind::Routing), req)
    }

    /// Routes a call with a pinned routing module; emergency numbers first, by the built-in rule.
    pub fn route_with(&self, pinned: &Pinned, req: &RouteRequest) -> Decision<Route> {
        let emergency = self.emergency.read().map(|e| e.clone()).unwrap_or_default();
        if rules::is_emergency(&req.dialled, &emergency) {
            self.count_builtin(PolicyKind::Routing, "emergency");
            return Decision {
                value: Route::Emergency(rules::dial_string(&req.dialled)),
                by: DecidedBy::Emergency,
            };
        }
        self.decide(
            PolicyKind::Routing,
            pinned,
            || rules::route(req),
            |m| {
                Answers::answer(
                    &m.answers,
                    self.limits.answer_cache,
                    |a| &mut a.routes,
                    req,
                    || self.sandbox.route(&m.prepared, &self.limits, req),
                    rules::check_route,
                )
            },
            rules::check_route,
        )
    }

    /// Judges a REGISTER with the current admission module.
    pub fn admit(&self, req: &RegisterRequest) -> Decision<Verdict> {
        self.admit_with(&self.pin(PolicyKind::Admission), req)
    }

    /// Judges a REGISTER with a pinned admission module.
    pub fn admit_with(&self, pinned: &Pinned, req: &RegisterRequest) -> Decision<Verdict> {
        self.decide(
            PolicyKind::Admission,
            pinned,
            || rules::admit(req),
            |m| {
                Answers::answer(
                    &m.answers,
                    self.limits.answer_cache,
                    |a| &mut a.verdicts,
                    req,
                    || self.sandbox.admit(&m.prepared, &self.limits, req),
                    rules::check_verdict,
                )
            },
            rules::check_verdict,
        )
    }

    /// Device-quirk edits for a message, with the current quirks module.
    pub fn quirks(&self, msg: &QuirkMessage) -> Decision<Edits> {
        self.quirks_with(&self.pin(PolicyKind::Quirks), msg)
    }

    /// Device-quirk edits with a pinned quirks module, in an instance of its own.
    pub fn quirks_with(&self, pinned: &Pinned, msg: &QuirkMessage) -> Decision<Edits> {
        self.quirks_in(pinned, &mut None, msg)
    }

    /// Device-quirk edits with a call's pinned quirks module, in the call's instance `slot`:
    /// instantiated by the first decision that runs the module, dropped after a failure (the
    /// next decision starts a fresh one). A message outside the module's declared interests
    /// gets no edits and never enters it.
    pub fn quirks_in(
        &self,
        pinned: &Pinned,
        slot: &mut Option<sandbox::QuirksInstance>,
        msg: &QuirkMessage,
    ) -> Decision<Edits> {
        if let Some(m) = &pinned.0 {
            let method = match &msg.start {
                rules::StartLine::Request(m) => Some(m.as_str()),
                rules::StartLine::Response(_) => None,
            };
            let ua = msg.user_agent.as_deref();
            if !pinned.wants(msg.direction, method, ua, msg.sdp.is_some()) && !m.is_disabled() {
                return Decision {
                    value: Edits::default(),
                    by: DecidedBy::OutsideInterest {
                        version: m.meta.version,
                    },
                };
            }
        }
        self.decide(
            PolicyKind::Quirks,
            pinned,
            || rules::adjust(msg),
            |m| {
                let instance = match slot {
                    Some(i) => i,
                    None => slot.insert(self.sandbox.quirks_instance(&m.prepared, &self.limits)?),
                };
                let edits = instance.adjust(&self.limits, msg);
                if edits.is_err() {
                    *slot = None;
                }
                edits
            },
            rules::check_edits,
        )
    }

    fn count_builtin(&self, kind: PolicyKind, module: &str) {
        self.metrics.policy_decision(kind.as_str(), module);
    }

    /// Counts a decision the built-in rule made without asking [`PolicyEngine::decide`] (a
    /// hook's fast path when no module is active).
    pub fn count_builtin_decision(&self, kind: PolicyKind) {
        self.builtin[kind.slot()].inc();
    }

    /// Runs `run` on the pinned module, falling back to `builtin` on any failure.
    fn decide<T>(
        &self,
        kind: PolicyKind,
        pinned: &Pinned,
        builtin: impl FnOnce() -> T,
        run: impl FnOnce(&Module) -> Result<T, (Failure, String)>,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Decision<T> {
        let Some(m) = pinned.0.as_ref().filter(|m| !m.is_disabled()) else {
            self.count_builtin_decision(kind);
            return Decision {
                value: builtin(),
                by: DecidedBy::Builtin,
            };
        };
        m.decisions.fetch_add(1, Ordering::Relaxed);
        self.metrics.policy_decision(kind.as_str(), &m.label);
        let outcome = run(m).and_then(|v| match check(&v) {
            Ok(()) => Ok(v),
            Err(why) => Err((Failure::Invalid, format!("invalid answer: {why}"))),
        });
        match outcome {
            Ok(value) => Decision {
                value,
                by: DecidedBy::Module {
                    version: m.meta.version,
                    hash: m.hash.clone(),
                },
            },
            Err((failure, message)) => {
                self.failed(kind, m, failure, message);
                Decision {
                    value: builtin(),
                    by: DecidedBy::Fallback {
                        version: m.meta.version,
                        hash: m.hash.clone(),
                        failure,
                    },
                }
            }
        }
    }

    /// Logs and counts a failure; switches the module off after too many in the window.
    fn failed(&self, kind: PolicyKind, m: &Module, failure: Failure, message: String) {
        self.metrics
            .policy_failure(kind.as_str(), &m.label, failure.as_str());
        tracing::warn!(
            policy = kind.as_str(),
            module = %m.label,
            reason = failure.as_str(),
            "policy module failed, the built-in rule decided: {message}"
        );
        let Ok(mut h) = m.health.lock() else { return };
        *h.failures.entry(failure).or_default() += 1;
        h.last_error = Some(message);
        if failure == Failure::Unavailable || h.disabled.is_some() {
            return;
        }
        let now = Instant::now();
        h.recent.push_back(now);
        while h
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.limits.failure_window)
        {
            h.recent.pop_front();
        }
        if h.recent.len() >= self.limits.failure_limit {
            let why = format!(
                "switched off after {} failures within {} s (last: {}: {})",
                h.recent.len(),
                self.limits.failure_window.as_secs(),
                failure.as_str(),
                h.last_error.as_deref().unwrap_or("")
            );
            tracing::error!(policy = kind.as_str(), module = %m.label, "{why}");
            h.disabled = Some(why);
        }
    }

    /// True while the sandbox's epoch ticker sleeps: no decision ran for a second.
    pub fn ticker_asleep(&self) -> bool {
        self.sandbox.ticker_asleep()
    }

    /// Compiles (or takes from the cache) and checks a component for `kind`.
    pub fn prepare(&self, kind: PolicyKind, wasm: &[u8]) -> Result<sandbox::Prepared, PolicyError> {
        let keep: Vec<String> = PolicyKind::ALL
            .iter()
            .filter_map(|k| self.pin(*k).0.map(|m| m.meta.hash.clone()))
            .collect();
        self.sandbox
            .prepare(kind, &hash(wasm), wasm, &keep)
            .map_err(PolicyError::Invalid)
    }

    /// Makes a prepared module the one new decisions of its kind use.
    pub fn install(
        &self,
        meta: PolicyMeta,
        prepared: sandbox::Prepared,
    ) -> Result<(), PolicyError> {
        let kind = PolicyKind::parse(&meta.kind)
            .ok_or_else(|| PolicyError::Invalid(format!("unknown policy kind `{}`", meta.kind)))?;
        let short = meta.hash.get(..12).unwrap_or(&meta.hash);
        let module = Module {
            label: format!("v{}-{short}", meta.version),
            hash: meta.hash.as_str().into(),
            loaded_at: Utc::now(),
            prepared,
            decisions: AtomicU64::new(0),
            answers: Mutex::new(Answers::default()),
            health: Mutex::new(Health {
                disabled: meta.disabled.clone(),
                ..Health::default()
            }),
            meta,
        };
        tracing::info!(policy = kind.as_str(), module = %module.label, "policy module loaded");
        if let Ok(mut slot) = self.slots[kind.slot()].write() {
            *slot = Some(Arc::new(module));
        }
        Ok(())
    }

    /// Back to the built-in rule for new decisions of `kind`.
    pub fn remove(&self, kind: PolicyKind) {
        if let Ok(mut slot) = self.slots[kind.slot()].write()
            && slot.take().is_some()
        {
            tracing::info!(
                policy = kind.as_str(),
                "policy module removed; built-in rule"
            );
        }
    }

    /// Switches the loaded module of `kind` off; false when none is loaded.
    pub fn disable(&self, kind: PolicyKind, reason: &str) -> bool {
        let Some(m) = self.pin(kind).0 else {
            return false;
        };
        if let Ok(mut h) = m.health.lock() {
            h.disabled = Some(reason.to_owned());
        }
        true
    }

    /// Loads `record` (checked, compiled) as the module of its kind.
    pub fn load(&self, record: &PolicyRecord) -> Result<(), PolicyError> {
        let kind = PolicyKind::parse(&record.meta.kind).ok_or_else(|| {
            PolicyError::Invalid(format!("unknown policy kind `{}`", record.meta.kind))
        })?;
        let prepared = self.prepare(kind, &record.wasm)?;
        self.install(record.meta.clone(), prepared)
    }

    /// Brings every slot in line with the store: loads stored modules that differ from the loaded
    /// ones (by version and hash), drops modules no longer stored, applies a stored switch-off.
    /// Called at start and, on a cluster, periodically (other servers' uploads).
    pub async fn sync_with_store(self: &Arc<Self>, store: &dyn Store) {
        let stored = match store.list_policies().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reading policy modules from the store failed: {e}");
                return;
            }
        };
        for kind in PolicyKind::ALL {
            let want = stored.iter().find(|m| m.kind == kind.as_str());
            let have = self.pin(kind).0;
            match (want, have) {
                (None, Some(_)) => self.remove(kind),
                (None, None) => {}
                (Some(w), Some(h)) if w.version == h.meta.version && w.hash == h.meta.hash => {
                    if let Some(reason) = &w.disabled
                        && !h.is_disabled()
                    {
                        self.disable(kind, reason);
                    }
                }
                (Some(_), _) => match store.get_policy(kind.as_str()).await {
                    Ok(Some(record)) => {
                        let engine = self.clone();
                        let loaded =
                            tokio::task::spawn_blocking(move || engine.load(&record)).await;
                        match loaded {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::error!(
                                policy = kind.as_str(),
                                "the stored policy module cannot be loaded; built-in rule: {e}"
                            ),
                            Err(e) => tracing::error!("loading a policy module failed: {e}"),
                        }
                    }
                    Ok(None) => self.remove(kind),
                    Err(e) => tracing::warn!("reading the {kind:?} policy failed: {e}"),
                },
            }
        }
    }

    /// The state of `kind` for the API.
    pub fn status(&self, kind: PolicyKind) -> PolicyStatus {
        let Some(m) = self.pin(kind).0 else {
            return PolicyStatus {
                kind,
                source: "builtin",
                version: None,
                hash: None,
                size: None,
                uploaded_at: None,
                uploaded_by: None,
                loaded_at: None,
                decisions: 0,
                failures: BTreeMap::new(),
                last_error: None,
                disabled_reason: None,
            };
        };
        let (failures, last_error, disabled_reason) = m
            .health
            .lock()
            .map(|h| (h.failures.clone(), h.last_error.clone(), h.disabled.clone()))
            .unwrap_or_default();
        PolicyStatus {
            kind,
            source: "module",
            version: Some(m.meta.version),
            hash: Some(m.meta.hash.clone()),
            size: Some(m.meta.size),
            uploaded_at: Some(m.meta.uploaded_at),
            uploaded_by: Some(m.meta.uploaded_by.clone()),
            loaded_at: Some(m.loaded_at),
            decisions: m.decisions.load(Ordering::Relaxed),
            failures,
            last_error,
            disabled_reason,
        }
    }
}

impl Module {
    fn is_disabled(&self) -> bool {
        self.health
            .lock()
            .map(|h| h.disabled.is_some())
            .unwrap_or(true)
    }
}
