//! The in-memory view of SIP accounts the registrar authenticates against (username and domain
//! to HA1s) and calls are routed by (usernames and E.164 numbers). Built from the store off the
//! packet path and swapped in whole when users change.

use std::collections::HashMap;
use std::sync::Arc;

use csps_sip::digest::Algorithm;
use csps_sip::registrar::{Account, Accounts};

use crate::store::{HashAlgorithm, Store, StoreError, User};

/// Accounts by lower-case `username@domain`.
#[derive(Default)]
pub struct AccountCache {
    by_name: HashMap<String, Account>,
    /// Display names, for the caller identity the gateway asserts.
    display: HashMap<String, String>,
    /// E.164 number → (username, domain): a call to a local account's number stays local.
    by_number: HashMap<String, (String, String)>,
    /// `username@domain` → its E.164 number, for routing policies.
    numbers: HashMap<String, String>,
    /// `username@domain` of the accounts activated for Teams.
    activated: std::collections::HashSet<String>,
}

fn key(username: &str, domain: &str) -> String {
    let mut k = String::with_capacity(username.len() + domain.len() + 1);
    k.push_str(&username.to_lowercase());
    k.push('@');
    k.push_str(&domain.to_ascii_lowercase());
    k
}

impl AccountCache {
    /// Builds the cache from user records.
    pub fn from_users(users: &[User]) -> AccountCache {
        let by_name = users
            .iter()
            .map(|u| {
                let ha1 = u
                    .ha1
                    .iter()
                    .map(|h| {
                        let alg = match h.algorithm {
                            HashAlgorithm::Md5 => Algorithm::Md5,
                            HashAlgorithm::Sha256 => Algorithm::Sha256,
                        };
                        (h.realm.clone(), alg, h.hash.clone())
                    })
                    .collect();
                (
                    key(&u.username, &u.domain),
                    Account {
                        enabled: u.enabled,
                        ha1,
                    },
                )
            })
            .collect();
        let display = users
            .iter()
            .filter_map(|u| {
                let name = u.display_name.as_deref()?.trim();
                (!name.is_empty()).then(|| (key(&u.username, &u.domain), name.to_owned()))
            })
            .collect();
        let mut by_number = HashMap::new();
        let mut numbers = HashMap::new();
        for u in users {
            let Some(n) = u
                .phone_number
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            numbers.insert(key(&u.username, &u.domain), n.to_owned());
            // Two accounts with one number: the first keeps it (the store lists by creation).
            by_number
                .entry(n.to_owned())
                .or_insert_with(|| (u.username.clone(), u.domain.clone()));
        }
        let activated = users
            .iter()
            .filter(|u| u.activated)
            .map(|u| key(&u.username, &u.domain))
            .collect();
        AccountCache {
            by_name,
            display,
            by_number,
            numbers,
            activated,
        }
    }

    /// The account (username, domain) whose E.164 number is `number`.
    pub fn by_number(&self, number: &str) -> Option<(&str, &str)> {
        self.by_number
            .get(number)
            .map(|(u, d)| (u.as_str(), d.as_str()))
    }

    /// The E.164 number of `username@domain`, if it has one.
    pub fn phone_number(&self, username: &str, domain: &str) -> Option<&str> {
        self.numbers.get(&key(username, domain)).map(String::as_str)
    }

    /// True when `username@domain` may call Teams and be called from it: activated, with an
    /// E.164 number (its identity on the trunk).
    pub fn teams_ready(&self, username: &str, domain: &str) -> bool {
        let k = key(username, domain);
        self.activated.contains(&k) && self.numbers.contains_key(&k)
    }

    /// Loads every user from the store.
    pub async fn load(store: &dyn Store) -> Result<Arc<AccountCache>, StoreError> {
        let users = store.list_users().await?;
        Ok(Arc::new(AccountCache::from_users(&users)))
    }

    /// The display name of `username@domain`, if it has one.
    pub fn display_name(&self, username: &str, domain: &str) -> Option<&str> {
        self.display.get(&key(username, domain)).map(String::as_str)
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl Accounts for AccountCache {
    fn lookup(&self, username: &str, domain: &str) -> Option<std::borrow::Cow<'_, Account>> {
        self.by_name
            .get(&key(username, domain))
            .map(std::borrow::Cow::Borrowed)
    }
}
