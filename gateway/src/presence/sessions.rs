//! The sans-IO presence core: each user's answered calls across their devices, and the Graph
//! requests that keep their Teams presence Busy/InACall while there is at least one.
//!
//! Drive it as every core of the gateway is driven: feed [`Input`]s with the time, drain
//! [`Sessions::poll_output`], sleep until [`Sessions::poll_timeout`], then
//! [`Sessions::handle_timeout`]. It never reads the clock itself.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use csps::presence::sessions::{Action, Input, Outcome, Output, Sessions, Timing};
//!
//! let mut s = Sessions::new(Timing::default());
//! let now = Instant::now();
//! s.handle(now, Input::UserState { aor: "sip:alice@csps.local".into(), busy: true, call: 1 });
//! let Some(Output::Lookup { aor }) = s.poll_output() else { panic!() };
//! s.handle(now, Input::Identity { aor, upn: Some("alice@contoso.com".into()) });
//! let Some(Output::Request(r)) = s.poll_output() else { panic!() };
//! assert_eq!(r.action, Action::SetBusy);
//! s.handle(now, Input::Result { id: r.id, outcome: Outcome::Done });
//! // Renewed before Graph lets it lapse:
//! assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(240)));
//! ```
//!
//! Rules: a user is Busy from the start of their first answered call to the end of their last
//! (several calls on several devices stay one Busy); a user's Teams identity is asked for once
//! per busy spell ([`Output::Lookup`]) and a user without one (not activated, no UPN) costs
//! nothing more; one request per user is in flight at a time, and what the user's calls want
//! is decided again when it answers, so a call that ends while its `setPresence` is on the way
//! is cleared right after. A failure is retried with exponential backoff (or after the
//! `Retry-After` Graph gave); a `clearPresence` that keeps failing is given up once the last
//! `setPresence` has lapsed by itself; a refusal (400, 403, 404) is not retried before the next
//! renewal.
//!
//! A cluster: every server sets and clears the same Graph session (the app's), so a server
//! whose last call for a user ends must not clear while another server still has the user in a
//! call. Each `setPresence` therefore goes with this server's busy mark in the shared store
//! (written by the driver before it asks Graph), and the end of the user's last call here is
//! first an [`Action::Unmark`]: the driver removes this server's mark and then reads the
//! others'. [`Outcome::BusyElsewhere`] ends the user's state here without a clear (the other
//! server renews, and clears when its own last call ends); any other outcome, a store failure
//! included, goes on to the [`Action::Clear`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long sessions last and how failures are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `expirationDuration` of each `setPresence` (Graph accepts 5 minutes to 4 hours; 5
    /// minutes is its default).
    pub expiration: Duration,
    /// A busy session is set again this long after the last `setPresence` was sent.
    pub renew: Duration,
    /// The first retry waits this long; each next one twice as long as the one before.
    pub backoff_first: Duration,
    /// The longest wait between retries (a `Retry-After` may ask for longer).
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            expiration: Duration::from_secs(300),
            renew: Duration::from_secs(240),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

impl Timing {
    /// The wait before retry number `attempt` (1, 2, …): `backoff_first` doubled each time, at
    /// most `backoff_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.backoff_first
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// This server's busy mark of the user (until [`Timing::expiration`] from now) in the
    /// store, then Graph's `setPresence` Busy/InACall for [`Timing::expiration`].
    SetBusy,
    /// Of the store, not Graph: remove this server's busy mark of the user, then tell whether
    /// another server's is live ([`Outcome::BusyElsewhere`]) or not ([`Outcome::Done`]). Comes
    /// before every [`Action::Clear`].
    Unmark,
    /// `clearPresence` of the application's session.
    Clear,
}

/// A request to make for a user (to Graph; to the store for [`Action::Unmark`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Answered with [`Input::Result`] under this id.
    pub id: u64,
    /// The user's AoR (`sip:user@domain`).
    pub aor: String,
    /// The user's Teams identity (their UPN, which Graph takes in place of the object id).
    pub upn: String,
    /// What to ask.
    pub action: Action,
    /// `expirationDuration` for [`Action::SetBusy`].
    pub expiration: Duration,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Graph did it.
    Done,
    /// No answer, a 5xx or a 429: try again (after `after` when Graph said `Retry-After`).
    Retry {
        /// Graph's `Retry-After`.
        after: Option<Duration>,
    },
    /// Graph refused it (400, 403, 404): asking again at once would get the same answer.
    Refused,
    /// The answer to [`Action::Unmark`] when another server still has the user in a call: the
    /// presence is that server's to keep and clear.
    BusyElsewhere,
}

/// An event for the core.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input {
    /// A user's device entered (`busy`) or left an answered call.
    UserState {
        /// `sip:user@domain`.
        aor: String,
        /// In the call (true) or out of it.
        busy: bool,
        /// The call.
        call: u64,
    },
    /// The answer to [`Output::Lookup`]: the user's UPN when their account is activated and
    /// has one, else `None`.
    Identity {
        /// The AoR asked about.
        aor: String,
        /// Their Teams identity.
        upn: Option<String>,
    },
    /// The answer to [`Output::Request`].
    Result {
        /// The request's id.
        id: u64,
        /// How it went.
        outcome: Outcome,
    },
    /// User states were lost (the bus lagged): the driver takes a snapshot of the answered
    /// calls and answers with [`Input::Resync`]; the events until then are kept to replay on
    /// top of it, as the snapshot may be older or newer than each of them.
    Lagged,
    /// Every (AoR, call) pair in an answered call, from a snapshot taken after [`Input::Lagged`]:
    /// it replaces what the lost events left, and each user is brought in line (set or cleared).
    Resync {
        /// `sip:user@domain` and the call.
        busy: Vec<(String, u64)>,
    },
    /// The gateway stops, and its calls with it: every user shown Busy because of them is
    /// cleared, and nobody becomes busy any more.
    Shutdown,
}

/// Work for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Find the Teams identity of `aor` and answer with [`Input::Identity`].
    Lookup {
        /// `sip:user@domain`.
        aor: String,
    },
    /// Make this Graph request and answer with [`Input::Result`].
    Request(Request),
}

/// A user's Teams identity as far as the core knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Identity {
    Unknown,
    Asked,
    Known(Option<String>),
}

/// A request on its way.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    id: u64,
    action: Action,
    sent: Instant,
}

/// One user with a call, or with a presence still to clear.
#[derive(Debug)]
struct User {
    /// The answered calls any of their devices is in.
    calls: BTreeSet<u64>,
    identity: Identity,
    /// When the Busy session needs setting again (`None`: it is not known to be set).
    renew_at: Option<Instant>,
    /// Until when Graph may show them Busy because of a `setPresence` sent (`None`: it does not).
    shown_until: Option<Instant>,
    in_flight: Option<InFlight>,
    /// Failures in a row.
    attempts: u32,
    /// No request before this.
    not_before: Option<Instant>,
    /// This server's busy mark is removed and no other server's was live: on to the clear.
    unmarked: bool,
}

impl User {
    fn new() -> Self {
        User {
            calls: BTreeSet::new(),
            identity: Identity::Unknown,
            renew_at: None,
            shown_until: None,
            in_flight: None,
            attempts: 0,
            not_before: None,
            unmarked: false,
        }
    }
}

/// Every user's presence sessions.
#[derive(Debug)]
pub struct Sessions {
    timing: Timing,
    users: HashMap<String, User>,
    /// Id of each request in flight → its user.
    requests: HashMap<u64, String>,
    next_id: u64,
    out: VecDeque<Output>,
    /// Wake-ups (a user's renewal or retry); an entry outdated by a later change only causes a
    /// harmless look at that user.
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Since [`Input::Lagged`], until [`Input::Resync`]: the user states seen, in order.
    since_lag: Option<Vec<(String, bool, u64)>>,
    /// After [`Input::Shutdown`].
    stopping: bool,
}

impl Sessions {
    /// No user busy.
    pub fn new(timing: Timing) -> Self {
        Sessions {
            timing,
            users: HashMap::new(),
            requests: HashMap::new(),
            next_id: 1,
            out: VecDeque::new(),
            timers: BinaryHeap::new(),
            since_lag: None,
            stopping: false,
        }
    }

    /// Users the core keeps state for (busy, or being cleared).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user is busy or being cleared.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Feeds one event.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::UserState { aor, busy, call } => {
                if busy && self.stopping {
                    return;
                }
                if let Some(seen) = &mut self.since_lag {
                    seen.push((aor.clone(), busy, call));
                }
                if busy {
                    self.users
                        .entry(aor.clone())
                        .or_insert_with(User::new)
                        .calls
                        .insert(call);
                } else if let Some(u) = self.users.get_mut(&aor) {
                    u.calls.remove(&call);
                } else {
                    return;
                }
                self.step(now, &aor);
            }
            Input::Identity { aor, upn } => {
                let Some(u) = self.users.get_mut(&aor) else {
                    return;
                };
                u.identity = Identity::Known(upn.filter(|u| !u.trim().is_empty()));
                self.step(now, &aor);
            }
            Input::Result { id, outcome } => {
                let Some(aor) = self.requests.remove(&id) else {
                    return;
                };
                let Some(u) = self.users.get_mut(&aor) else {
                    return;
                };
                let Some(sent) = u.in_flight.take().filter(|f| f.id == id) else {
                    return;
                };
                match (outcome, sent.action) {
                    (Outcome::BusyElsewhere, Action::Unmark) => {
                        // Another server keeps them Busy (and clears it): nothing shown here.
                        u.renew_at = None;
                        u.shown_until = None;
                        u.attempts = 0;
                        u.not_before = None;
                        u.unmarked = false;
                    }
                    (_, Action::Unmark) => {
                        // This server's mark is gone (or the store failed: clearing is the
                        // safe side); a call that began meanwhile sets (and marks) it again.
                        u.unmarked = true;
                        u.renew_at = None;
                    }
                    (Outcome::Done | Outcome::BusyElsewhere, Action::SetBusy) => {
                        u.renew_at = Some(sent.sent + self.timing.renew);
                        u.attempts = 0;
                        u.not_before = None;
                    }
                    (Outcome::Done | Outcome::BusyElsewhere, Action::Clear) => {
                        u.renew_at = None;
                        u.shown_until = None;
                        u.attempts = 0;
                        u.not_before = None;
                    }
                    (Outcome::Retry { after }, _) => {
                        u.attempts = u.attempts.saturating_add(1);
                        let wait = after.unwrap_or_else(|| self.timing.backoff(u.attempts));
                        u.not_before = Some(now + wait);
                    }
                    (Outcome::Refused, Action::SetBusy) => {
                        u.attempts = 0;
                        u.not_before = Some(now + self.timing.renew);
                    }
                    (Outcome::Refused, Action::Clear) => {
                        // Nothing to clear (no such user, or no right to clear it): the set,
                        // if any, lapses by itself.
                        u.renew_at = None;
                        u.shown_until = None;
                        u.attempts = 0;
                        u.not_before = None;
                    }
                }
                self.step(now, &aor);
            }
            Input::Lagged => {
                self.since_lag.get_or_insert_with(Vec::new);
            }
            Input::Resync { busy } => self.resync(now, busy),
            Input::Shutdown => {
                self.stopping = true;
                let users: Vec<String> = self.users.keys().cloned().collect();
                for aor in users {
                    if let Some(u) = self.users.get_mut(&aor) {
                        u.calls.clear();
                    }
                    self.step(now, &aor);
                }
            }
        }
    }

    /// True between [`Input::Lagged`] and [`Input::Resync`]: a snapshot is on its way.
    pub fn resyncing(&self) -> bool {
        self.since_lag.is_some()
    }

    /// Replaces every user's calls by the snapshot `busy` with the events seen since the lag
    /// replayed on it; a snapshot without a lag before it is ignored.
    fn resync(&mut self, now: Instant, busy: Vec<(String, u64)>) {
        let Some(seen) = self.since_lag.take() else {
            return;
        };
        let mut calls: HashMap<String, BTreeSet<u64>> = HashMap::new();
        for (aor, call) in busy {
            calls.entry(aor).or_default().insert(call);
        }
        for (aor, on, call) in seen {
            let set = calls.entry(aor).or_default();
            if on && !self.stopping {
                set.insert(call);
            } else {
                set.remove(&call);
            }
        }
        let mut aors: Vec<String> = self.users.keys().cloned().collect();
        aors.extend(
            calls
                .keys()
                .filter(|a| !self.users.contains_key(*a))
                .cloned(),
        );
        for aor in aors {
            let now_calls = calls.remove(&aor).unwrap_or_default();
            if now_calls.is_empty() && !self.users.contains_key(&aor) {
                continue;
            }
            self.users
                .entry(aor.clone())
                .or_insert_with(User::new)
                .calls = now_calls;
            self.step(now, &aor);
        }
    }

    /// The next request or lookup to make, until `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Sessions::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Renews and retries what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, _))) = self.timers.peek()
            && *t <= now
        {
            let Some(Reverse((_, aor))) = self.timers.pop() else {
                break;
            };
            self.step(now, &aor);
        }
    }

    /// Decides what `aor` needs next; drops the user once nothing is left to do.
    fn step(&mut self, now: Instant, aor: &str) {
        let Some(u) = self.users.get_mut(aor) else {
            return;
        };
        if u.in_flight.is_some() || u.identity == Identity::Asked {
            return;
        }
        if let Some(t) = u.not_before.filter(|t| *t > now) {
            self.timers.push(Reverse((t, aor.to_owned())));
            return;
        }
        let busy = !u.calls.is_empty();
        let upn = match &u.identity {
            Identity::Known(Some(upn)) => upn.clone(),
            Identity::Unknown if busy => {
                u.identity = Identity::Asked;
                self.out.push_back(Output::Lookup {
                    aor: aor.to_owned(),
                });
                return;
            }
            // Not busy and never set; or a user without a Teams identity.
            _ => {
                if !busy {
                    self.users.remove(aor);
                }
                return;
            }
        };
        let action = if busy {
            match u.renew_at {
                Some(t) if t > now => {
                    self.timers.push(Reverse((t, aor.to_owned())));
                    return;
                }
                _ => Action::SetBusy,
            }
        } else if u.shown_until.is_some_and(|t| t > now) {
            if u.unmarked {
                Action::Clear
            } else {
                Action::Unmark
            }
        } else {
            // Cleared, or lapsed by itself.
            self.users.remove(aor);
            return;
        };
        let id = self.next_id;
        self.next_id += 1;
        if action == Action::SetBusy {
            u.shown_until = Some(now + self.timing.expiration);
            u.unmarked = false;
        }
        u.in_flight = Some(InFlight {
            id,
            action,
            sent: now,
        });
        self.requests.insert(id, aor.to_owned());
        self.out.push_back(Output::Request(Request {
            id,
            aor: aor.to_owned(),
            upn,
            action,
            expiration: self.timing.expiration,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "sip:alice@csps.local";
    const BOB: &str = "sip:bob@csps.local";
    const S: Duration = Duration::from_secs(1);

    /// A core and a simulated clock.
    struct World {
        s: Sessions,
        now: Instant,
    }

    impl World {
        fn new() -> Self {
            World {
                s: Sessions::new(Timing::default()),
                now: Instant::now(),
            }
        }

        fn state(&mut self, aor: &str, busy: bool, call: u64) {
            let aor = aor.to_owned();
            self.s
                .handle(self.now, Input::UserState { aor, busy, call });
        }

        fn identity(&mut self, aor: &str, upn: Option<&str>) {
            let (aor, upn) = (aor.to_owned(), upn.map(str::to_owned));
            self.s.handle(self.now, Input::Identity { aor, upn });
        }

        fn result(&mut self, id: u64, outcome: Outcome) {
            self.s.handle(self.now, Input::Result { id, outcome });
        }

        fn outputs(&mut self) -> Vec<Output> {
            std::iter::from_fn(|| self.s.poll_output()).collect()
        }

        /// The one request now out, and nothing else.
        fn request(&mut self) -> Request {
            match self.outputs().as_slice() {
                [Output::Request(r)] => r.clone(),
                other => panic!("expected one request, got {other:?}"),
            }
        }

        /// Moves the clock on by `d`, firing every timer due on the way.
        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            while let Some(t) = self.s.poll_timeout().filter(|t| *t <= end) {
                self.now = self.now.max(t);
                self.s.handle_timeout(self.now);
            }
            self.now = end;
        }

        /// Alice busy in `call`, her identity found: her first `setPresence`, not answered yet.
        fn alice_setting(&mut self, call: u64) -> Request {
            self.state(ALICE, true, call);
            assert_eq!(self.outputs(), vec![Output::Lookup { aor: ALICE.into() }]);
            self.identity(ALICE, Some("alice@contoso.com"));
            let r = self.request();
            assert_eq!(
                (r.action, r.upn.as_str()),
                (Action::SetBusy, "alice@contoso.com")
            );
            assert_eq!(r.expiration, Duration::from_secs(300));
            r
        }

        /// `aor`'s last call here ended: the one request out is the unmark, answered `outcome`.
        fn unmark(&mut self, aor: &str, outcome: Outcome) {
            let r = self.request();
            assert_eq!((r.action, r.aor.as_str()), (Action::Unmark, aor));
            self.result(r.id, outcome);
        }

        /// `aor`'s last call here ended and no other server's mark is live: the clear that
        /// follows the unmark, not answered yet.
        fn clear(&mut self, aor: &str) -> Request {
            self.unmark(aor, Outcome::Done);
            let r = self.request();
            assert_eq!((r.action, r.aor.as_str()), (Action::Clear, aor));
            r
        }

        /// Alice busy in `call` with her first `setPresence` done.
        fn alice_busy(&mut self, call: u64) {
            let r = self.alice_setting(call);
            self.result(r.id, Outcome::Done);
        }
    }

    #[test]
    fn a_lag_is_mended_by_the_snapshot_with_the_later_events_replayed() {
        let mut w = World::new();
        w.alice_busy(1);
        // Lost: alice's call 1 ended, bob's call 2 began. Seen after the lag: bob's call 3
        // began and ended (the snapshot, taken later, may not know it ended), carol's call 4
        // began (the snapshot, taken earlier, may not know it).
        w.s.handle(w.now, Input::Lagged);
        w.state(BOB, true, 3);
        assert_eq!(w.outputs(), vec![Output::Lookup { aor: BOB.into() }]);
        w.state(BOB, false, 3);
        w.state("sip:carol@csps.local", true, 4);
        assert_eq!(
            w.outputs(),
            vec![Output::Lookup {
                aor: "sip:carol@csps.local".into()
            }]
        );
        let busy = vec![(BOB.to_owned(), 2), (BOB.to_owned(), 3)];
        w.s.handle(w.now, Input::Resync { busy });
        // Alice is cleared; bob and carol wait for their lookups.
        let r = w.clear(ALICE);
        w.result(r.id, Outcome::Done);
        w.identity(BOB, Some("bob@contoso.com"));
        assert_eq!(w.request().action, Action::SetBusy, "bob is in call 2");
        w.identity("sip:carol@csps.local", Some("carol@contoso.com"));
        assert_eq!(w.request().action, Action::SetBusy, "carol is in call 4");
        // A snapshot with no lag before it changes nothing.
        w.s.handle(w.now, Input::Resync { busy: Vec::new() });
        assert!(w.outputs().is_empty());
        assert_eq!(w.s.len(), 2);
    }

    #[test]
    fn shutdown_clears_everyone_shown_busy_and_sets_nobody() {
        let mut w = World::new();
        w.alice_busy(1);
        w.state(BOB, true, 2);
        assert_eq!(w.outputs(), vec![Output::Lookup { aor: BOB.into() }]);
        w.s.handle(w.now, Input::Shutdown);
        let r = w.clear(ALICE);
        w.result(r.id, Outcome::Done);
        // Bob's lookup comes back after the stop: his Busy is never set.
        w.identity(BOB, Some("bob@contoso.com"));
        w.state("sip:carol@csps.local", true, 3);
        assert!(w.outputs().is_empty());
        assert!(w.s.is_empty());
    }

    #[test]
    fn busy_from_the_first_call_to_the_end_of_the_last() {
        let mut w = World::new();
        w.alice_busy(1);
        // A second device in a second call: still one Busy, nothing asked.
        w.state(ALICE, true, 2);
        assert!(w.outputs().is_empty());
        w.state(ALICE, false, 1);
        assert!(w.outputs().is_empty());
        w.state(ALICE, false, 2);
        let r = w.clear(ALICE);
        w.result(r.id, Outcome::Done);
        assert!(w.s.is_empty());
        w.advance(Duration::from_secs(600));
        assert!(w.outputs().is_empty());
    }

    #[test]
    fn a_repeated_event_counts_once() {
        let mut w = World::new();
        w.alice_busy(1);
        w.state(ALICE, true, 1);
        w.state(ALICE, false, 1);
        w.clear(ALICE);
        // An end for a call never seen is ignored.
        w.state(BOB, false, 9);
        assert!(w.outputs().is_empty());
    }

    #[test]
    fn renewed_while_busy_every_four_minutes() {
        let mut w = World::new();
        w.alice_busy(1);
        let start = w.now;
        w.advance(Duration::from_secs(239));
        assert!(w.outputs().is_empty());
        let mut sent = Vec::new();
        for _ in 0..3 {
            let due = w.s.poll_timeout().expect("a renewal");
            w.advance(due - w.now);
            let r = w.request();
            assert_eq!(r.action, Action::SetBusy);
            sent.push((w.now - start).as_secs());
            w.advance(S);
            w.result(r.id, Outcome::Done);
        }
        assert_eq!(sent, [240, 480, 720]);
    }

    #[test]
    fn no_identity_no_graph_and_no_state_left() {
        let mut w = World::new();
        w.state(BOB, true, 3);
        assert_eq!(w.outputs(), vec![Output::Lookup { aor: BOB.into() }]);
        w.identity(BOB, None);
        assert!(w.outputs().is_empty());
        w.state(BOB, false, 3);
        assert!(w.outputs().is_empty());
        assert!(w.s.is_empty());
        // An empty UPN is no identity either.
        w.state(BOB, true, 4);
        assert_eq!(w.outputs(), vec![Output::Lookup { aor: BOB.into() }]);
        w.identity(BOB, Some(" "));
        assert!(w.outputs().is_empty());
    }

    #[test]
    fn a_call_that_ends_during_the_lookup_costs_nothing() {
        let mut w = World::new();
        w.state(ALICE, true, 1);
        assert_eq!(w.outputs().len(), 1);
        w.state(ALICE, false, 1);
        w.identity(ALICE, Some("alice@contoso.com"));
        assert!(w.outputs().is_empty());
        assert!(w.s.is_empty());
    }

    #[test]
    fn a_call_that_ends_during_the_set_is_cleared_after_it() {
        let mut w = World::new();
        let set = w.alice_setting(1);
        w.state(ALICE, false, 1);
        assert!(w.outputs().is_empty(), "one request at a time");
        w.result(set.id, Outcome::Done);
        w.clear(ALICE);
    }

    #[test]
    fn a_new_call_during_the_clear_sets_busy_again() {
        let mut w = World::new();
        w.alice_busy(1);
        w.state(ALICE, false, 1);
        let clear = w.clear(ALICE);
        w.state(ALICE, true, 2);
        assert!(w.outputs().is_empty());
        w.result(clear.id, Outcome::Done);
        assert_eq!(w.request().action, Action::SetBusy);
    }

    #[test]
    fn failures_back_off_exponentially_and_honour_retry_after() {
        let mut w = World::new();
        let mut waits = Vec::new();
        let mut r = w.alice_setting(1);
        for _ in 0..8 {
            let failed_at = w.now;
            w.result(r.id, Outcome::Retry { after: None });
            let due = w.s.poll_timeout().expect("a retry");
            waits.push((due - failed_at).as_secs());
            w.advance(due - w.now);
            r = w.request();
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        // Throttled: Graph's Retry-After wins.
        let at = w.now;
        w.result(
            r.id,
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
            },
        );
        assert_eq!(w.s.poll_timeout(), Some(at + Duration::from_secs(7)));
        w.advance(Duration::from_secs(7));
        let r = w.request();
        // A success starts the backoff afresh.
        w.result(r.id, Outcome::Done);
        w.state(ALICE, false, 1);
        let c = w.clear(ALICE);
        let at = w.now;
        w.result(c.id, Outcome::Retry { after: None });
        assert_eq!(w.s.poll_timeout(), Some(at + S));
    }

    #[test]
    fn a_clear_that_keeps_failing_is_given_up_when_the_set_has_lapsed() {
        let mut w = World::new();
        w.alice_busy(1);
        let set_at = w.now;
        w.state(ALICE, false, 1);
        w.unmark(ALICE, Outcome::Done);
        let mut clears = 0;
        while !w.s.is_empty() {
            assert!(clears < 50, "never given up");
            match w.outputs().as_slice() {
                [Output::Request(r)] => {
                    assert_eq!(r.action, Action::Clear);
                    clears += 1;
                    w.result(r.id, Outcome::Retry { after: None });
                }
                [] => {
                    let t = w.s.poll_timeout().expect("a retry is due");
                    w.advance(t - w.now);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(w.now >= set_at + Duration::from_secs(300));
        assert!(w.s.is_empty());
        assert!(clears > 5, "{clears}");
    }

    #[test]
    fn a_refused_set_waits_for_the_next_renewal() {
        let mut w = World::new();
        let r = w.alice_setting(1);
        let at = w.now;
        w.result(r.id, Outcome::Refused);
        assert_eq!(w.s.poll_timeout(), Some(at + Duration::from_secs(240)));
        w.advance(Duration::from_secs(240));
        assert_eq!(w.request().action, Action::SetBusy);
    }

    #[test]
    fn a_refused_clear_is_not_retried() {
        let mut w = World::new();
        w.alice_busy(1);
        w.state(ALICE, false, 1);
        let r = w.clear(ALICE);
        w.result(r.id, Outcome::Refused);
        assert!(w.outputs().is_empty());
        assert!(w.s.is_empty());
    }

    #[test]
    fn users_are_independent() {
        let mut w = World::new();
        w.alice_busy(1);
        w.state(BOB, true, 1);
        assert_eq!(w.outputs(), vec![Output::Lookup { aor: BOB.into() }]);
        w.identity(BOB, Some("bob@contoso.com"));
        let b = w.request();
        assert_eq!(
            (b.action, b.upn.as_str()),
            (Action::SetBusy, "bob@contoso.com")
        );
        w.result(b.id, Outcome::Done);
        w.state(BOB, false, 1);
        let c = w.clear(BOB);
        // A stale or unknown result changes nothing.
        w.result(b.id, Outcome::Done);
        w.result(999, Outcome::Done);
        assert!(w.outputs().is_empty());
        w.result(c.id, Outcome::Done);
        assert_eq!(w.s.len(), 1);
    }

    #[test]
    fn busy_on_another_server_is_left_to_it() {
        let mut w = World::new();
        w.alice_busy(1);
        w.state(ALICE, false, 1);
        w.unmark(ALICE, Outcome::BusyElsewhere);
        // No clear, no renewal: the other server renews, and clears after its last call.
        assert!(w.outputs().is_empty());
        assert!(w.s.is_empty());
        w.advance(Duration::from_secs(600));
        assert!(w.outputs().is_empty());
        // A later call here sets (and marks) her Busy afresh.
        w.alice_busy(2);
    }

    #[test]
    fn an_unmark_that_did_not_answer_busy_elsewhere_goes_on_to_the_clear() {
        let mut w = World::new();
        w.alice_busy(1);
        w.state(ALICE, false, 1);
        w.unmark(ALICE, Outcome::Refused);
        let r = w.request();
        assert_eq!(r.action, Action::Clear);
        // A clear that fails is retried as a clear: the mark is not asked about again.
        w.result(r.id, Outcome::Retry { after: None });
        w.advance(S);
        assert_eq!(w.request().action, Action::Clear);
    }

    #[test]
    fn a_new_call_during_the_unmark_sets_busy_again() {
        for outcome in [Outcome::Done, Outcome::BusyElsewhere] {
            let mut w = World::new();
            w.alice_busy(1);
            w.state(ALICE, false, 1);
            let unmark = w.request();
            assert_eq!(unmark.action, Action::Unmark);
            w.state(ALICE, true, 2);
            assert!(w.outputs().is_empty(), "one request at a time");
            // The mark is gone either way: set (and mark) again at once, not at the renewal.
            w.result(unmark.id, outcome.clone());
            assert_eq!(w.request().action, Action::SetBusy, "{outcome:?}");
        }
    }

    #[test]
    fn shutdown_leaves_users_busy_on_another_server_to_it() {
        let mut w = World::new();
        w.alice_busy(1);
        w.state(BOB, true, 2);
        w.outputs();
        w.identity(BOB, Some("bob@contoso.com"));
        let b = w.request();
        w.result(b.id, Outcome::Done);
        w.s.handle(w.now, Input::Shutdown);
        let unmarks = w.outputs();
        assert_eq!(unmarks.len(), 2, "{unmarks:?}");
        for o in unmarks {
            let Output::Request(r) = o else {
                panic!("{o:?}")
            };
            assert_eq!(r.action, Action::Unmark);
            let outcome = if r.aor == ALICE {
                Outcome::BusyElsewhere
            } else {
                Outcome::Done
            };
            w.result(r.id, outcome);
        }
        let c = w.request();
        assert_eq!((c.action, c.aor.as_str()), (Action::Clear, BOB));
        w.result(c.id, Outcome::Done);
        assert!(w.s.is_empty());
    }

    #[test]
    fn backoff_is_capped() {
        let t = Timing::default();
        assert_eq!(t.backoff(1), S);
        assert_eq!(t.backoff(3), 4 * S);
        assert_eq!(t.backoff(100), 60 * S);
        assert_eq!(t.backoff(0), S);
    }
}
