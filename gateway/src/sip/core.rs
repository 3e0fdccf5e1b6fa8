//! The SIP core task: one task owns the transaction layer, the registrar and the table of open
//! flows. It takes parsed messages from the receive tasks, feeds the sans-IO cores with the time,
//! carries out what they ask (send, persist, answer) and sleeps until their next timer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use csps_sip::registrar::{Binding, RegisterOutcome, Registrar, RegistrarConfig};
use csps_sip::transaction::{Event, Input, Output, Transactions, TxnConfig, TxnKey};
use csps_sip::{FlowId, Message, Method, Remote, Request, Response, SipHeaders, Transport};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch};

use super::accounts::AccountCache;
use super::transport::{Inbound, UDP_FLOW_BASE};
use super::writer::Commit;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::{BindingKey, Registration};

/// Methods this version implements; the others get 405 with this list.
pub const ALLOW: &str =
    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REGISTER, SUBSCRIBE";
/// Methods implemented here: outside a call's dialog, those that only make sense inside one get
/// 481 (RFC 3261 §12.2.2), not 405.
const IMPLEMENTED_HERE: &[Method] = &[
    Method::Register,
    Method::Invite,
    Method::Options,
    Method::Ack,
    Method::Cancel,
    Method::Bye,
    Method::Info,
    Method::Update,
    Method::Prack,
];
/// Queued inbound messages handled per wakeup of the core after the first.
const INBOUND_BATCH: usize = 256;
/// How often a phone behind NAT gets a keep-alive from the gateway.
const NAT_KEEPALIVE: Duration = Duration::from_secs(20);

/// Commands from the rest of the gateway.
pub enum CoreCommand {
    /// Users changed: here is the new account view.
    Accounts(Arc<AccountCache>),
    /// Stop taking new work; reply when no transaction is left.
    Drain(tokio::sync::oneshot::Sender<()>),
    /// Where the answers to the trunk driver's requests go.
    TrunkAnswers(mpsc::Sender<crate::trunk::driver::CoreAnswer>),
    /// The trunk driver's request (an OPTIONS keep-alive) to proxy `proxy`, on its flow.
    TrunkSend {
        /// The driver's configuration generation, echoed in the answer.
        generation: u64,
        /// The proxy's index.
        proxy: usize,
        /// The proxy's connection.
        to: Remote,
        /// The request (boxed: commands are small otherwise).
        req: Box<Request>,
    },
}

/// What the core needs at start.
pub struct CoreParts {
    /// This server's name.
    pub server_name: String,
    /// Secret for nonces.
    pub secret: [u8; 32],
    /// The policy engine: the registrar asks its admission policy.
    pub policies: Option<Arc<crate::policy::PolicyEngine>>,
    /// UDP sockets by index (flow id − `UDP_FLOW_BASE`).
    pub udp: Vec<Arc<UdpSocket>>,
    /// Messages and flow events from the receive tasks.
    pub inbound: mpsc::Receiver<Inbound>,
    /// Commands.
    pub commands: mpsc::Receiver<CoreCommand>,
    /// Live settings.
    pub settings: watch::Receiver<Arc<Settings>>,
    /// The accounts at start.
    pub accounts: Arc<AccountCache>,
    /// Bindings this server held before a restart (not expired).
    pub bindings: Vec<Registration>,
    /// The group-commit writer.
    pub writer: mpsc::Sender<Commit>,
    /// Answers whose bindings are durable.
    pub committed: mpsc::Receiver<Vec<(TxnKey, Response)>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Calls: the switch, and the actions its call tasks send.
    pub calls: (
        crate::calls::Switch,
        mpsc::Receiver<(crate::calls::CallNo, crate::calls::CallAction)>,
    ),
    /// The calls' user states, for the busy-lamp fields, and the running calls (their lines,
    /// should states be lost).
    pub user_states: (
        broadcast::Receiver<crate::calls::UserState>,
        crate::calls::Directory,
    ),
}

/// Registrar settings from the live configuration.
pub fn registrar_config(server_name: &str, s: &Settings) -> RegistrarConfig {
    RegistrarConfig {
        server_name: server_name.to_owned(),
        default_domain: s.default_sip_domain.clone(),
        trusted: s.trusted_ips.clone(),
        min_expires: s.min_expires,
        max_expires: s.max_expires,
        default_expires: 3600.min(s.max_expires),
        nat_expires: s.nat_expires,
        auth_failure_limit: s.auth_failure_limit,
        auth_failure_window: Duration::from_secs(60),
        lockout: Duration::from_secs(300),
        nonce_lifetime: Duration::from_secs(300),
        algorithms: s
            .digest_algorithms
            .iter()
            .filter_map(|a| csps_sip::digest::Algorithm::from_token(a))
            .collect(),
    }
}

struct FlowHandle {
    tx: mpsc::Sender<Bytes>,
    local: SocketAddr,
}

struct Core {
    server_name: String,
    txns: Transactions,
    registrar: Registrar,
    accounts: Arc<AccountCache>,
    flows: HashMap<FlowId, FlowHandle>,
    udp: Vec<Arc<UdpSocket>>,
    writer: mpsc::Sender<Commit>,
    metrics: Arc<Metrics>,
    rng: StdRng,
    /// NAT'ed UDP bindings to keep alive, in the order their next ping is due.
    keepalives: VecDeque<(Instant, BindingKey, SocketAddr, Option<FlowId>)>,
    /// Answers waiting for a durable write.
    pending_commits: usize,
    draining: Option<tokio::sync::oneshot::Sender<()>>,
    out: Vec<u8>,
    /// Registrar counters already mirrored into the metrics.
    seen_auth: (u64, u64),
    calls: crate::calls::Switch,
    /// The trunk driver's channel, and its client transactions (generation, proxy).
    trunk: Option<mpsc::Sender<crate::trunk::driver::CoreAnswer>>,
    trunk_txns: HashMap<TxnKey, (u64, usize)>,
    /// Busy-lamp fields: dialog-event subscriptions and their NOTIFYs.
    blf: crate::blf::Blf,
}

/// Runs the core until the inbound channel closes.
pub async fn run(parts: CoreParts) {
    let CoreParts {
        server_name,
        secret,
        policies,
        udp,
        mut inbound,
        mut commands,
        mut settings,
        accounts,
        bindings,
        writer,
        mut committed,
        metrics,
        calls: (calls, mut call_actions),
        user_states: (mut user_states, directory),
    } = parts;
    let cfg = registrar_config(&server_name, &settings.borrow_and_update());
    let mut registrar = Registrar::new(cfg, secret);
    if let Some(engine) = policies {
        registrar.set_gatekeeper(Box::new(crate::policy::hooks::PolicyGatekeeper(engine)));
    }
    let now_wall = SystemTime::now();
    let now = Instant::now();
    let mut keepalives = VecDeque::new();
    let restored: Vec<Binding> = bindings
        .iter()
        .filter_map(|r| binding_from_record(r, now_wall))
        .collect();
    keepalives.extend(restored.iter().filter_map(|b| keepalive_entry(now, b)));
    let restored_count = restored.len();
    registrar.load(restored);
    metrics.registrations.set(registrar.len() as i64);
    // Logged once the gauge is set: the line tells a reader the restore is complete.
    tracing::info!(
        bindings = restored_count,
        "restored registrations of this server"
    );
    let mut core = Core {
        server_name,
        txns: Transactions::new(TxnConfig::default()),
        registrar,
        accounts,
        flows: HashMap::new(),
        udp,
        writer,
        metrics,
        rng: StdRng::from_os_rng(),
        keepalives,
        pending_commits: 0,
        draining: None,
        out: Vec::with_capacity(2048),
        seen_auth: (0, 0),
        calls,
        trunk: None,
        trunk_txns: HashMap::new(),
        blf: crate::blf::Blf::new(StdRng::from_os_rng()),
    };
    let mut user_states_open = true;
    let (resync_tx, mut resync_rx) = mpsc::channel(1);
    // One timer, re-armed only when the earliest deadline moves (not once per message).
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = core.next_deadline();
        if deadline != armed {
            if let Some(d) = deadline {
                sleep.as_mut().reset(d.into());
            }
            armed = deadline;
        }
        tokio::select! {
            biased;
            Some(replies) = committed.recv() => {
                core.on_committed(replies);
                // Take every batch already written before looking at new requests.
                while let Ok(more) = committed.try_recv() {
                    core.on_committed(more);
                }
            }
            msg = inbound.recv() => {
                let Some(msg) = msg else { break };
                core.on_inbound(msg);
                // Everything already queued is handled in this wakeup; bounded so timers,
                // commits and commands still get their turn under a flood.
                for _ in 0..INBOUND_BATCH {
                    match inbound.try_recv() {
                        Ok(msg) => core.on_inbound(msg),
                        Err(_) => break,
                    }
                }
            }
            Some((no, action)) = call_actions.recv() => {
                core.calls.apply(&mut core.txns, no, action);
                while let Ok((no, action)) = call_actions.try_recv() {
                    core.calls.apply(&mut core.txns, no, action);
                }
            }
            state = user_states.recv(), if user_states_open => match state {
                Ok(s) => core.blf.on_user_state(Instant::now(), s),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "busy-lamp fields fell behind the calls' user states; resyncing from the running calls");
                    if core.blf.on_lagged(Instant::now()) {
                        let (calls, done) = (directory.clone(), resync_tx.clone());
                        tokio::spawn(async move {
                            let lines = crate::blf::lines_of(&calls.list().await);
                            let _ = done.send(lines).await;
                        });
                    }
                }
                Err(broadcast::error::RecvError::Closed) => user_states_open = false,
            },
            Some(lines) = resync_rx.recv() => core.blf.on_resync(Instant::now(), lines),
            Some(cmd) = commands.recv() => match cmd {
                CoreCommand::Accounts(a) => {
                    tracing::debug!(accounts = a.len(), "account view updated");
                    core.blf.on_accounts(Instant::now(), &a);
                    core.accounts = a;
                }
                CoreCommand::Drain(done) => {
                    core.blf.shutdown(Instant::now());
                    core.draining = Some(done);
                }
                CoreCommand::TrunkAnswers(tx) => core.trunk = Some(tx),
                CoreCommand::TrunkSend { generation, proxy, to, req } => {
                    core.trunk_send(generation, proxy, to, *req);
                }
            },
            Ok(()) = settings.changed() => {
                let s = settings.borrow_and_update().clone();
                core.registrar.set_config(registrar_config(&core.server_name, &s));
                tracing::info!(trusted = s.trusted_ips.len(), "SIP settings applied");
            }
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                core.on_timer();
            }
        }
        core.drain_outputs();
        if core.txns.is_empty()
            && core.pending_commits == 0
            && let Some(done) = core.draining.take()
        {
            let _ = done.send(());
        }
    }
}

/// The first keep-alive of a binding behind NAT over UDP (none for other bindings).
fn keepalive_entry(
    now: Instant,
    b: &Binding,
) -> Option<(Instant, BindingKey, SocketAddr, Option<FlowId>)> {
    (b.nat && b.source.transport == Transport::Udp).then(|| {
        (
            now + NAT_KEEPALIVE,
            BindingKey {
                aor: b.aor.clone(),
                binding: b.key.clone(),
            },
            b.source.addr,
            b.source.flow,
        )
    })
}

/// A stored registration back into a core binding (at start-up).
fn binding_from_record(r: &Registration, now: SystemTime) -> Option<Binding> {
    let expires_at: SystemTime = r.expires_at.into();
    if expires_at <= now {
        return None;
    }
    let transport = Transport::from_token(&r.transport)?;
    let addr: SocketAddr = r.source.parse().ok()?;
    let local: SocketAddr = r.local.parse().ok()?;
    Some(Binding {
        aor: r.aor.clone(),
        key: r.binding.clone(),
        contact: r.contact.clone(),
        expires_at,
        // Stream flows do not survive a restart: the phone reconnects; UDP keeps its address.
        source: Remote {
            transport,
            addr,
            flow: None,
        },
        local,
        user_agent: r.user_agent.clone(),
        instance_id: r.instance_id.clone(),
        reg_id: r.reg_id,
        call_id: r.call_id.clone(),
        cseq: r.cseq,
        q: r.q,
        nat: r.nat,
    })
}

impl Core {
    fn next_deadline(&self) -> Option<Instant> {
        let now_i = Instant::now();
        let now_w = SystemTime::now();
        let reg = self
            .registrar
            .next_expiry()
            .map(|t| now_i + t.duration_since(now_w).unwrap_or(Duration::ZERO));
        [
            self.txns.poll_timeout(),
            reg,
            self.keepalives.front().map(|k| k.0),
            self.blf.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_committed(&mut self, replies: Vec<(TxnKey, Response)>) {
        let now = Instant::now();
        self.pending_commits = self.pending_commits.saturating_sub(replies.len());
        for (key, resp) in replies {
            if let Err(e) = self.txns.respond(now, &key, resp) {
                tracing::debug!(%key, "answer after the write came too late: {e}");
            }
        }
    }

    fn on_inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::Message { from, local, msg } => {
                if let Message::Request(r) = &*msg {
                    self.metrics.request_received(r.method.as_str());
                }
                let _ = local; // UDP: the socket's address; streams: kept with the flow
                let Some(msg) = self.challenge_statelessly(from, msg) else {
                    return;
                };
                self.txns.handle_input(Input::Receive {
                    now: Instant::now(),
                    from,
                    msg: *msg,
                });
            }
            Inbound::FlowOpened {
                id,
                remote: _,
                local,
                tx,
            } => {
                self.flows.insert(id, FlowHandle { tx, local });
            }
            Inbound::FlowClosed { id } => {
                // Answers to messages handled earlier in this batch may still be queued for it.
                self.drain_outputs();
                self.flows.remove(&id);
            }
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.txns.handle_input(Input::Timeout(now));
        self.blf.on_timer(now);
        let lapsed = self.registrar.expire(SystemTime::now());
        if !lapsed.is_empty() {
            self.metrics.registrations.set(self.registrar.len() as i64);
        }
        while let Some((due, _, _, _)) = self.keepalives.front() {
            if *due > now {
                break;
            }
            let Some((_, key, addr, flow)) = self.keepalives.pop_front() else {
                break;
            };
            let still = self
                .registrar
                .lookup(&key.aor)
                .iter()
                .any(|b| b.key == key.binding && b.source.addr == addr);
            if still {
                self.send_raw(
                    Remote {
                        transport: Transport::Udp,
                        addr,
                        flow,
                    },
                    b"\r\n\r\n",
                );
                self.keepalives
                    .push_back((now + NAT_KEEPALIVE, key, addr, flow));
            }
        }
    }

    fn drain_outputs(&mut self) {
        self.blf
            .drain(Instant::now(), &mut self.txns, &self.metrics);
        while let Some(out) = self.txns.poll_output() {
            match out {
                Output::Transmit {
                    to,
                    encoded: Some(bytes),
                    msg,
                } => {
                    if let Message::Response(r) = &msg {
                        self.metrics.response_sent(r.status);
                    }
                    self.send_raw(to, &bytes);
                }
                Output::Resend { to, status, bytes } => {
                    self.metrics.response_sent(status);
                    self.send_raw(to, &bytes);
                }
                Output::Transmit { to, msg, .. } => {
                    if let Message::Response(r) = &msg {
                        self.metrics.response_sent(r.status);
                    }
                    self.out.clear();
                    msg.encode(&mut self.out);
                    let bytes = std::mem::take(&mut self.out);
                    self.send_raw(to, &bytes);
                    self.out = bytes;
                }
                Output::Event(ev) => {
                    self.on_event(ev);
                    self.blf
                        .drain(Instant::now(), &mut self.txns, &self.metrics);
                }
                _ => {}
            }
        }
        self.metrics.transactions.set(self.txns.len() as i64);
    }

    fn send_raw(&mut self, to: Remote, bytes: &[u8]) {
        match to.transport {
            Transport::Udp => {
                let sock = to
                    .flow
                    .and_then(|f| f.0.checked_sub(UDP_FLOW_BASE))
                    .and_then(|i| self.udp.get(i as usize))
                    .or_else(|| {
                        self.udp.iter().find(|s| {
                            s.local_addr()
                                .map(|a| a.is_ipv4() == to.addr.is_ipv4())
                                .unwrap_or(false)
                        })
                    });
                match sock {
                    Some(s) => {
                        if let Err(e) = s.try_send_to(bytes, to.addr) {
                            tracing::debug!(to = %to.addr, "UDP send failed: {e}");
                            self.metrics.drop_msg("send_failed");
                        }
                    }
                    None => self.metrics.drop_msg("no_socket"),
                }
            }
            _ => match to.flow.and_then(|f| self.flows.get(&f)) {
                Some(flow) => {
                    if flow.tx.try_send(Bytes::copy_from_slice(bytes)).is_err() {
                        self.metrics.drop_msg("flow_busy");
                    }
                }
                None => {
                    // Opening connections towards phones arrives with calls; the phone's own
                    // connection is the way back until then.
                    tracing::debug!(to = %to.addr, "no open connection for a stream message");
                    self.metrics.drop_msg("no_flow");
                }
            },
        }
    }

    fn respond(&mut self, key: &TxnKey, mut resp: Response) {
        self.add_to_tag(&mut resp);
        if let Err(e) = self.txns.respond(Instant::now(), key, resp) {
            tracing::debug!(%key, "cannot answer: {e}");
        }
    }

    fn add_to_tag(&mut self, resp: &mut Response) {
        if resp.status == 100 {
            return;
        }
        if let Some(to) = resp.headers.get("To")
            && let Ok(mut na) = csps_sip::headers::NameAddr::parse(to)
            && na.tag().is_none()
        {
            let tag = format!("{:016x}", rand::Rng::random::<u64>(&mut self.rng));
            na.set_param("tag", Some(tag));
            resp.headers.set("To", na.to_string());
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Request { key, from, req } => {
                let span = tracing::debug_span!("sip", call_id = req.call_id().unwrap_or(""), method = %req.method);
                let _enter = span.enter();
                self.on_request(key, from, req);
            }
            Event::Ack { req, .. } => self.calls.on_ack(req),
            Event::Cancel { req, .. } => self.calls.on_cancel(req),
            Event::Response { key, resp } if self.blf.on_response(Instant::now(), key, &resp) => {}
            Event::Timeout { key } if self.blf.on_timeout(Instant::now(), key) => {}
            Event::Response { key, resp } if self.trunk_txns.contains_key(&key) => {
                if resp.status >= 200
                    && let Some((generation, proxy)) = self.trunk_txns.remove(&key)
                {
                    self.trunk_answer(crate::trunk::driver::CoreAnswer::Answered {
                        generation,
                        proxy,
                        status: resp.status,
                    });
                }
            }
            Event::Timeout { key } if self.trunk_txns.contains_key(&key) => {
                if let Some((generation, proxy)) = self.trunk_txns.remove(&key) {
                    self.trunk_answer(crate::trunk::driver::CoreAnswer::Timeout {
                        generation,
                        proxy,
                    });
                }
            }
            Event::Response { key, resp } => {
                let routed = self.calls.on_response(key, resp);
                if !routed {
                    self.metrics.drop_msg("stray_response");
                }
            }
            Event::Timeout { key } => self.calls.on_timeout(key),
            Event::Terminated { key } => {
                self.trunk_txns.remove(&key);
                self.blf.on_terminated(key);
                self.calls.on_terminated(key);
            }
            Event::StrayResponse { .. } => self.metrics.drop_msg("stray_response"),
            _ => {}
        }
    }

    /// Starts the trunk driver's client transaction.
    fn trunk_send(&mut self, generation: u64, proxy: usize, to: Remote, req: Request) {
        match self.txns.send_request(Instant::now(), to, req) {
            Ok(key) => {
                self.trunk_txns.insert(key, (generation, proxy));
            }
            Err(e) => {
                tracing::debug!("trunk request not sent: {e}");
                self.trunk_answer(crate::trunk::driver::CoreAnswer::Timeout { generation, proxy });
            }
        }
    }

    fn trunk_answer(&mut self, a: crate::trunk::driver::CoreAnswer) {
        if let Some(tx) = &self.trunk
            && tx.try_send(a).is_err()
        {
            tracing::debug!("trunk driver busy; answer dropped");
        }
    }

    /// A new request; it passed `transport::precheck` in the task that received it.
    fn on_request(&mut self, key: TxnKey, from: Remote, req: Request) {
        if req.method == Method::Refer && self.calls.owns(&req) {
            self.on_refer(key, from, req);
            return;
        }
        if req.method != Method::Register && self.calls.owns(&req) {
            self.calls.on_in_dialog(key, from, req);
            return;
        }
        match req.method {
            Method::Register => self.on_register(key, from, req),
            Method::Invite if req.to_hdr().is_some_and(|t| t.tag().is_none()) => {
                let local = self.local_of(&from);
                self.on_invite(key, from, req, local);
            }
            Method::Subscribe => self.on_subscribe(key, from, req),
            Method::Options => {
                let mut resp = req.response(200, "OK");
                resp.headers.push("Allow", ALLOW);
                resp.headers
                    .push("Allow-Events", crate::blf::watchers::EVENT);
                resp.headers.push("Accept", "application/sdp");
                resp.headers.push("Supported", "path, outbound");
                self.respond(&key, resp);
            }
            Method::Other(_) => {
                let mut resp = req.response(501, "Not Implemented");
                resp.headers.push("Allow", ALLOW);
                self.respond(&key, resp);
            }
            ref m if !IMPLEMENTED_HERE.contains(m) => {
                let mut resp = req.response(405, "Method Not Allowed");
                resp.headers.push("Allow", ALLOW);
                self.respond(&key, resp);
            }
            _ => {
                let resp = req.response(481, "Call/Transaction Does Not Exist");
                self.respond(&key, resp);
            }
        }
    }

    fn on_register(&mut self, key: TxnKey, from: Remote, req: Request) {
        let local = self.local_of(&from);
        let accounts = self.accounts.clone();
        let outcome = self.registrar.register(
            SystemTime::now(),
            &req,
            from,
            local,
            accounts.as_ref(),
            &mut self.rng,
        );
        self.sync_auth_counters();
        match outcome {
            // The registrar's replies carry their To tag already.
            RegisterOutcome::Reply(resp) => {
                if let Err(e) = self.txns.respond(Instant::now(), &key, resp) {
                    tracing::debug!(%key, "cannot answer: {e}");
                }
            }
            RegisterOutcome::Commit {
                upserts,
                removals,
                reply,
            } => {
                let now = Instant::now();
                self.keepalives
                    .extend(upserts.iter().filter_map(|b| keepalive_entry(now, b)));
                // The registrar's replies carry their To tag already.
                let commit = Commit {
                    upserts,
                    removals: removals
                        .into_iter()
                        .map(|k| BindingKey {
                            aor: k.aor,
                            binding: k.key,
                        })
                        .collect(),
                    replies: vec![(key, reply)],
                };
                self.metrics.registrations.set(self.registrar.len() as i64);
                match self.writer.try_send(commit) {
                    Ok(()) => self.pending_commits += 1,
                    Err(_) => {
                        let mut resp = req.response(503, "Service Unavailable");
                        resp.headers.push("Retry-After", "5");
                        self.metrics.store_failures.inc();
                        self.respond(&key, resp);
                    }
                }
            }
            _ => {
                let resp = req.response(500, "Server Internal Error");
                self.respond(&key, resp);
            }
        }
    }

    /// A REGISTER without credentials from an untrusted source can only be challenged (or
    /// refused: locked out, malformed): it is answered without a transaction, as DESIGN.md's
    /// endpoint split asks, so a challenge costs no stored state (a retransmission simply gets a
    /// fresh challenge). Everything else is handed back for the transaction layer.
    fn challenge_statelessly(&mut self, from: Remote, msg: Box<Message>) -> Option<Box<Message>> {
        let Message::Request(req) = &*msg else {
            return Some(msg);
        };
        if req.method != Method::Register || req.headers.get("Authorization").is_some() {
            return Some(msg);
        }
        let ip = from.addr.ip().to_canonical();
        if self
            .registrar
            .config()
            .trusted
            .iter()
            .any(|n| n.contains(&ip))
        {
            return Some(msg);
        }
        let local = self.local_of(&from);
        let accounts = self.accounts.clone();
        let outcome = self.registrar.register(
            SystemTime::now(),
            req,
            from,
            local,
            accounts.as_ref(),
            &mut self.rng,
        );
        self.sync_auth_counters();
        let resp = match outcome {
            // The registrar's replies carry their To tag already.
            RegisterOutcome::Reply(resp) => resp,
            // The registrar binds only after credentials or from a trusted address, both
            // excluded above; should that ever change, fail visibly rather than bind unanswered.
            _ => {
                tracing::error!("registrar bound a REGISTER without credentials");
                let mut resp = req.response(500, "Server Internal Error");
                self.add_to_tag(&mut resp);
                resp
            }
        };
        self.txns.send_stateless(from, Message::Response(resp));
        None
    }

    /// A SUBSCRIBE outside a call (busy-lamp fields, [`crate::blf`]).
    fn on_subscribe(&mut self, key: TxnKey, from: Remote, req: Request) {
        let accounts = self.accounts.clone();
        let local = self.local_of(&from);
        let cx = crate::blf::SubscribeCx {
            registrar: &mut self.registrar,
            accounts: accounts.as_ref(),
            rng: &mut self.rng,
            local,
        };
        let refusal = self.blf.on_subscribe(Instant::now(), cx, key, from, req);
        self.sync_auth_counters();
        if let Some(resp) = refusal {
            self.respond(&key, resp);
        }
    }

    fn on_refer(&mut self, key: TxnKey, from: Remote, req: Request) {
        let local = self.local_of(&from);
        self.with_switch(local, |calls, cx| calls.on_refer(cx, key, from, req));
    }

    fn on_invite(&mut self, key: TxnKey, from: Remote, req: Request, local: SocketAddr) {
        self.with_switch(local, |calls, cx| calls.on_invite(cx, key, from, req));
        self.sync_auth_counters();
    }

    /// Lends the switch what it needs of the core (transactions, registrar, accounts,
    /// addresses) for one dialog-creating request; `local` is the gateway's address on its flow.
    fn with_switch(
        &mut self,
        local: SocketAddr,
        f: impl FnOnce(&mut crate::calls::Switch, crate::calls::InviteCx<'_>),
    ) {
        let accounts = self.accounts.clone();
        let (udp, flows) = (&self.udp, &self.flows);
        let local_of = |r: &Remote| local_for(udp, flows, r);
        let cx = crate::calls::InviteCx {
            txns: &mut self.txns,
            registrar: &mut self.registrar,
            accounts: accounts.as_ref(),
            rng: &mut self.rng,
            local,
            local_of: &local_of,
        };
        f(&mut self.calls, cx);
    }

    fn sync_auth_counters(&mut self) {
        let c = self.registrar.counters();
        let (f, l) = self.seen_auth;
        if c.auth_failures > f {
            self.metrics.auth_failures.inc_by(c.auth_failures - f);
        }
        if c.lockouts > l {
            self.metrics.auth_lockouts.inc_by(c.lockouts - l);
        }
        self.seen_auth = (c.auth_failures, c.lockouts);
    }

    fn local_of(&self, from: &Remote) -> SocketAddr {
        local_for(&self.udp, &self.flows, from)
    }
}

/// The local address a message from (or to) `r` uses: its UDP socket's or its connection's; a
/// UDP peer without a known socket (a binding restored after a restart) gets the first socket of
/// its address family, as `send_raw` does.
fn local_for(
    udp: &[Arc<UdpSocket>],
    flows: &HashMap<FlowId, FlowHandle>,
    r: &Remote,
) -> SocketAddr {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    match r.flow {
        Some(f) if f.0 >= UDP_FLOW_BASE => udp
            .get((f.0 - UDP_FLOW_BASE) as usize)
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(unspecified),
        Some(f) => flows.get(&f).map(|h| h.local).unwrap_or(unspecified),
        None if r.transport == Transport::Udp => udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .find(|a| a.is_ipv4() == r.addr.is_ipv4())
            .unwrap_or(unspecified),
        None => unspecified,
    }
}
