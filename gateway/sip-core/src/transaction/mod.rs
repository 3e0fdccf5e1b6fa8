//! The SIP transaction layer (RFC 3261 §17 with RFC 6026's Accepted state), sans-IO: it owns every
//! client and server transaction, matches messages to them, retransmits, absorbs retransmissions
//! and runs Timers A–M. Time comes in with each input; nothing here reads a clock or a socket.
//!
//! The driver feeds one [`Input`] at a time, drains [`Transactions::poll_output`], and sleeps
//! until [`Transactions::poll_timeout`]:
//!
//! ```
//! use std::time::Instant;
//! use csps_sip::transaction::{Event, Input, Output, Transactions, TxnConfig};
//! use csps_sip::{Remote, Transport, parse};
//!
//! let mut txns = Transactions::new(TxnConfig::default());
//! let phone = Remote {
//!     transport: Transport::Udp,
//!     addr: "192.0.2.7:5060".parse().unwrap(),
//!     flow: None,
//! };
//! let datagram = b"OPTIONS sip:gw.example.com SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKa1\r\n\
//!     From: <sip:alice@example.com>;tag=1\r\n\
//!     To: <sip:gw.example.com>\r\n\
//!     Call-ID: c1\r\n\
//!     CSeq: 1 OPTIONS\r\n\
//!     Max-Forwards: 70\r\n\r\n";
//! let mut now = Instant::now(); // the driver's clock; the core never reads one
//! let msg = parse(datagram).unwrap().message;
//! txns.handle_input(Input::Receive { now, from: phone, msg });
//! let mut sent = Vec::new();
//! loop {
//!     while let Some(out) = txns.poll_output() {
//!         match out {
//!             // A real driver writes the bytes to the socket or connection of `to`.
//!             Output::Transmit { to, msg, encoded } => {
//!                 sent.push((to, encoded.map_or_else(|| msg.to_bytes(), |b| b.to_vec())))
//!             }
//!             Output::Resend { to, bytes, .. } => sent.push((to, bytes.to_vec())),
//!             Output::Event(Event::Request { key, req, .. }) => {
//!                 txns.respond(now, &key, req.response(200, "OK")).unwrap();
//!             }
//!             _ => {} // responses, timeouts, Terminated: the app's business
//!         }
//!     }
//!     // A real driver `select!`s on its sockets and `sleep_until(deadline)` here.
//!     let Some(deadline) = txns.poll_timeout() else { break };
//!     now = deadline;
//!     txns.handle_input(Input::Timeout(now));
//! }
//! assert_eq!(sent.len(), 1); // the 200 OK
//! assert!(txns.is_empty()); // Timer J (32 s) has run out
//! ```
//!
//! Files: `timer.rs` (the timer table and queue), `key.rs` (matching and the messages the layer
//! builds), `client.rs` and `server.rs` (the four state machines).

mod client;
mod key;
mod server;
mod timer;

use std::collections::{HashMap, VecDeque};
use std::fmt;

use bytes::Bytes;
use std::time::{Duration, Instant};

use crate::message::{Message, Method, Request, Response};
use crate::transport::Remote;

pub use key::{MAGIC_COOKIE, ack_for};
pub use timer::TxnTimer;

use client::{ClientInvite, ClientNonInvite};
use server::{ServerInvite, ServerNonInvite};
use timer::{TimerQueue, TimerTable};

/// Timer settings (RFC 3261 Table 4) and the layer's own limits.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxnConfig {
    /// RTT estimate T1 (default 500 ms): first retransmit interval; 64*T1 is the transaction timeout.
    pub t1: Duration,
    /// Maximum retransmit interval T2 for non-INVITE requests and INVITE responses (default 4 s).
    pub t2: Duration,
    /// Maximum time a message stays in the network, T4 (default 5 s).
    pub t4: Duration,
    /// How long a server INVITE waits for the app before sending 100 Trying itself (default 200 ms, §17.2.1).
    pub trying_delay: Duration,
    /// How long an INVITE transaction (either side) waits after its last provisional response for
    /// the final one before it reports a timeout and is dropped (default 300 s, Timer C's role).
    pub invite_answer_timeout: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            trying_delay: Duration::from_millis(200),
            invite_answer_timeout: Duration::from_secs(300),
        }
    }
}

impl TxnConfig {
    /// 64*T1: Timers B, F, H, J (UDP), L and M.
    fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Names one transaction for its lifetime; stale after [`Event::Terminated`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnKey {
    idx: u32,
    generation: u32,
}

impl fmt::Display for TxnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn-{}.{}", self.idx, self.generation)
    }
}

/// Something that happened outside: a message arrived, or time passed.
#[derive(Clone, Debug)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // moved once into `handle_input`, never stored
pub enum Input {
    /// A parsed message arrived from `from` at `now`.
    Receive {
        /// Current time.
        now: Instant,
        /// Where it came from (transport, source address and flow), where responses go (§18.2.2).
        from: Remote,
        /// The message.
        msg: Message,
    },
    /// Time is now this; fire every timer due.
    Timeout(Instant),
}

/// Work for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send `msg` to `to` (on its flow when it has one).
    Transmit {
        /// Destination.
        to: Remote,
        /// The message.
        msg: Message,
        /// `msg` already in wire form (the layer keeps it to repeat it): send these bytes.
        encoded: Option<Bytes>,
    },
    /// Send again a response already sent in wire form (a server transaction answering a
    /// retransmitted request, or Timer G); kept encoded so a transaction waiting out Timer J
    /// holds a few hundred bytes, not a parsed message.
    Resend {
        /// Destination.
        to: Remote,
        /// The response's status code (for counting).
        status: u16,
        /// The response in wire form.
        bytes: Bytes,
    },
    /// Something the application must know.
    Event(Event),
}

/// What the transaction layer tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new server transaction: the app must answer with [`Transactions::respond`].
    Request {
        /// The new server transaction.
        key: TxnKey,
        /// Where the request came from.
        from: Remote,
        /// The request.
        req: Request,
    },
    /// An ACK that belongs to no transaction the layer absorbs: ACK to a 2xx, or a stray one.
    Ack {
        /// Where it came from.
        from: Remote,
        /// The ACK.
        req: Request,
    },
    /// A CANCEL matched an INVITE still waiting for its final response; the layer already
    /// answered the CANCEL with 200, the app should answer the INVITE with 487.
    Cancel {
        /// The INVITE's server transaction.
        key: TxnKey,
        /// Where the CANCEL came from.
        from: Remote,
        /// The CANCEL.
        req: Request,
    },
    /// A client transaction received a response (2xx retransmissions in Accepted included, RFC 6026).
    Response {
        /// The client transaction.
        key: TxnKey,
        /// The response.
        resp: Response,
    },
    /// Timer B or F (client), H (no ACK) or the INVITE answer guard fired: treat it as a 408.
    Timeout {
        /// The transaction.
        key: TxnKey,
    },
    /// The transaction is gone; drop any index entry for its key.
    Terminated {
        /// The transaction.
        key: TxnKey,
    },
    /// A response that matches no client transaction (the app may count and drop it).
    StrayResponse {
        /// Where it came from.
        from: Remote,
        /// The response.
        resp: Response,
    },
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// The key names no live transaction (it may have terminated).
    #[error("no such transaction")]
    UnknownTransaction,
    /// `respond` was called with a client transaction's key.
    #[error("not a server transaction")]
    NotServer,
    /// The response is not allowed in the transaction's state (e.g. after a final response).
    #[error("response not allowed in this transaction state")]
    WrongState,
    /// A status code outside 100..=699.
    #[error("invalid status code {0}")]
    InvalidStatus(u16),
    /// The request has no top Via with a branch, or no readable CSeq.
    #[error("request has no Via branch or no CSeq")]
    NoBranch,
    /// ACK is sent without a transaction ([`Transactions::send_stateless`]).
    #[error("ACK does not create a transaction")]
    Ack,
    /// A live client transaction already uses this branch and method.
    #[error("a client transaction with this branch and method already exists")]
    Duplicate,
    /// CANCEL is only possible for a client INVITE that received a provisional response (§9.1).
    #[error("the INVITE cannot be cancelled in its current state")]
    NotCancellable,
}

/// What a transaction does after handling something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Stay,
    Terminate,
}

/// The four state machines.
#[allow(clippy::enum_variant_names)] // the RFC's names
enum Machine {
    ClientInvite(ClientInvite),
    ClientNonInvite(ClientNonInvite),
    ServerInvite(ServerInvite),
    ServerNonInvite(ServerNonInvite),
}

impl Machine {
    fn is_client(&self) -> bool {
        matches!(self, Machine::ClientInvite(_) | Machine::ClientNonInvite(_))
    }
}

/// One transaction: what every state machine shares.
struct Txn {
    key: TxnKey,
    /// Its entry in the client or server index.
    index_key: Box<str>,
    /// Where requests (client) or responses (server) go.
    remote: Remote,
    /// Current retransmission interval of Timer A, E or G.
    interval: Duration,
    timers: TimerTable,
    machine: Machine,
}

/// What a state machine needs besides its own transaction.
struct Ctx<'a> {
    now: Instant,
    cfg: &'a TxnConfig,
    queue: &'a mut TimerQueue,
    out: &'a mut VecDeque<Output>,
}

impl Txn {
    fn reliable(&self) -> bool {
        self.remote.transport.is_reliable()
    }

    fn arm(&mut self, cx: &mut Ctx<'_>, t: TxnTimer, after: Duration) {
        // An unrepresentable deadline is "never".
        if let Some(at) = cx.now.checked_add(after) {
            cx.queue.arm(&mut self.timers, self.key, t, at);
        }
    }

    fn disarm(&mut self, cx: &mut Ctx<'_>, t: TxnTimer) {
        cx.queue.disarm(&mut self.timers, self.key, t);
    }

    fn send(&self, cx: &mut Ctx<'_>, msg: Message) {
        cx.out.push_back(Output::Transmit {
            to: self.remote,
            msg,
            encoded: None,
        });
    }

    fn event(cx: &mut Ctx<'_>, ev: Event) {
        cx.out.push_back(Output::Event(ev));
    }
}

/// Transactions in a slab: O(1) lookup by key, slots reused with a new generation. Each
/// transaction is boxed so a slot costs 16 bytes: after a burst (Timer J keeps every answered
/// non-INVITE transaction 32 s) the slot vector is all that stays allocated until the layer is
/// idle again, when [`Slab::reclaim`] drops it.
#[derive(Default)]
struct Slab {
    slots: Vec<(u32, Option<Box<Txn>>)>,
    free: Vec<u32>,
    live: usize,
    /// Generation of slots created from now on: above every generation handed out before the
    /// last [`Slab::reclaim`], so a stale key can never name a new transaction.
    fresh_generation: u32,
}

impl Slab {
    fn next_key(&self) -> TxnKey {
        match self.free.last() {
            Some(&idx) => TxnKey {
                idx,
                generation: self.slots[idx as usize].0,
            },
            None => TxnKey {
                idx: u32::try_from(self.slots.len()).unwrap_or(u32::MAX),
                generation: self.fresh_generation,
            },
        }
    }

    /// Stores `txn`, whose key must be [`Self::next_key`].
    fn insert(&mut self, txn: Txn) {
        let idx = txn.key.idx;
        if self.free.last() == Some(&idx) {
            self.free.pop();
            self.slots[idx as usize].1 = Some(Box::new(txn));
        } else {
            self.slots.push((txn.key.generation, Some(Box::new(txn))));
        }
        self.live += 1;
    }

    fn get_mut(&mut self, key: TxnKey) -> Option<&mut Txn> {
        match self.slots.get_mut(key.idx as usize) {
            Some((g, Some(t))) if *g == key.generation => Some(t),
            _ => None,
        }
    }

    fn get(&self, key: TxnKey) -> Option<&Txn> {
        match self.slots.get(key.idx as usize) {
            Some((g, Some(t))) if *g == key.generation => Some(t),
            _ => None,
        }
    }

    fn remove(&mut self, key: TxnKey) -> Option<Txn> {
        let slot = self.slots.get_mut(key.idx as usize)?;
        if slot.0 != key.generation || slot.1.is_none() {
            return None;
        }
        let txn = slot.1.take();
        slot.0 = slot.0.wrapping_add(1);
        self.free.push(key.idx);
        self.live -= 1;
        txn.map(|t| *t)
    }

    /// With no live transaction, frees the slot and free-list storage a burst left behind.
    fn reclaim(&mut self) {
        if self.live != 0 || self.slots.capacity() < RECLAIM_ABOVE {
            return;
        }
        let highest = self.slots.iter().map(|s| s.0).max().unwrap_or(0);
        self.fresh_generation = self.fresh_generation.max(highest);
        self.slots = Vec::new();
        self.free = Vec::new();
    }
}

/// Storage for fewer entries than this is kept when the layer goes idle (no churn at low load).
const RECLAIM_ABOVE: usize = 4096;

/// Shrinks an index map that a burst grew when it is mostly empty again (amortised: the map must
/// lose seven eighths of its capacity between two shrinks).
fn shrink_sparse<V>(map: &mut HashMap<Box<str>, V>) {
    if map.capacity() >= RECLAIM_ABOVE && map.len() * 8 < map.capacity() {
        map.shrink_to_fit();
    }
}

/// Every client and server transaction of an endpoint, driven by [`Input`]s and commands.
pub struct Transactions {
    cfg: TxnConfig,
    slab: Slab,
    queue: TimerQueue,
    out: VecDeque<Output>,
    /// §17.2.3 keys of server transactions.
    servers: HashMap<Box<str>, TxnKey>,
    /// §17.1.3 keys (branch and CSeq method) of client transactions.
    clients: HashMap<Box<str>, TxnKey>,
}

impl fmt::Debug for Transactions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactions")
            .field("live", &self.slab.live)
            .field("timers", &self.queue.len())
            .field("queued_output", &self.out.len())
            .finish()
    }
}

impl Transactions {
    /// An empty transaction layer. T1 is raised to at least 1 ms and T2 to at least T1, so a
    /// retransmission timer can never be due again at the instant it fires.
    pub fn new(mut cfg: TxnConfig) -> Self {
        cfg.t1 = cfg.t1.max(Duration::from_millis(1));
        cfg.t2 = cfg.t2.max(cfg.t1);
        Transactions {
            cfg,
            slab: Slab::default(),
            queue: TimerQueue::default(),
            out: VecDeque::new(),
            servers: HashMap::new(),
            clients: HashMap::new(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &TxnConfig {
        &self.cfg
    }

    /// Feeds one input; then drain [`Self::poll_output`].
    pub fn handle_input(&mut self, input: Input) {
        match input {
            Input::Receive { now, from, msg } => match msg {
                Message::Request(req) => self.on_request(now, from, req),
                Message::Response(resp) => self.on_response(now, from, resp),
            },
            Input::Timeout(now) => self.on_timeout(now),
        }
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the earliest timer fires; feed [`Input::Timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.first()
    }

    /// Number of live transactions.
    pub fn len(&self) -> usize {
        self.slab.live
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.slab.live == 0
    }

    /// Answers a server transaction (any 1xx–6xx). A 2xx to INVITE moves it to Accepted (RFC 6026,
    /// Timer L), where further 2xx retransmissions from the app are sent as they come.
    pub fn respond(&mut self, now: Instant, key: &TxnKey, resp: Response) -> Result<(), TxnError> {
        if !(100..=699).contains(&resp.status) {
            return Err(TxnError::InvalidStatus(resp.status));
        }
        let (slab, mut cx) = self.split(now);
        let txn = slab.get_mut(*key).ok_or(TxnError::UnknownTransaction)?;
        let next = match &txn.machine {
            Machine::ServerInvite(_) => txn.server_invite_respond(&mut cx, resp)?,
            Machine::ServerNonInvite(_) => txn.server_non_invite_respond(&mut cx, resp)?,
            _ => return Err(TxnError::NotServer),
        };
        if next == Next::Terminate {
            self.terminate(*key);
        }
        Ok(())
    }

    /// Starts a client transaction and sends `req` to `to`. The request must carry its top Via with
    /// a branch (RFC 3261 §8.1.1.7) and a CSeq; ACK is not a transaction (see [`Self::send_stateless`]).
    pub fn send_request(
        &mut self,
        now: Instant,
        to: Remote,
        req: Request,
    ) -> Result<TxnKey, TxnError> {
        if req.method == Method::Ack {
            return Err(TxnError::Ack);
        }
        let index_key = key::client_key(&req.headers).ok_or(TxnError::NoBranch)?;
        if self.clients.contains_key(&index_key) {
            return Err(TxnError::Duplicate);
        }
        let key = self.slab.next_key();
        let machine = if req.method == Method::Invite {
            Machine::ClientInvite(ClientInvite::Calling(Box::new(req.clone())))
        } else if to.transport.is_reliable() {
            // No retransmissions: the request need not be kept.
            Machine::ClientNonInvite(ClientNonInvite::Trying(None))
        } else {
            Machine::ClientNonInvite(ClientNonInvite::Trying(Some(Box::new(req.clone()))))
        };
        let mut txn = Txn {
            key,
            index_key: index_key.clone(),
            remote: to,
            interval: self.cfg.t1,
            timers: TimerTable::default(),
            machine,
        };
        let (_, mut cx) = self.split(now);
        txn.client_start(&mut cx, req);
        self.clients.insert(index_key, key);
        self.slab.insert(txn);
        Ok(key)
    }

    /// Cancels a client INVITE that received a provisional response (RFC 3261 §9.1): builds the
    /// CANCEL from the stored INVITE and starts its own client transaction.
    pub fn cancel(&mut self, now: Instant, invite: &TxnKey) -> Result<TxnKey, TxnError> {
        let txn = self.slab.get(*invite).ok_or(TxnError::UnknownTransaction)?;
        let (cancel, to) = match &txn.machine {
            Machine::ClientInvite(ClientInvite::Proceeding(req)) => {
                (key::cancel_for(req), txn.remote)
            }
            _ => return Err(TxnError::NotCancellable),
        };
        self.send_request(now, to, cancel)
    }

    /// Sends a message outside any transaction (ACK to a 2xx, stateless answers), so the driver
    /// has a single output path.
    pub fn send_stateless(&mut self, to: Remote, msg: Message) {
        self.out.push_back(Output::Transmit {
            to,
            msg,
            encoded: None,
        });
    }

    fn split(&mut self, now: Instant) -> (&mut Slab, Ctx<'_>) {
        (
            &mut self.slab,
            Ctx {
                now,
                cfg: &self.cfg,
                queue: &mut self.queue,
                out: &mut self.out,
            },
        )
    }

    /// Removes a transaction with its timers and index entry, and tells the app.
    fn terminate(&mut self, key: TxnKey) {
        let Some(mut txn) = self.slab.remove(key) else {
            return;
        };
        self.queue.disarm_all(&mut txn.timers, key);
        let index = if txn.machine.is_client() {
            &mut self.clients
        } else {
            &mut self.servers
        };
        if index.get(&txn.index_key) == Some(&key) {
            index.remove(&txn.index_key);
            shrink_sparse(index);
        }
        self.slab.reclaim();
        self.out.push_back(Output::Event(Event::Terminated { key }));
    }

    fn on_timeout(&mut self, now: Instant) {
        while let Some((key, t)) = self.queue.pop_due(now) {
            let (slab, mut cx) = self.split(now);
            let Some(txn) = slab.get_mut(key) else {
                continue;
            };
            TimerQueue::fired(&mut txn.timers, t);
            if txn.on_timer(&mut cx, t) == Next::Terminate {
                self.terminate(key);
            }
        }
    }

    fn on_response(&mut self, now: Instant, from: Remote, resp: Response) {
        // §17.1.3: top Via branch and CSeq method.
        let key = key::client_key(&resp.headers).and_then(|k| self.clients.get(&k).copied());
        let Some(key) = key else {
            self.out
                .push_back(Output::Event(Event::StrayResponse { from, resp }));
            return;
        };
        let (slab, mut cx) = self.split(now);
        let Some(txn) = slab.get_mut(key) else {
            return;
        };
        if txn.on_response(&mut cx, from, resp) == Next::Terminate {
            self.terminate(key);
        }
    }

    fn on_request(&mut self, now: Instant, from: Remote, req: Request) {
        match req.method {
            Method::Ack => {
                // §17.2.3: an ACK matches the INVITE's server transaction.
                let k = key::server_key(&req, &Method::Invite);
                let key = self.servers.get(&k).copied();
                let (slab, mut cx) = self.split(now);
                let Some((key, txn)) = key.and_then(|k| slab.get_mut(k).map(|t| (k, t))) else {
                    cx.out.push_back(Output::Event(Event::Ack { from, req }));
                    return;
                };
                if txn.server_ack(&mut cx, from, req) == Next::Terminate {
                    self.terminate(key);
                }
            }
            Method::Cancel => self.on_cancel(now, from, req),
            _ => {
                let k = key::server_key(&req, &req.method);
                if let Some(&key) = self.servers.get(&k) {
                    let (slab, mut cx) = self.split(now);
                    if let Some(txn) = slab.get_mut(key) {
                        txn.server_retransmission(&mut cx, from);
                    }
                    return;
                }
                self.new_server(now, from, req, k);
            }
        }
    }

    /// A request that matches no transaction: a new server transaction, handed to the app.
    fn new_server(&mut self, now: Instant, from: Remote, req: Request, index_key: Box<str>) {
        let key = self.slab.next_key();
        let machine = if req.method == Method::Invite {
            Machine::ServerInvite(ServerInvite::Proceeding(Box::new(key::trying(&req))))
        } else {
            Machine::ServerNonInvite(ServerNonInvite::Trying)
        };
        let mut txn = Txn {
            key,
            index_key: index_key.clone(),
            remote: from,
            interval: self.cfg.t1,
            timers: TimerTable::default(),
            machine,
        };
        let (_, mut cx) = self.split(now);
        txn.server_start(&mut cx);
        self.servers.insert(index_key, key);
        self.slab.insert(txn);
        self.out
            .push_back(Output::Event(Event::Request { key, from, req }));
    }

    /// RFC 3261 §9.2: a CANCEL is its own server transaction, answered here with 200 when it
    /// matches an INVITE server transaction (same matching as §17.2.3 with method INVITE) and
    /// 481 otherwise. The app hears of it only when the INVITE still awaits its final response.
    fn on_cancel(&mut self, now: Instant, from: Remote, req: Request) {
        let own = key::server_key(&req, &Method::Cancel);
        if let Some(&key) = self.servers.get(&own) {
            // A retransmitted CANCEL: answered from its own transaction.
            let (slab, mut cx) = self.split(now);
            if let Some(txn) = slab.get_mut(key) {
                txn.server_retransmission(&mut cx, from);
            }
            return;
        }
        let invite_key = self
            .servers
            .get(&key::server_key(&req, &Method::Invite))
            .copied();
        let invite = invite_key.and_then(|k| self.slab.get(k).map(|t| (k, t)));
        let (resp, notify) = match invite {
            Some((k, txn)) => {
                let mut resp = req.response(200, "OK");
                let pending = match &txn.machine {
                    Machine::ServerInvite(ServerInvite::Proceeding(last)) => {
                        // §9.2: the CANCEL's To tag SHOULD be the INVITE response's.
                        if let Some(tag) = key::to_tag(&last.headers) {
                            key::set_to_tag(&mut resp, &tag);
                        }
                        true
                    }
                    _ => false,
                };
                (resp, pending.then_some(k))
            }
            None => (req.response(481, "Call/Transaction Does Not Exist"), None),
        };
        let mut resp = resp;
        key::set_to_tag(&mut resp, &key::derived_tag(&req));
        let key = self.slab.next_key();
        let mut txn = Txn {
            key,
            index_key: own.clone(),
            remote: from,
            interval: self.cfg.t1,
            timers: TimerTable::default(),
            machine: Machine::ServerNonInvite(ServerNonInvite::Trying),
        };
        let (_, mut cx) = self.split(now);
        let next = txn
            .server_non_invite_respond(&mut cx, resp)
            .unwrap_or(Next::Terminate);
        self.servers.insert(own, key);
        self.slab.insert(txn);
        if let Some(invite) = notify {
            self.out.push_back(Output::Event(Event::Cancel {
                key: invite,
                from,
                req,
            }));
        }
        if next == Next::Terminate {
            self.terminate(key);
        }
    }
}

impl Txn {
    fn on_timer(&mut self, cx: &mut Ctx<'_>, t: TxnTimer) -> Next {
        match self.machine {
            Machine::ClientInvite(_) => self.client_invite_timer(cx, t),
            Machine::ClientNonInvite(_) => self.client_non_invite_timer(cx, t),
            Machine::ServerInvite(_) => self.server_invite_timer(cx, t),
            Machine::ServerNonInvite(_) => self.server_non_invite_timer(cx, t),
        }
    }

    fn on_response(&mut self, cx: &mut Ctx<'_>, from: Remote, resp: Response) -> Next {
        // A stream transport's answer names the connection; keep using it (ACK, CANCEL).
        if self.remote.flow.is_none() && from.transport == self.remote.transport {
            self.remote.flow = from.flow;
        }
        match self.machine {
            Machine::ClientInvite(_) => self.client_invite_response(cx, resp),
            Machine::ClientNonInvite(_) => self.client_non_invite_response(cx, resp),
            // Server transactions are not in the client index.
            _ => Next::Stay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_timers_cannot_spin() {
        let t = Transactions::new(TxnConfig {
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            ..TxnConfig::default()
        });
        assert_eq!(t.config().t1, Duration::from_millis(1));
        assert_eq!(t.config().t2, Duration::from_millis(1));
    }

    #[test]
    // A test needs one real instant to start its simulated clock from.
    #[allow(clippy::disallowed_methods)]
    fn a_burst_is_reclaimed_when_idle_and_old_keys_stay_stale() {
        let mut t = Transactions::new(TxnConfig::default());
        let from = Remote {
            transport: crate::Transport::Udp,
            addr: "192.0.2.7:5060".parse().expect("address"),
            flow: None,
        };
        let now = Instant::now();
        let mut keys = Vec::new();
        for i in 0..5000 {
            let text = format!(
                "OPTIONS sip:gw SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bK{i}\r\n\
                 From: <sip:a@b>;tag=1\r\nTo: <sip:gw>\r\nCall-ID: c{i}\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n"
            );
            let msg = crate::parse(text.as_bytes()).expect("parses").message;
            t.handle_input(Input::Receive { now, from, msg });
            while let Some(out) = t.poll_output() {
                if let Output::Event(Event::Request { key, req, .. }) = out {
                    t.respond(now, &key, req.response(200, "OK"))
                        .expect("answer");
                    keys.push(key);
                }
            }
        }
        assert_eq!(t.len(), 5000);
        // Timer J ends every one of them.
        t.handle_input(Input::Timeout(now + Duration::from_secs(33)));
        while t.poll_output().is_some() {}
        assert!(t.is_empty());
        assert_eq!(t.slab.slots.capacity(), 0, "slots freed");
        assert!(t.servers.capacity() < RECLAIM_ABOVE, "index shrunk");
        // A key from before the reclaim never names a later transaction.
        let text = "OPTIONS sip:gw SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKnew\r\n\
                    From: <sip:a@b>;tag=1\r\nTo: <sip:gw>\r\nCall-ID: n\r\n\
                    CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n";
        let msg = crate::parse(text.as_bytes()).expect("parses").message;
        let later = now + Duration::from_secs(34);
        t.handle_input(Input::Receive {
            now: later,
            from,
            msg,
        });
        while t.poll_output().is_some() {}
        let stale = keys[0];
        let resp = Response {
            status: 200,
            reason: "OK".into(),
            headers: crate::Headers::new(),
            body: Default::default(),
        };
        assert_eq!(
            t.respond(later, &stale, resp),
            Err(TxnError::UnknownTransaction)
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_transaction_stays_small() {
        // The design target is ~200k live transactions: requests and responses are boxed or
        // encoded, so the per-transaction state is the timer table plus a few words.
        let size = std::mem::size_of::<Txn>();
        assert!(size <= 360, "Txn is {size} bytes");
        // Slots hold boxed transactions: an idle slot left by a burst costs 16 bytes.
        assert!(std::mem::size_of::<(u32, Option<Box<Txn>>)>() <= 16);
        // A non-INVITE final response is held as `Bytes` inline (32 bytes of handle to its wire
        // form, a few hundred bytes) rather than a boxed parsed `Response` (~1 KiB of headers).
        assert!(std::mem::size_of::<Machine>() <= 40);
    }
}
