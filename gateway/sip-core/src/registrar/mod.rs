//! The registrar (RFC 3261 §10.3, RFC 5626 keying, RFC 8760 digest), sans-IO: a REGISTER comes in
//! with the time, its source and an account lookup; out comes either a reply to send at once
//! (401/403/404/423/400/500) or a [`RegisterOutcome::Commit`] whose binding changes the driver
//! persists before it sends the 200. It owns the in-memory bindings (by AoR, with an expiry index),
//! the nonces and their fixed `nc` ring, and the brute-force limiter.
//!
//! Whether a request is bound without a challenge, challenged or refused is asked of a
//! [`Gatekeeper`] (the driver's admission policy); without one, cSPS's trusted-IP rule
//! ([`TrustedIps`]) decides in place.
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use csps_sip::registrar::{Registrar, RegistrarConfig, RegisterOutcome};
//! let mut reg = Registrar::new(RegistrarConfig::default(), [7; 32]);
//! let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
//! // driver loop: for each REGISTER, `match reg.register(now, &req, from, local, &accounts, &mut rng)`
//! // { Reply(r) => send(r), Commit { upserts, removals, reply } => { store.write(..).await?; send(reply) } }
//! // and on its timer: `for key in reg.expire(now) { store.delete(key) }`, sleep until `reg.next_expiry()`.
//! assert!(reg.expire(now).is_empty());
//! assert_eq!(reg.next_expiry(), None);
//! ```

pub mod bindings;
mod limiter;
mod nonce;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use rand::RngCore;

use crate::digest::{self, Algorithm, DigestParams};
use crate::headers::NameAddr;
use crate::message::{Method, Request, Response, SipHeaders};
use crate::transport::{Remote, Transport};
use crate::uri::Uri;

pub use bindings::{Binding, BindingKey};
use limiter::Limiter;
use nonce::{NonceCheck, Nonces};

/// Most bindings one AoR may hold; a REGISTER that would exceed it gets 403.
pub const MAX_BINDINGS_PER_AOR: usize = 32;

/// Outstanding nonces whose `nc` is tracked (a fixed ring of 4 B slots, 4 MiB, touched only as
/// used): at 10,000 challenges/s a nonce stays usable for 100 s before its slot is reused and it
/// turns stale (the phone is re-challenged with `stale=true`, no password prompt).
pub const MAX_TRACKED_NONCES: usize = 1 << 20;

/// Registrar settings; replaceable at run time with [`Registrar::set_config`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// This server's name, used in Warning headers.
    pub server_name: String,
    /// The realm for AoRs without a known account.
    pub default_domain: String,
    /// Sources in these ranges are not challenged (the account must still exist).
    pub trusted: Vec<IpNet>,
    /// Shortest registration accepted (423 below it), seconds.
    pub min_expires: u32,
    /// Longest registration granted, seconds.
    pub max_expires: u32,
    /// Granted when the phone asks for none, seconds.
    pub default_expires: u32,
    /// Longest registration granted to a phone behind NAT over UDP, seconds.
    pub nat_expires: u32,
    /// Failed digest responses per (account, IP) within the window before a lockout.
    pub auth_failure_limit: u32,
    /// The window failures are counted over.
    pub auth_failure_window: Duration,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// How long a nonce stays fresh.
    pub nonce_lifetime: Duration,
    /// Digest algorithms offered, in the order of the WWW-Authenticate headers (RFC 8760 §2.4:
    /// most preferred first). Many phones (and SIPp) answer only the first challenge and know only
    /// MD5, so MD5 leads by default; put SHA-256 first where every phone supports RFC 8760.
    pub algorithms: Vec<Algorithm>,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            server_name: "csps".to_owned(),
            default_domain: "csps.local".to_owned(),
            trusted: Vec::new(),
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            nat_expires: 120,
            auth_failure_limit: 5,
            auth_failure_window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            nonce_lifetime: Duration::from_secs(300),
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
        }
    }
}

/// A SIP account as the registrar needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// A disabled account cannot register (403).
    pub enabled: bool,
    /// HA1 values: (realm, algorithm, lower-case hex).
    pub ha1: Vec<(String, Algorithm, String)>,
}

impl Account {
    /// An enabled account with MD5 and SHA-256 HA1s of `password` for `realm`.
    pub fn with_password(username: &str, realm: &str, password: &str) -> Account {
        Account {
            enabled: true,
            ha1: [Algorithm::Sha256, Algorithm::Md5]
                .into_iter()
                .map(|a| {
                    (
                        realm.to_owned(),
                        a,
                        digest::ha1(a, username, realm, password),
                    )
                })
                .collect(),
        }
    }

    fn ha1_for(&self, realm: &str, alg: Algorithm) -> Option<&str> {
        self.ha1
            .iter()
            .find(|(r, a, _)| *a == alg && r == realm)
            .map(|(_, _, h)| h.as_str())
    }

    fn has_realm(&self, realm: &str) -> bool {
        self.ha1.iter().any(|(r, _, _)| r == realm)
    }
}

/// Account lookup provided by the driver (which keeps users in memory).
pub trait Accounts {
    /// The account `username` (percent-decoded user part of the To AoR) in `domain` (lower-case).
    fn lookup(&self, username: &str, domain: &str) -> Option<Cow<'_, Account>>;
}

/// A request from a device for the admission decision: a REGISTER, or a dialog-creating request
/// (INVITE, REFER, …) whose caller is authenticated the same way.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionRequest<'a> {
    /// Where it came from.
    pub source: SocketAddr,
    /// The transport it came over.
    pub transport: Transport,
    /// Its User-Agent header.
    pub user_agent: Option<&'a str>,
    /// The account's address of record (`sip:user@domain`; the To AoR of a REGISTER, the From
    /// AoR of an INVITE).
    pub aor: &'a str,
    /// The configured trusted ranges ([`RegistrarConfig::trusted`]).
    pub trusted: &'a [IpNet],
}

/// The admission decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// No challenge; the account must still exist and be enabled.
    Admit,
    /// Digest authentication (the normal path).
    Challenge,
    /// Refuse with this status (400–699) and reason phrase.
    Reject {
        /// SIP status.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// Decides admission. The driver supplies one (its admission policy); it runs in place, on the
/// registrar's thread, so it must be quick and must not block.
pub trait Gatekeeper: Send {
    /// The decision for one request.
    fn admit(&self, req: &AdmissionRequest<'_>) -> Admission;
}

/// cSPS's trusted-IP rule: a source in a trusted range is admitted, every other one challenged.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrustedIps;

impl Gatekeeper for TrustedIps {
    fn admit(&self, req: &AdmissionRequest<'_>) -> Admission {
        let ip = req.source.ip().to_canonical();
        if req.trusted.iter().any(|n| n.contains(&ip)) {
            Admission::Admit
        } else {
            Admission::Challenge
        }
    }
}

/// What to do with a REGISTER.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterOutcome {
    /// Send this response now (401, 403, 404, 423, 400, 500, or a 200 to a fetch).
    Reply(Response),
    /// Persist these changes, then send `reply` (200); on a failed write send 500 instead and
    /// undo with [`Registrar::remove`] / [`Registrar::load`].
    Commit {
        /// Bindings created or refreshed (already applied in memory).
        upserts: Vec<Binding>,
        /// Bindings removed (already removed in memory).
        removals: Vec<BindingKey>,
        /// The 200 listing the AoR's current bindings.
        reply: Response,
    },
}

impl RegisterOutcome {
    /// The response to send (after persisting, for a commit).
    pub fn response(&self) -> &Response {
        match self {
            RegisterOutcome::Reply(r) => r,
            RegisterOutcome::Commit { reply, .. } => reply,
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistrarCounters {
    /// REGISTER requests handled.
    pub requests: u64,
    /// 401 challenges sent (including stale ones).
    pub challenges: u64,
    /// Challenges sent because the nonce was stale.
    pub stale_nonces: u64,
    /// Requests refused because their `nc` was replayed.
    pub nc_replays: u64,
    /// Failed digest responses (wrong password, unknown user with credentials).
    pub auth_failures: u64,
    /// Lockouts started (per account and IP, or per IP).
    pub lockouts: u64,
    /// Requests refused because their source was locked out.
    pub locked_rejections: u64,
    /// Successful registrations, refreshes and removals (commits).
    pub commits: u64,
    /// Bindings held now.
    pub bindings: u64,
    /// Outstanding nonces with an accepted `nc` now.
    pub tracked_nonces: u64,
    /// Source IPs the limiter tracks now.
    pub limiter_entries: u64,
}

/// The registrar core.
pub struct Registrar {
    cfg: RegistrarConfig,
    nonces: Nonces,
    table: bindings::Table,
    limiter: Limiter,
    counters: RegistrarCounters,
    gatekeeper: Option<Box<dyn Gatekeeper>>,
}

/// A refusal, turned into a response by [`Registrar::refuse`].
enum Refusal {
    Status(u16, &'static str),
    Forbidden(&'static str),
    /// Refused by the admission policy.
    Policy(u16, String),
    Challenge {
        stale: bool,
        proxy: bool,
    },
}

impl Registrar {
    /// A registrar with `cfg`, minting nonces with `secret`. Servers sharing the secret know each
    /// other's nonces as genuine but not their `nc` state: a phone that moves over is answered
    /// `stale=true` and retries with a local nonce, without a password prompt.
    pub fn new(cfg: RegistrarConfig, secret: [u8; 32]) -> Self {
        Self::with_nonce_capacity(cfg, secret, MAX_TRACKED_NONCES)
    }

    /// Like [`Registrar::new`] with `nonces` outstanding nonce slots (tests, small devices).
    pub fn with_nonce_capacity(cfg: RegistrarConfig, secret: [u8; 32], nonces: usize) -> Self {
        Registrar {
            cfg,
            nonces: Nonces::new(secret, nonces),
            table: bindings::Table::default(),
            limiter: Limiter::default(),
            counters: RegistrarCounters::default(),
            gatekeeper: None,
        }
    }

    /// Asks `gatekeeper` (instead of the built-in [`TrustedIps`] rule) which requests are admitted
    /// without a challenge, challenged or refused.
    pub fn set_gatekeeper(&mut self, gatekeeper: Box<dyn Gatekeeper>) {
        self.gatekeeper = Some(gatekeeper);
    }

    /// The admission decision for a request from `from`.
    fn admission(&self, req: &Request, from: Remote, aor: &str) -> Admission {
        let ask = AdmissionRequest {
            source: from.addr,
            transport: from.transport,
            user_agent: req.headers.get("User-Agent"),
            aor,
            trusted: &self.cfg.trusted,
        };
        match &self.gatekeeper {
            Some(g) => g.admit(&ask),
            None => TrustedIps.admit(&ask),
        }
    }

    /// Replaces the configuration; it applies from the next request on.
    pub fn set_config(&mut self, cfg: RegistrarConfig) {
        self.cfg = cfg;
    }

    /// The configuration in force.
    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    /// Loads bindings (at start, from the store); later ones replace earlier ones with the same key.
    pub fn load(&mut self, bindings: impl IntoIterator<Item = Binding>) {
        for b in bindings {
            self.table.upsert(b);
        }
    }

    /// Removes one binding (a closed RFC 5626 flow, an admin action, an undo after a failed write).
    pub fn remove(&mut self, key: &BindingKey) -> Option<Binding> {
        self.table.remove(&key.aor, &key.key)
    }

    /// Removes and returns the keys of bindings lapsed at `now`.
    pub fn expire(&mut self, now: SystemTime) -> Vec<BindingKey> {
        self.table.expire(now)
    }

    /// When the next binding lapses.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.table.next_expiry()
    }

    /// The bindings of an AoR (`sip:user@domain`, as [`aor`] builds it).
    pub fn lookup(&self, aor: &str) -> Vec<&Binding> {
        self.table.get(aor).iter().collect()
    }

    /// Number of bindings held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no binding is held.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Rough heap bytes of the binding table's index structures (beyond the bindings themselves).
    pub fn index_bytes(&self) -> usize {
        self.table.index_bytes()
    }

    /// Counters for metrics.
    pub fn counters(&self) -> RegistrarCounters {
        RegistrarCounters {
            bindings: self.table.len() as u64,
            tracked_nonces: self.nonces.tracked() as u64,
            limiter_entries: self.limiter.len() as u64,
            ..self.counters
        }
    }

    /// Handles one REGISTER received at `now` from `from` on `local`.
    pub fn register(
        &mut self,
        now: SystemTime,
        req: &Request,
        from: Remote,
        local: SocketAddr,
        accounts: &dyn Accounts,
        rng: &mut impl RngCore,
    ) -> RegisterOutcome {
        self.counters.requests += 1;
        self.limiter.purge(now, self.cfg.auth_failure_window);
        self.nonces.purge(now, self.cfg.nonce_lifetime);
        match self.handle(now, req, from, local, accounts, rng) {
            Ok(outcome) => outcome,
            Err((refusal, realm_and_algs)) => {
                RegisterOutcome::Reply(self.refuse(now, req, refusal, realm_and_algs, rng))
            }
        }
    }

    /// Authenticates a dialog-creating request from a phone (INVITE, REFER, …; RFC 3261 §22.3):
    /// the caller is the account named by the From URI; a source in a trusted range needs only an
    /// existing, enabled account; anyone else answers a 407 digest challenge with the same nonces,
    /// replay checks and brute-force limiter as REGISTER. `Ok` is the caller's (username, domain);
    /// `Err` is the response to send (407, 403, 404, 400).
    pub fn authorize(
        &mut self,
        now: SystemTime,
        req: &Request,
        from: Remote,
        accounts: &dyn Accounts,
        rng: &mut impl RngCore,
    ) -> Result<(String, String), Response> {
        self.limiter.purge(now, self.cfg.auth_failure_window);
        self.nonces.purge(now, self.cfg.nonce_lifetime);
        let plain = |r: Refusal| (r, None);
        let result = (|| {
            let caller = req
                .from_hdr()
                .ok_or(plain(Refusal::Status(400, "Bad From Header")))?;
            let (Some(user), true) = (caller.uri.user.as_deref(), caller.uri.is_sip()) else {
                return Err(plain(Refusal::Forbidden("caller is not a SIP account")));
            };
            let username = percent_decode(user).into_owned();
            let domain = lower(&caller.uri.host).into_owned();
            let aor = aor(&username, &domain);
            let account = accounts.lookup(&username, &domain);
            let unknown = Refusal::Forbidden("unknown caller");
            let who = (username.as_str(), domain.as_str(), aor.as_str());
            self.admit(now, req, from, who, account.as_deref(), unknown)?;
            Ok((username, domain))
        })();
        result.map_err(|(refusal, realm_and_algs)| {
            self.refuse(now, req, refusal, realm_and_algs, rng)
        })
    }

    #[allow(clippy::type_complexity)]
    fn handle(
        &mut self,
        now: SystemTime,
        req: &Request,
        from: Remote,
        local: SocketAddr,
        accounts: &dyn Accounts,
        rng: &mut impl RngCore,
    ) -> Result<RegisterOutcome, (Refusal, Option<(String, Vec<Algorithm>)>)> {
        let plain = |r: Refusal| (r, None);
        if req.method != Method::Register {
            return Err(plain(Refusal::Status(405, "Method Not Allowed")));
        }
        let to = req
            .to_hdr()
            .ok_or(plain(Refusal::Status(400, "Bad To Header")))?;
        let call_id = req
            .call_id()
            .ok_or(plain(Refusal::Status(400, "Missing Call-ID")))?;
        let cseq = req
            .cseq()
            .filter(|c| c.method == Method::Register)
            .ok_or(plain(Refusal::Status(400, "Bad CSeq")))?
            .seq;
        let (Some(user), true) = (to.uri.user.as_deref(), to.uri.is_sip()) else {
            return Err(plain(Refusal::Status(404, "Not Found")));
        };
        // A user part may carry ";params" (RFC 4475 semiuri); the account is the part before.
        let username = percent_decode(user);
        let domain = lower(&to.uri.host);
        let aor = aor(&username, &domain);
        let account = accounts.lookup(&username, &domain);
        let unknown = Refusal::Status(404, "Not Found");
        self.admit(
            now,
            req,
            from,
            (&username, &domain, &aor),
            account.as_deref(),
            unknown,
        )?;
        self.bind(now, req, from, local, &aor, call_id, cseq, rng)
            .map_err(plain)
    }

    /// Admission of a request from `from` for `who` = (username, domain, AoR): what the
    /// gatekeeper says, then for an admitted request an existing, enabled account (`unknown`
    /// when there is none), for a challenged one the lockout check and digest authentication.
    #[allow(clippy::type_complexity)]
    fn admit(
        &mut self,
        now: SystemTime,
        req: &Request,
        from: Remote,
        (username, domain, aor): (&str, &str, &str),
        account: Option<&Account>,
        unknown: Refusal,
    ) -> Result<(), (Refusal, Option<(String, Vec<Algorithm>)>)> {
        let plain = |r: Refusal| (r, None);
        match self.admission(req, from, aor) {
            Admission::Admit => match account {
                None => Err(plain(unknown)),
                Some(a) if !a.enabled => Err(plain(Refusal::Forbidden("account disabled"))),
                Some(_) => Ok(()),
            },
            Admission::Reject { code, reason } => Err(plain(Refusal::Policy(code, reason))),
            Admission::Challenge => {
                let ip = from.addr.ip().to_canonical();
                if self.limiter.locked(account.map(|_| aor), ip, now) {
                    self.counters.locked_rejections += 1;
                    return Err(plain(Refusal::Forbidden("locked out")));
                }
                self.authenticate(now, req, username, domain, aor, ip, account)
            }
        }
    }

    /// Digest authentication of `req` for `account` (None: unknown user). Errors carry the realm
    /// and algorithms to challenge with.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn authenticate(
        &mut self,
        now: SystemTime,
        req: &Request,
        username: &str,
        domain: &str,
        aor: &str,
        ip: IpAddr,
        account: Option<&Account>,
    ) -> Result<(), (Refusal, Option<(String, Vec<Algorithm>)>)> {
        let default_realm = || -> Cow<'_, str> { Cow::Owned(self.cfg.default_domain.clone()) };
        let realm: Cow<'_, str> = match account {
            Some(a) if a.has_realm(domain) => Cow::Borrowed(domain),
            Some(a) => a
                .ha1
                .first()
                .map_or_else(default_realm, |(r, _, _)| Cow::Borrowed(r.as_str())),
            None => default_realm(),
        };
        let realm = &*realm;
        let algs: Vec<Algorithm> = match account {
            Some(a) => self
                .cfg
                .algorithms
                .iter()
                .copied()
                .filter(|alg| a.ha1_for(realm, *alg).is_some())
                .collect(),
            None => self.cfg.algorithms.clone(),
        };
        let challenge = |stale| {
            (
                Refusal::Challenge {
                    stale,
                    proxy: req.method != Method::Register,
                },
                Some((realm.to_owned(), algs.clone())),
            )
        };
        let plain = |r: Refusal| (r, None);
        let known_realm = |r: &str| match account {
            Some(a) => a.has_realm(r),
            None => r == realm || r == domain,
        };
        let Some(c) = req
            .headers
            .get_all(if req.method == Method::Register {
                "Authorization"
            } else {
                "Proxy-Authorization"
            })
            .filter_map(DigestParams::parse)
            .find(|c| c.realm.is_some_and(known_realm))
        else {
            return Err(challenge(false));
        };
        let (Some(c_user), Some(c_nonce), Some(c_uri), Some(c_resp)) =
            (c.username, c.nonce, c.uri, c.response)
        else {
            return Err(plain(Refusal::Status(400, "Incomplete Credentials")));
        };
        let c_realm = c.realm.unwrap_or(realm);
        // Only qop=auth is accepted: without nc a response could be replayed for the nonce's life.
        let (Some(qop), Some(nc), Some(cnonce)) = (c.qop, c.nc, c.cnonce) else {
            return Err(challenge(false));
        };
        if !qop.eq_ignore_ascii_case("auth") {
            return Err(challenge(false));
        }
        let Some(alg) = c
            .algorithm
            .map_or(Some(Algorithm::Md5), Algorithm::from_token)
        else {
            return Err(challenge(false));
        };
        let (seq, stale) = match self.nonces.check(c_nonce, now, self.cfg.nonce_lifetime) {
            NonceCheck::Invalid => return Err(challenge(false)),
            NonceCheck::Stale => (0, true),
            NonceCheck::Fresh { seq } => (seq, false),
        };
        let nc_val = match u32::from_str_radix(nc, 16) {
            Ok(n) if nc.len() == 8 => n,
            _ => return Err(plain(Refusal::Status(400, "Bad nc"))),
        };
        if !uri_matches(c_uri, &req.uri) {
            return Err(plain(Refusal::Status(400, "Digest URI Mismatch")));
        }
        if c_user != username && percent_decode(c_user) != username {
            return Err(plain(Refusal::Forbidden("user mismatch")));
        }
        let Some(account) = account else {
            // Unknown user: same path as a wrong password, without naming the reason.
            self.failed(None, ip, now);
            return Err(plain(Refusal::Forbidden("authentication failed")));
        };
        let Some(ha1) = account.ha1_for(c_realm, alg) else {
            return Err(challenge(false));
        };
        if !stale && !self.nonces.nc_fresh(seq, nc_val) {
            self.counters.nc_replays += 1;
            return Err(challenge(false));
        }
        if !digest::response_matches(
            alg,
            ha1,
            c_nonce,
            nc,
            cnonce,
            qop,
            req.method.as_str(),
            c_uri,
            c_resp,
        ) {
            // The failure that reaches the limit is still answered 401: "after N failures" the
            // pair gets 403, from the next attempt on (checked before any hashing).
            self.failed(Some(aor), ip, now);
            return Err(challenge(false));
        }
        if stale {
            self.counters.stale_nonces += 1;
            return Err(challenge(true));
        }
        if !account.enabled {
            return Err(plain(Refusal::Forbidden("account disabled")));
        }
        self.nonces.accept(seq, nc_val);
        Ok(())
    }

    /// Counts a failure; true when the account (or IP) is now locked out.
    fn failed(&mut self, aor: Option<&str>, ip: IpAddr, now: SystemTime) -> bool {
        self.counters.auth_failures += 1;
        let started = self.limiter.fail(
            aor,
            ip,
            now,
            self.cfg.auth_failure_limit,
            self.cfg.auth_failure_window,
            self.cfg.lockout,
        );
        self.counters.lockouts += u64::from(started);
        self.limiter.locked(aor, ip, now)
    }

    /// Applies the Contact list of an authenticated REGISTER (RFC 3261 §10.3 steps 5–8).
    #[allow(clippy::too_many_arguments)]
    fn bind(
        &mut self,
        now: SystemTime,
        req: &Request,
        from: Remote,
        local: SocketAddr,
        aor: &str,
        call_id: &str,
        cseq: u32,
        rng: &mut impl RngCore,
    ) -> Result<RegisterOutcome, Refusal> {
        let contacts: Vec<&str> = req.headers.values("Contact").collect();
        if contacts.is_empty() {
            return Ok(RegisterOutcome::Reply(self.ok(now, req, aor, false, rng)));
        }
        let expires_hdr = req.headers.get("Expires").and_then(parse_delta);
        if contacts.contains(&"*") {
            if contacts.len() != 1 || expires_hdr != Some(0) {
                return Err(Refusal::Status(400, "Invalid Contact *"));
            }
            let existing = self.table.get(aor);
            if existing
                .iter()
                .any(|b| b.call_id == call_id && cseq <= b.cseq)
            {
                return Err(Refusal::Status(500, "Out of Order"));
            }
            let keys: Vec<BindingKey> = existing.iter().map(Binding::binding_key).collect();
            for k in &keys {
                self.table.remove(&k.aor, &k.key);
            }
            self.counters.commits += 1;
            return Ok(RegisterOutcome::Commit {
                upserts: Vec::new(),
                removals: keys,
                reply: self.ok(now, req, aor, false, rng),
            });
        }

        let mut parsed = Vec::with_capacity(contacts.len());
        for c in &contacts {
            let na = NameAddr::parse(c).map_err(|_| Refusal::Status(400, "Bad Contact"))?;
            let requested = match na.param("expires") {
                Some(Some(v)) => parse_delta(v).unwrap_or(self.cfg.default_expires),
                _ => expires_hdr.unwrap_or(self.cfg.default_expires),
            };
            if requested != 0 && requested < self.cfg.min_expires {
                return Err(Refusal::Status(423, "Interval Too Brief"));
            }
            parsed.push((na, requested));
        }

        let udp = from.transport == Transport::Udp;
        let via_natted = udp
            && req
                .top_via()
                .is_none_or(|v| !same_addr(&v.host, v.port, from.addr));
        let user_agent = req.headers.get("User-Agent");
        let mut upserts: Vec<Binding> = Vec::new();
        let mut removals: Vec<BindingKey> = Vec::new();
        let existing = self.table.get(aor);
        for (na, requested) in parsed {
            let instance = match na.param("+sip.instance") {
                Some(Some(v)) => Some(v.trim_matches('"').trim_matches(['<', '>']).to_owned()),
                _ => None,
            };
            let reg_id = match na.param("reg-id") {
                Some(Some(v)) => v.parse::<u32>().ok(),
                _ => None,
            };
            let key = match (&instance, reg_id) {
                (Some(i), Some(r)) => format!("instance:{i};reg-id={r}"),
                (Some(i), None) => format!("instance:{i}"),
                _ => format!("contact:{}", na.uri),
            };
            if let Some(b) = existing.iter().find(|b| b.key == key)
                && b.call_id == call_id
                && cseq <= b.cseq
            {
                return Err(Refusal::Status(500, "Out of Order"));
            }
            upserts.retain(|b| b.key != key);
            removals.retain(|k| k.key != key);
            if requested == 0 {
                if existing.iter().any(|b| b.key == key) {
                    removals.push(BindingKey {
                        aor: aor.to_owned(),
                        key,
                    });
                }
                continue;
            }
            let nat = udp && (via_natted || !same_addr(&na.uri.host, na.uri.port, from.addr));
            let mut granted = requested.min(self.cfg.max_expires);
            if nat {
                granted = granted.min(self.cfg.nat_expires);
            }
            let q = match na.param("q") {
                Some(Some(v)) => parse_q(v),
                _ => None,
            };
            let mut contact = na;
            contact
                .params
                .retain(|(k, _)| !k.eq_ignore_ascii_case("expires"));
            upserts.push(Binding {
                aor: aor.to_owned(),
                key,
                contact: contact.to_string(),
                expires_at: now + Duration::from_secs(u64::from(granted)),
                source: from,
                local,
                user_agent: user_agent.map(str::to_owned),
                instance_id: instance,
                reg_id,
                call_id: call_id.to_owned(),
                cseq,
                q,
                nat,
            });
        }
        let added = upserts
            .iter()
            .filter(|u| !existing.iter().any(|b| b.key == u.key))
            .count();
        if existing.len() - removals.len() + added > MAX_BINDINGS_PER_AOR {
            return Err(Refusal::Forbidden("too many bindings"));
        }
        for k in &removals {
            self.table.remove(&k.aor, &k.key);
        }
        for b in &upserts {
            self.table.upsert(b.clone());
        }
        let outbound = upserts.iter().any(|b| b.reg_id.is_some()) && req.headers.count("Via") == 1;
        self.counters.commits += 1;
        Ok(RegisterOutcome::Commit {
            reply: self.ok(now, req, aor, outbound, rng),
            upserts,
            removals,
        })
    }

    /// The 200 listing the AoR's bindings with their remaining lifetimes.
    fn ok(
        &self,
        now: SystemTime,
        req: &Request,
        aor: &str,
        outbound: bool,
        rng: &mut impl RngCore,
    ) -> Response {
        let mut r = response(req, 200, "OK", rng);
        for b in self.table.get(aor) {
            let left = b.expires_at.duration_since(now).map_or(0, |d| d.as_secs());
            r.headers
                .push("Contact", format!("{};expires={left}", b.contact));
        }
        if outbound {
            r.headers.push("Require", "outbound");
        }
        r
    }

    fn refuse(
        &mut self,
        now: SystemTime,
        req: &Request,
        refusal: Refusal,
        realm_and_algs: Option<(String, Vec<Algorithm>)>,
        rng: &mut impl RngCore,
    ) -> Response {
        match refusal {
            Refusal::Status(status, reason) => {
                let mut r = response(req, status, reason, rng);
                if status == 423 {
                    r.headers
                        .push("Min-Expires", self.cfg.min_expires.to_string());
                }
                if status == 405 {
                    r.headers.push("Allow", "REGISTER");
                }
                r
            }
            Refusal::Policy(status, reason) => {
                // The policy's phrase is checked by the driver; keep the status in range anyway.
                let status = if (400..=699).contains(&status) {
                    status
                } else {
                    403
                };
                let reason = if reason.is_empty() || reason.chars().any(char::is_control) {
                    crate::message::reason_phrase(status)
                } else {
                    &reason
                };
                let mut r = response(req, status, reason, rng);
                r.headers.push(
                    "Warning",
                    format!(
                        "399 {} \"refused by the admission policy\"",
                        self.cfg.server_name
                    ),
                );
                r
            }
            Refusal::Forbidden(why) => {
                let mut r = response(req, 403, "Forbidden", rng);
                r.headers
                    .push("Warning", format!("399 {} \"{why}\"", self.cfg.server_name));
                r
            }
            Refusal::Challenge { stale, proxy } => {
                self.counters.challenges += 1;
                let (realm, algs) = realm_and_algs
                    .unwrap_or_else(|| (self.cfg.default_domain.clone(), vec![Algorithm::Md5]));
                let nonce = self.nonces.mint(now, rng);
                let (status, reason, header) = if proxy {
                    (407, "Proxy Authentication Required", "Proxy-Authenticate")
                } else {
                    (401, "Unauthorized", "WWW-Authenticate")
                };
                let mut r = response(req, status, reason, rng);
                for alg in algs {
                    let mut v = format!(
                        "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                        alg.token()
                    );
                    if stale {
                        v.push_str(", stale=true");
                    }
                    r.headers.push(header, v);
                }
                r
            }
        }
    }
}

/// The AoR string the registrar keys bindings by: `sip:<username>@<domain>`.
pub fn aor(username: &str, domain: &str) -> String {
    let mut s = String::with_capacity(5 + username.len() + domain.len());
    s.push_str("sip:");
    s.push_str(username);
    s.push('@');
    s.push_str(domain);
    s
}

/// `req.response(status, reason)` with a random To tag.
fn response(req: &Request, status: u16, reason: &str, rng: &mut impl RngCore) -> Response {
    let mut r = req.response(status, reason);
    if let Some(to) = req.headers.get("To")
        && req.to_hdr().is_some_and(|t| t.tag().is_none())
    {
        let mut b = [0u8; 8];
        rng.fill_bytes(&mut b);
        let mut v = String::with_capacity(to.len() + 21);
        v.push_str(to);
        v.push_str(";tag=");
        for x in b {
            v.push(char::from(b"0123456789abcdef"[usize::from(x >> 4)]));
            v.push(char::from(b"0123456789abcdef"[usize::from(x & 15)]));
        }
        r.headers.set("To", v);
    }
    r
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Decodes `%XX` escapes; invalid escapes or non-UTF-8 results leave the text as it is.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_or(Cow::Borrowed(s), Cow::Owned)
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A delta-seconds value; values beyond 2^32-1 saturate (RFC 3261 §10.2.1.1 lets them mean "long").
fn parse_delta(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.parse::<u64>()
            .map_or(u32::MAX, |v| u32::try_from(v).unwrap_or(u32::MAX)),
    )
}

/// A q-value (`0`, `0.5`, `1.000`) × 1000.
fn parse_q(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u16 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut f: u16 = 0;
    for i in 0..3 {
        f = f * 10 + frac.as_bytes().get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    let q = int * 1000 + f;
    (q <= 1000).then_some(q)
}

/// True when `host[:port]` names exactly `addr` (default port 5060).
fn same_addr(host: &str, port: Option<u16>, addr: SocketAddr) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical() == addr.ip().to_canonical())
        && port.unwrap_or(5060) == addr.port()
}

/// The digest `uri` names the Request-URI: same scheme family, user, host (any case) and port.
fn uri_matches(digest_uri: &str, req_uri: &Uri) -> bool {
    match Uri::parse(digest_uri) {
        Ok(u) if u.is_sip() && req_uri.is_sip() => {
            // A registrar's Request-URI has no user part; some clients (SIPp, some ATAs) put the
            // registrar's address:port there instead of its domain. The response hash covers the
            // uri as sent, so accepting any user-less SIP URI only loosens which spelling of "this
            // registrar" is taken, never whose credentials.
            (u.user.is_none() && req_uri.user.is_none())
                || (u.user == req_uri.user
                    && u.host.eq_ignore_ascii_case(&req_uri.host)
                    && u.port == req_uri.port)
        }
        _ => digest_uri.eq_ignore_ascii_case(&req_uri.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrar_is_send() {
        fn send<T: Send + 'static>() {}
        send::<Registrar>();
        send::<RegisterOutcome>();
    }

    #[test]
    fn helpers() {
        assert_eq!(percent_decode("al%69ce"), "alice");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%ff"), "%ff");
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(parse_q("0.123"), Some(123));
        assert_eq!(parse_delta("99999999999"), Some(u32::MAX));
        assert_eq!(parse_delta("x"), None);
        let a: SocketAddr = "[2001:db8::1]:5060".parse().expect("addr");
        assert!(same_addr("[2001:db8::1]", None, a));
        assert!(!same_addr("phone.example", None, a));
        let v4: SocketAddr = "192.0.2.1:5070".parse().expect("addr");
        assert!(same_addr("192.0.2.1", Some(5070), v4));
        assert!(!same_addr("192.0.2.1", None, v4));
    }
}
