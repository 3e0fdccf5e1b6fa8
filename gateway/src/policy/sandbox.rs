//! The WASM sandbox: one wasmtime [`Engine`] (Cranelift, component model, pooling allocator, fuel
//! and epoch interruption), components compiled once and cached by hash, and one fresh instance
//! per decision from a typed `InstancePre` of the policy's world.
//!
//! # What a policy can reach
//! Nothing. Every import a component declares — Rust's std on `wasm32-wasip2` imports
//! `wasi:cli`, `wasi:io`, `wasi:clocks`, `wasi:random`, `wasi:filesystem` even when unused — is
//! defined as a function that traps when called ([`Linker::define_unknown_imports_as_traps`]), so
//! instantiation succeeds and any use of the outside world (a file, a socket, a clock, printing a
//! panic message) ends the decision as a trap. The one exception is `wasi:random/insecure-seed`,
//! answered with a constant so std's `HashMap` works (and stays deterministic).
//!
//! Why not `wasmtime-wasi`'s p2 linker with an empty `WasiCtx`: its synchronous bindings run each
//! stream operation through `Handle::block_on`, which panics on a tokio worker thread — where the
//! gateway decides — the first time a guest writes to stderr (every panic does), and an empty
//! context still grants the host clocks and RNG.
//!
//! # Bounds of one decision
//! Fuel (instructions), an epoch deadline (wall time; a ticker thread advances the epoch every
//! millisecond while decisions are being made, and sleeps after a second without one, so an
//! idle gateway is not woken a thousand times a second), a memory cap enforced by a [`ResourceLimiter`] and the pool's slot size, and the
//! pool itself: a fixed number of instance slots, so concurrent decisions beyond it fall back to
//! the built-in rule instead of allocating.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter,
    Store, Trap,
};

use super::rules;
use super::{Failure, Limits, PolicyKind};

// The generated bindings implement wasmtime's `unsafe` component traits (`ComponentType`, `Lift`,
// `Lower`) for the WIT types; nothing else in the gateway may use `unsafe`.
#[allow(unsafe_code)]
mod routing_world {
    wasmtime::component::bindgen!({ path: "../wit", world: "routing" });
}
#[allow(unsafe_code)]
mod admission_world {
    wasmtime::component::bindgen!({ path: "../wit", world: "admission" });
}
#[allow(unsafe_code)]
mod quirks_world {
    wasmtime::component::bindgen!({ path: "../wit", world: "quirks" });
}

use admission_world::exports::csps::policy::gatekeeper as adm;
use quirks_world::exports::csps::policy::adjuster as qk;
use routing_world::exports::csps::policy::router as rt;

/// Epoch ticks per second: the deadline's resolution is one millisecond.
const TICK: Duration = Duration::from_millis(1);
/// Ticks without a guest running after which the ticker sleeps until the next decision.
const IDLE_TICKS: u32 = 1000;
/// Bytes of a pooled memory or table slot reset in place (kept resident) when an instance ends.
const KEEP_RESIDENT: usize = 1 << 20;
/// Compiled components kept beyond the ones in use.
const CACHE_SPARE: usize = 8;
/// The WIT package version the host speaks (`wit/policy.wit`).
const WIT_VERSION: &str = "0.2.0";
/// Interests a quirks module may declare.
const MAX_INTERESTS: usize = 256;

/// Per-store state: the memory cap and whether it refused a growth.
struct GuestState {
    memory_cap: usize,
    memory_refused: bool,
}

impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_cap;
        self.memory_refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A component checked against its world and ready to instantiate.
#[derive(Clone)]
pub struct Prepared(Pre);

#[derive(Clone)]
enum Pre {
    Routing(routing_world::RoutingPre<GuestStateHandle>),
    Admission(admission_world::AdmissionPre<GuestStateHandle>),
    /// With the messages the module wants, asked once at load (`adjuster.interests`).
    Quirks(
        quirks_world::QuirksPre<GuestStateHandle>,
        Arc<[rules::Interest]>,
    ),
}

impl Prepared {
    /// The messages a quirks module declared it wants; `None` for the other kinds.
    pub fn interests(&self) -> Option<&[rules::Interest]> {
        match &self.0 {
            Pre::Quirks(_, interests) => Some(interests),
            _ => None,
        }
    }
}

/// The store's data.
struct GuestStateHandle(GuestState);

/// Advances the engine's epoch every [`TICK`] while guests run (their deadlines count these
/// ticks) and sleeps after [`IDLE_TICKS`] without one. Guest entry is two atomic operations;
/// only the first decision after a sleep pays a wake-up.
struct EpochTicker {
    /// Guests running now.
    running: AtomicUsize,
    /// The ticker thread waits on `wake` (set under `lock`).
    parked: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl EpochTicker {
    /// Starts the ticker thread of `engine`.
    fn start(engine: Engine) -> Result<Arc<EpochTicker>, String> {
        let ticker = Arc::new(EpochTicker {
            running: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let t = ticker.clone();
        std::thread::Builder::new()
            .name("csps-policy-epoch".into())
            .spawn(move || t.run(&engine))
            .map_err(|e| format!("starting the policy epoch ticker: {e}"))?;
        Ok(ticker)
    }

    fn run(&self, engine: &Engine) {
        let mut idle = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(TICK);
            engine.increment_epoch();
            idle = match self.running.load(Ordering::SeqCst) {
                0 => idle.saturating_add(1),
                _ => 0,
            };
            if idle < IDLE_TICKS {
                continue;
            }
            let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.parked.store(true, Ordering::SeqCst);
            // A guest that entered before `parked` was set is seen here; one entering after
            // it sees `parked` and wakes the thread under the lock (see `enter`).
            while self.running.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst) {
                guard = self
                    .wake
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            self.parked.store(false, Ordering::SeqCst);
            idle = 0;
        }
    }

    /// A guest is about to run: the epoch must advance until the returned guard drops.
    fn enter(self: &Arc<Self>) -> Ticking {
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
        Ticking(self.clone())
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_all();
    }
}

/// A guest running: keeps the epoch ticker awake.
struct Ticking(Arc<EpochTicker>);

impl Drop for Ticking {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The engine, its epoch ticker and the compiled-component cache.
pub struct Sandbox {
    engine: Engine,
    cache: Mutex<HashMap<String, Component>>,
    ticker: Arc<EpochTicker>,
    /// The bounds of the one call a module gets at load (a quirks module's interests).
    limits: Limits,
}

impl Sandbox {
    /// Builds the engine with the pooling allocator sized by `limits` and starts the ticker.
    pub fn new(limits: &Limits) -> Result<Sandbox, String> {
        let mut pool = PoolingAllocationConfig::default();
        let n = limits.instances.max(1);
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .max_memories_per_component(2)
            .max_memory_size(limits.memory)
            // A slot handed back is reset by zeroing its first pages instead of unmapping them
            // (madvise), so the next decision does not pay a page fault per page it touches:
            // a Rust guest touches its stack and heap pages on every call.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            // Not `PAGEMAP_SCAN` (reset only the dirtied pages, Linux ≥ 6.7): for guests this
            // small the scan's ioctl costs more than zeroing their few resident pages —
            // measured 4.9 → 4.1 µs per fresh routing decision (`cargo bench --bench policy`).
            .pagemap_scan(Enabled::No);
        let mut cfg = Config::new();
        // Explicit bounds checks instead of guard pages and signal handlers: a slot's pages then
        // stay mapped read/write between decisions, so a guest that grows its memory does not
        // cost two `mprotect`s (and a TLB shootdown on every core) per decision. The guests are
        // small; the checks cost them little.
        cfg.signals_based_traps(false)
            .memory_guard_size(0)
            .guard_before_linear_memory(false);
        cfg.consume_fuel(true)
            .epoch_interruption(true)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg).map_err(|e| format!("starting the WASM engine: {e:#}"))?;
        let ticker = EpochTicker::start(engine.clone())?;
        Ok(Sandbox {
            engine,
            cache: Mutex::new(HashMap::new()),
            ticker,
            limits: limits.clone(),
        })
    }

    /// Compiles `wasm` (or takes it from the cache by `hash`) and checks that it implements the
    /// world of `kind`. `keep` names the hashes in use, which the cache never evicts.
    pub fn prepare(
        &self,
        kind: PolicyKind,
        hash: &str,
        wasm: &[u8],
        keep: &[String],
    ) -> Result<Prepared, String> {
        check_header(wasm)?;
        let cached = self.cache.lock().ok().and_then(|c| c.get(hash).cloned());
        let component = match cached {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, wasm)
                    .map_err(|e| format!("not a valid WebAssembly component: {e:#}"))?;
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= keep.len() + CACHE_SPARE {
                        cache.retain(|h, _| keep.contains(h));
                    }
                    cache.insert(hash.to_owned(), c.clone());
                }
                c
            }
        };
        let mut linker: Linker<GuestStateHandle> = Linker::new(&self.engine);
        define_seed(&mut linker, &self.engine, &component)?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| format!("cannot satisfy the component's imports: {e:#}"))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| format!("cannot instantiate the component: {e:#}"))?;
        let world = kind.as_str();
        let old = outdated_interface(&self.engine, &component);
        let wrong = |e: wasmtime::Error| match &old {
            Some(name) => format!(
                "the component was built against `{name}`; csps speaks `csps:policy@{WIT_VERSION}` \
                 (wit/policy.wit): rebuild it with the current csps-policy-sdk"
            ),
            None => format!(
                "the component does not implement the `{world}` world (wit/policy.wit): {e:#}"
            ),
        };
        Ok(Prepared(match kind {
            PolicyKind::Routing => {
                Pre::Routing(routing_world::RoutingPre::new(pre).map_err(wrong)?)
            }
            PolicyKind::Admission => {
                Pre::Admission(admission_world::AdmissionPre::new(pre).map_err(wrong)?)
            }
            PolicyKind::Quirks => {
                let pre = quirks_world::QuirksPre::new(pre).map_err(wrong)?;
                let interests = self.interests(&pre)?;
                Pre::Quirks(pre, interests)
            }
        }))
    }

    /// Asks a quirks module once which messages it wants, in an instance of its own under the
    /// usual bounds; a failure or an invalid answer refuses the module.
    fn interests(
        &self,
        pre: &quirks_world::QuirksPre<GuestStateHandle>,
    ) -> Result<Arc<[rules::Interest]>, String> {
        let fail = |(_, why): (Failure, String)| format!("asking the module's interests: {why}");
        let _ticking = self.ticker.enter();
        let mut store = self.store(&self.limits).map_err(fail)?;
        let answer = pre
            .instantiate(&mut store)
            .map_err(|e| fail(classify(&store, e, true)))?
            .csps_policy_adjuster()
            .call_interests(&mut store)
            .map_err(|e| fail(classify(&store, e, false)))?;
        if answer.len() > MAX_INTERESTS {
            return Err(format!(
                "the module declares {} interests; at most {MAX_INTERESTS}",
                answer.len()
            ));
        }
        answer
            .into_iter()
            .map(|i| {
                rules::Interest {
                    user_agents: i.user_agents,
                    direction: i.direction.map(direction_from),
                    methods: i.methods,
                    responses: i.responses,
                    sdp_only: i.sdp_only,
                }
                .normalised()
                .map_err(|why| format!("invalid interest: {why}"))
            })
            .collect()
    }

    /// A store bounded by `limits`.
    fn store(&self, limits: &Limits) -> Result<Store<GuestStateHandle>, (Failure, String)> {
        let mut store = Store::new(
            &self.engine,
            GuestStateHandle(GuestState {
                memory_cap: limits.memory,
                memory_refused: false,
            }),
        );
        store.limiter(|s| &mut s.0);
        budget(&mut store, limits)?;
        Ok(store)
    }

    /// Asks a routing module.
    pub fn route(
        &self,
        pre: &Prepared,
        limits: &Limits,
        req: &rules::RouteRequest,
    ) -> Result<rules::Route, (Failure, String)> {
        let Prepared(Pre::Routing(pre)) = pre else {
            return Err((Failure::Invalid, "not a routing module".into()));
        };
        let _ticking = self.ticker.enter();
        let mut store = self.store(limits)?;
        let answer = pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e, true))?
            .csps_policy_router()
            .call_route(&mut store, &route_request(req))
            .map_err(|e| classify(&store, e, false))?;
        Ok(match answer {
            rt::Destination::LocalUser(u) => rules::Route::LocalUser(u),
            rt::Destination::Teams(n) => rules::Route::Teams(n),
            rt::Destination::WebUser(u) => rules::Route::WebUser(u),
            rt::Destination::Reject(r) => rules::Route::Reject {
                code: r.code,
                reason: r.reason,
            },
        })
    }

    /// Asks an admission module.
    pub fn admit(
        &self,
        pre: &Prepared,
        limits: &Limits,
        req: &rules::RegisterRequest,
    ) -> Result<rules::Verdict, (Failure, String)> {
        let Prepared(Pre::Admission(pre)) = pre else {
            return Err((Failure::Invalid, "not an admission module".into()));
        };
        let _ticking = self.ticker.enter();
        let mut store = self.store(limits)?;
        let answer = pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e, true))?
            .csps_policy_gatekeeper()
            .call_admit(&mut store, &register_request(req))
            .map_err(|e| classify(&store, e, false))?;
        Ok(match answer {
            adm::Verdict::Admit => rules::Verdict::Admit,
            adm::Verdict::Challenge => rules::Verdict::Challenge,
            adm::Verdict::Reject(r) => rules::Verdict::Reject {
                code: r.code,
                reason: r.reason,
            },
        })
    }

    /// Instantiates a quirks module for one call: the call's decisions share the instance, so
    /// a call pays one instantiation however many messages it carries, and no state survives
    /// into another call.
    pub fn quirks_instance(
        &self,
        pre: &Prepared,
        limits: &Limits,
    ) -> Result<QuirksInstance, (Failure, String)> {
        let Prepared(Pre::Quirks(pre, _)) = pre else {
            return Err((Failure::Invalid, "not a quirks module".into()));
        };
        let _ticking = self.ticker.enter();
        let mut store = self.store(limits)?;
        let quirks = pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e, true))?;
        Ok(QuirksInstance {
            store,
            quirks,
            ticker: self.ticker.clone(),
        })
    }
}

/// A quirks module instantiated for one call ([`Sandbox::quirks_instance`]).
pub struct QuirksInstance {
    store: Store<GuestStateHandle>,
    quirks: quirks_world::Quirks,
    ticker: Arc<EpochTicker>,
}

impl QuirksInstance {
    /// Asks the module, with a fresh fuel and deadline budget. After a failure the instance
    /// must be dropped (a trapped component instance cannot be entered again).
    pub fn adjust(
        &mut self,
        limits: &Limits,
        msg: &rules::Message,
    ) -> Result<rules::Edits, (Failure, String)> {
        let store = &mut self.store;
        store.data_mut().0.memory_refused = false;
        let _ticking = self.ticker.enter();
        budget(store, limits)?;
        let answer = self
            .quirks
            .csps_policy_adjuster()
            .call_adjust(&mut *store, &quirk_message(msg))
            .map_err(|e| classify(store, e, false))?;
        Ok(rules::Edits {
            headers: answer
                .headers
                .into_iter()
                .map(|h| match h {
                    qk::HeaderEdit::Set(h) => rules::HeaderEdit::Set(h.name, h.value),
                    qk::HeaderEdit::Add(h) => rules::HeaderEdit::Add(h.name, h.value),
                    qk::HeaderEdit::Remove(n) => rules::HeaderEdit::Remove(n),
                })
                .collect(),
            sdp: answer
                .sdp
                .into_iter()
                .map(|s| match s {
                    qk::SdpEdit::DropCodec(c) => rules::SdpEdit::DropCodec(c),
                    qk::SdpEdit::ForcePtime(p) => rules::SdpEdit::ForcePtime(p),
                    qk::SdpEdit::StripAttribute(a) => rules::SdpEdit::StripAttribute(a),
                })
                .collect(),
        })
    }
}

impl Sandbox {
    /// True while the epoch ticker sleeps (no decision for a second).
    pub fn ticker_asleep(&self) -> bool {
        self.ticker.parked.load(Ordering::SeqCst)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

/// Gives a store one decision's fuel and wall-time deadline.
fn budget(store: &mut Store<GuestStateHandle>, limits: &Limits) -> Result<(), (Failure, String)> {
    store
        .set_fuel(limits.fuel)
        .map_err(|e| (Failure::Unavailable, format!("setting fuel: {e:#}")))?;
    let ticks = u64::try_from(limits.deadline.as_millis()).unwrap_or(u64::MAX);
    store.set_epoch_deadline(ticks.saturating_add(1));
    Ok(())
}

/// A core module or anything else than a component gets a message that says what to do.
fn check_header(wasm: &[u8]) -> Result<(), String> {
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 0x01, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 0x01, 0, 0, 0]) => Err(
            "this is a core WebAssembly module, not a component: build the policy for \
             wasm32-wasip2 (cargo build --target wasm32-wasip2), which makes components"
                .into(),
        ),
        _ => Err("not a WebAssembly component (it must start with \\0asm, layer 1)".into()),
    }
}

/// The name of an exported `csps:policy` interface of another version than [`WIT_VERSION`],
/// if the component has one (a module built with an older SDK).
fn outdated_interface(engine: &Engine, component: &Component) -> Option<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name)
        .find(|name| {
            name.strip_prefix("csps:policy/")
                .and_then(|rest| rest.split_once('@'))
                .is_some_and(|(_, version)| version != WIT_VERSION)
        })
        .map(str::to_owned)
}

fn direction_from(d: qk::Direction) -> rules::Direction {
    match d {
        qk::Direction::ToDevice => rules::Direction::ToDevice,
        qk::Direction::FromDevice => rules::Direction::FromDevice,
    }
}

/// Answers `wasi:random/insecure-seed` (any 0.2 version the component imports) with a constant.
fn define_seed(
    linker: &mut Linker<GuestStateHandle>,
    engine: &Engine,
    component: &Component,
) -> Result<(), String> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if name.starts_with("wasi:random/insecure-seed@") {
            linker
                .instance(name)
                .and_then(|mut i| {
                    i.func_wrap("insecure-seed", |_, (): ()| {
                        Ok(((0x6373_7073_u64, 0x706f_6c69_6379_u64),))
                    })
                })
                .map_err(|e| format!("defining {name}: {e:#}"))?;
        }
    }
    Ok(())
}

/// Sorts a failed instantiation or call into fuel, timeout, memory, pool exhaustion or trap.
fn classify(
    store: &Store<GuestStateHandle>,
    e: wasmtime::Error,
    instantiating: bool,
) -> (Failure, String) {
    let msg = format!("{e:#}");
    if instantiating
        && e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
    {
        return (Failure::Unavailable, msg);
    }
    let failure = match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure::Fuel,
        Some(Trap::Interrupt) => Failure::Timeout,
        _ if store.data().0.memory_refused => Failure::Memory,
        _ => Failure::Trap,
    };
    (failure, msg)
}

fn route_request(r: &rules::RouteRequest) -> rt::RouteRequest {
    rt::RouteRequest {
        caller: rt::Caller {
            user: r.caller.user.clone(),
            domain: r.caller.domain.clone(),
            phone_number: r.caller.phone_number.clone(),
            device: r.caller.device.clone(),
            attributes: r
                .caller
                .attributes
                .iter()
                .map(|(name, value)| rt::Attribute {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        },
        dialled: r.dialled.clone(),
        local_match: r.local_match.clone(),
    }
}

fn ip(a: std::net::IpAddr) -> adm::IpAddress {
    match a {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            adm::IpAddress::V4((a, b, c, d))
        }
        std::net::IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            adm::IpAddress::V6((a, b, c, d, e, f, g, h))
        }
    }
}

fn register_request(r: &rules::RegisterRequest) -> adm::RegisterRequest {
    adm::RegisterRequest {
        source: ip(r.source.ip().to_canonical()),
        source_port: r.source.port(),
        transport: match r.transport {
            rules::Transport::Udp => adm::Transport::Udp,
            rules::Transport::Tcp => adm::Transport::Tcp,
            rules::Transport::Tls => adm::Transport::Tls,
            rules::Transport::Ws => adm::Transport::Ws,
            _ => adm::Transport::Wss,
        },
        user_agent: r.user_agent.clone(),
        aor: r.aor.clone(),
        trusted_ranges: r
            .trusted
            .iter()
            .map(|t| adm::IpRange {
                address: ip(t.addr),
                prefix: t.prefix,
            })
            .collect(),
    }
}

fn quirk_message(m: &rules::Message) -> qk::Message {
    qk::Message {
        direction: match m.direction {
            rules::Direction::ToDevice => qk::Direction::ToDevice,
            rules::Direction::FromDevice => qk::Direction::FromDevice,
        },
        start: match &m.start {
            rules::StartLine::Request(method) => qk::StartLine::Request(method.clone()),
            rules::StartLine::Response(code) => qk::StartLine::Response(*code),
        },
        headers: m.headers.clone(),
        sdp: m.sdp.clone(),
        user_agent: m.user_agent.clone(),
    }
}
