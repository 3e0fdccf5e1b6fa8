//! The binding table: bindings grouped by AoR in a small `Vec` each, plus an expiry index ordered
//! by time (one entry per distinct (expiry, AoR)), so `next_expiry` and `expire` never scan.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::transport::Remote;

/// One registered contact of an address of record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Address of record, `sip:user@domain` (user percent-decoded, domain lower-case).
    pub aor: String,
    /// `instance:<+sip.instance>;reg-id=<n>`, `instance:<+sip.instance>` or `contact:<uri>`.
    pub key: String,
    /// The Contact name-addr as sent, without its `expires` parameter.
    pub contact: String,
    /// When the binding lapses.
    pub expires_at: SystemTime,
    /// Where the REGISTER came from (with its flow over TCP/TLS/WS).
    pub source: Remote,
    /// The local address it arrived on.
    pub local: SocketAddr,
    /// The User-Agent header.
    pub user_agent: Option<String>,
    /// `+sip.instance` without quotes and angle brackets (RFC 5626).
    pub instance_id: Option<String>,
    /// `reg-id` (RFC 5626).
    pub reg_id: Option<u32>,
    /// Call-ID of the REGISTER that created or last refreshed it.
    pub call_id: String,
    /// CSeq number of that REGISTER.
    pub cseq: u32,
    /// Contact `q` × 1000.
    pub q: Option<u16>,
    /// Behind NAT: reach the phone at `source`, and keep the mapping alive.
    pub nat: bool,
}

impl Binding {
    /// The key of this binding.
    pub fn binding_key(&self) -> BindingKey {
        BindingKey {
            aor: self.aor.clone(),
            key: self.key.clone(),
        }
    }
}

/// What identifies one binding: the AoR and the binding part of [`Binding::key`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingKey {
    /// Address of record.
    pub aor: String,
    /// The binding part (see [`Binding::key`]).
    pub key: String,
}

/// Bindings by AoR with an expiry index.
#[derive(Default)]
pub(crate) struct Table {
    by_aor: HashMap<Arc<str>, Vec<Binding>>,
    expiry: BTreeSet<(SystemTime, Arc<str>)>,
    len: usize,
}

impl Table {
    pub(crate) fn get(&self, aor: &str) -> &[Binding] {
        self.by_aor.get(aor).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn shared_aor(&self, aor: &str) -> Arc<str> {
        match self.by_aor.get_key_value(aor) {
            Some((k, _)) => k.clone(),
            None => Arc::from(aor),
        }
    }

    /// Drops the index entry for `(t, aor)` unless another binding of `aor` still expires at `t`.
    fn unindex(&mut self, aor: &Arc<str>, t: SystemTime) {
        let still = self
            .by_aor
            .get(&**aor)
            .is_some_and(|v| v.iter().any(|b| b.expires_at == t));
        if !still {
            self.expiry.remove(&(t, aor.clone()));
        }
    }

    /// Inserts or replaces the binding with the same AoR and key.
    pub(crate) fn upsert(&mut self, b: Binding) {
        let aor = self.shared_aor(&b.aor);
        let t = b.expires_at;
        let list = self.by_aor.entry(aor.clone()).or_default();
        let old = match list.iter_mut().find(|x| x.key == b.key) {
            Some(slot) => Some(std::mem::replace(slot, b).expires_at),
            None => {
                // Most AoRs hold one or two bindings: grow one at a time, not by doubling.
                list.reserve_exact(1);
                list.push(b);
                self.len += 1;
                None
            }
        };
        if let Some(old_t) = old
            && old_t != t
        {
            self.unindex(&aor, old_t);
        }
        self.expiry.insert((t, aor));
    }

    /// Removes one binding.
    pub(crate) fn remove(&mut self, aor: &str, key: &str) -> Option<Binding> {
        let (aor, list) = self.by_aor.get_key_value(aor)?;
        let aor = aor.clone();
        let i = list.iter().position(|b| b.key == key)?;
        let list = self.by_aor.get_mut(&aor)?;
        let b = list.swap_remove(i);
        self.len -= 1;
        if list.is_empty() {
            self.by_aor.remove(&aor);
        } else if list.capacity() > 2 * list.len() {
            list.shrink_to_fit();
        }
        self.unindex(&aor, b.expires_at);
        Some(b)
    }

    pub(crate) fn next_expiry(&self) -> Option<SystemTime> {
        self.expiry.first().map(|(t, _)| *t)
    }

    /// Removes every binding whose expiry is at or before `now`.
    pub(crate) fn expire(&mut self, now: SystemTime) -> Vec<BindingKey> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.expiry.first() {
            if *t > now {
                break;
            }
            let Some((_, aor)) = self.expiry.pop_first() else {
                break;
            };
            let Some(list) = self.by_aor.get_mut(&aor) else {
                continue;
            };
            let before = list.len();
            list.retain(|b| {
                if b.expires_at <= now {
                    out.push(b.binding_key());
                    false
                } else {
                    true
                }
            });
            self.len -= before - list.len();
            if list.is_empty() {
                self.by_aor.remove(&aor);
            }
        }
        out
    }

    /// Heap bytes of the table's own structures, roughly: map slots, shared AoR keys, expiry index
    /// and unused `Vec` capacity (not the `Binding` structs themselves nor their strings).
    pub(crate) fn index_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(Arc<str>, Vec<Binding>)>() + 8;
        self.by_aor.capacity() * entry
            + self.expiry.len() * (std::mem::size_of::<(SystemTime, Arc<str>)>() + 16)
            + self
                .by_aor
                .iter()
                .map(|(k, v)| {
                    k.len() + 16 + (v.capacity() - v.len()) * std::mem::size_of::<Binding>()
                })
                .sum::<usize>()
    }
}
