//! The RFC 3261 §17 timers: a small table per transaction and one ordered queue for all of them,
//! so that `poll_timeout` and firing never walk every transaction.

use std::collections::BTreeSet;
use std::time::Instant;

use super::TxnKey;

/// A transaction timer (RFC 3261 Table 4, RFC 6026 §8.4/§8.7, plus two housekeeping timers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TxnTimer {
    /// Client INVITE retransmission on UDP (T1, doubling).
    A,
    /// Client INVITE timeout (64*T1).
    B,
    /// Client INVITE: wait for response retransmissions in Completed (32 s on UDP, 0 reliable).
    D,
    /// Client non-INVITE retransmission on UDP (T1 doubling up to T2).
    E,
    /// Client non-INVITE timeout (64*T1).
    F,
    /// Server INVITE final-response retransmission on UDP (T1 doubling up to T2).
    G,
    /// Server INVITE: wait for the ACK (64*T1).
    H,
    /// Server INVITE: absorb ACK retransmissions in Confirmed (T4 on UDP, 0 reliable).
    I,
    /// Server non-INVITE: absorb request retransmissions in Completed (64*T1 on UDP, 0 reliable).
    J,
    /// Client non-INVITE: absorb response retransmissions in Completed (T4 on UDP, 0 reliable).
    K,
    /// Server INVITE Accepted state (RFC 6026 §8.7, 64*T1).
    L,
    /// Client INVITE Accepted state (RFC 6026 §8.4, 64*T1).
    M,
    /// Server INVITE: send 100 Trying when the app has not answered in time (RFC 3261 §17.2.1).
    Trying,
    /// No final response in time: a server transaction the app never answered (64*T1 for
    /// non-INVITE, `invite_answer_timeout` for INVITE), or a client INVITE stuck in Proceeding
    /// (Timer C's role); it reports a timeout and ends, so nothing leaks.
    Guard,
}

impl TxnTimer {
    /// Number of timers, the size of a [`TimerTable`].
    pub const COUNT: usize = 14;

    fn index(self) -> usize {
        self as usize
    }
}

/// A transaction's armed timers, indexed by [`TxnTimer`].
#[derive(Clone, Debug, Default)]
pub(super) struct TimerTable([Option<Instant>; TxnTimer::COUNT]);

impl TimerTable {
    fn set(&mut self, t: TxnTimer, at: Option<Instant>) -> Option<Instant> {
        std::mem::replace(&mut self.0[t.index()], at)
    }

    /// Every timer, in table order.
    const ALL: [TxnTimer; TxnTimer::COUNT] = [
        TxnTimer::A,
        TxnTimer::B,
        TxnTimer::D,
        TxnTimer::E,
        TxnTimer::F,
        TxnTimer::G,
        TxnTimer::H,
        TxnTimer::I,
        TxnTimer::J,
        TxnTimer::K,
        TxnTimer::L,
        TxnTimer::M,
        TxnTimer::Trying,
        TxnTimer::Guard,
    ];
}

/// Every armed timer of every transaction, earliest first. Entries are removed exactly when a
/// timer is disarmed, so the queue never holds stale entries.
#[derive(Debug, Default)]
pub(super) struct TimerQueue(BTreeSet<(Instant, TxnKey, TxnTimer)>);

impl TimerQueue {
    /// The earliest armed timer.
    pub(super) fn first(&self) -> Option<Instant> {
        self.0.first().map(|e| e.0)
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(TxnKey, TxnTimer)> {
        match self.0.first() {
            Some(&(at, _, _)) if at <= now => self.0.pop_first().map(|(_, k, t)| (k, t)),
            _ => None,
        }
    }

    /// Number of queued timers.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Arms `t` of transaction `key` at `at`, replacing an earlier arming.
    pub(super) fn arm(&mut self, table: &mut TimerTable, key: TxnKey, t: TxnTimer, at: Instant) {
        if let Some(old) = table.set(t, Some(at)) {
            self.0.remove(&(old, key, t));
        }
        self.0.insert((at, key, t));
    }

    /// Disarms `t`; a timer that is not armed is left alone.
    pub(super) fn disarm(&mut self, table: &mut TimerTable, key: TxnKey, t: TxnTimer) {
        if let Some(old) = table.set(t, None) {
            self.0.remove(&(old, key, t));
        }
    }

    /// Marks `t` as no longer armed after [`Self::pop_due`] returned it.
    pub(super) fn fired(table: &mut TimerTable, t: TxnTimer) {
        table.set(t, None);
    }

    /// Disarms every timer of a transaction.
    pub(super) fn disarm_all(&mut self, table: &mut TimerTable, key: TxnKey) {
        for t in TimerTable::ALL {
            if let Some(at) = table.set(t, None) {
                self.0.remove(&(at, key, t));
            }
        }
    }
}
