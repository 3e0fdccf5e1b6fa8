//! Configuration: the local file (`csps.toml`, only what is needed to reach the store), and the
//! live settings read from the store's configuration entries (`*` and one per server) under the
//! cSPS keys (`Data.SipConfig.TrustedIps`, …). Changes are published on a watch channel, so every
//! consumer (the registrar's trusted ranges, the TLS listener) applies them without a restart.

pub mod local;

use std::sync::Arc;

use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::store::{ConfigEntry, Store, StoreError};

/// Name of the global configuration entry.
pub const GLOBAL: &str = "*";

/// Typed view of the leaves the running server uses, with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `Data.SipConfig.DefaultSipDomain`: the domain (and digest realm) of accounts created without one.
    pub default_sip_domain: String,
    /// `Data.SipConfig.TrustedIps`: REGISTERs from these ranges are not challenged.
    pub trusted_ips: Vec<IpNet>,
    /// `Data.SipConfig.AuthFailureLimit`: failed digest attempts per account and source before 403.
    pub auth_failure_limit: u32,
    /// `Data.SipConfig.MinExpires`: shortest registration accepted (423 below it).
    pub min_expires: u32,
    /// `Data.SipConfig.MaxExpires`: longest registration granted.
    pub max_expires: u32,
    /// `Data.SipConfig.NatExpires`: registration interval granted to phones behind NAT.
    pub nat_expires: u32,
    /// `Data.SipConfig.CertificateThumbPrint`: SHA-1 of the TLS certificate in `<data-dir>/certs/`.
    pub certificate_thumbprint: String,
    /// `Data.SipConfig.DigestAlgorithms`: digest challenges offered, in order (`MD5`, `SHA-256`);
    /// default `["MD5"]`.
    pub digest_algorithms: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_sip_domain: "csps.local".to_owned(),
            trusted_ips: Vec::new(),
            auth_failure_limit: 5,
            min_expires: 60,
            max_expires: 3600,
            nat_expires: 120,
            certificate_thumbprint: String::new(),
            // MD5 only by default: baresip 1.0 (libre) fails the whole registration with ENOSYS
            // when any challenge names SHA-256, and SIPp answers only the first one; operators
            // whose phones speak RFC 8760 add "SHA-256" (first, to prefer it).
            digest_algorithms: vec!["MD5".to_owned()],
        }
    }
}

/// One leaf of the configuration: its dotted path, JSON type and default.
pub struct Leaf {
    /// Dotted path such as `Data.SipConfig.TrustedIps`.
    pub path: &'static str,
    /// JSON type: `string`, `integer`, `boolean`, `array`.
    pub kind: &'static str,
}

/// The leaves this version knows (the access-control issue extends the model).
pub const LEAVES: &[Leaf] = &[
    Leaf {
        path: "Data.SipConfig.DefaultSipDomain",
        kind: "string",
    },
    Leaf {
        path: "Data.SipConfig.TrustedIps",
        kind: "array",
    },
    Leaf {
        path: "Data.SipConfig.AuthFailureLimit",
        kind: "integer",
    },
    Leaf {
        path: "Data.SipConfig.MinExpires",
        kind: "integer",
    },
    Leaf {
        path: "Data.SipConfig.MaxExpires",
        kind: "integer",
    },
    Leaf {
        path: "Data.SipConfig.NatExpires",
        kind: "integer",
    },
    Leaf {
        path: "Data.SipConfig.CertificateThumbPrint",
        kind: "string",
    },
];

impl Settings {
    /// The entry a fresh store starts with.
    pub fn default_entry(&self) -> ConfigEntry {
        json!({"Data": {"SipConfig": {
            "DefaultSipDomain": self.default_sip_domain,
            "TrustedIps": self.trusted_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "AuthFailureLimit": self.auth_failure_limit,
            "MinExpires": self.min_expires,
            "MaxExpires": self.max_expires,
            "NatExpires": self.nat_expires,
            "CertificateThumbPrint": self.certificate_thumbprint,
            "DigestAlgorithms": self.digest_algorithms,
        }}})
    }

    /// Reads the settings from an entry; a missing or invalid leaf keeps its default (and is logged).
    pub fn from_entry(entry: &ConfigEntry) -> Settings {
        let d = Settings::default();
        let str_leaf = |p: &str, def: &str| match leaf(entry, p) {
            Some(Value::String(s)) => s.clone(),
            _ => def.to_owned(),
        };
        let u32_leaf = |p: &str, def: u32| {
            leaf(entry, p)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(def)
        };
        let trusted_ips = match leaf(entry, "Data.SipConfig.TrustedIps") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str())
                .filter_map(|s| match parse_cidr(s) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::warn!(cidr = s, "ignoring trusted range: {e}");
                        None
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        let digest_algorithms = match leaf(entry, "Data.SipConfig.DigestAlgorithms") {
            Some(Value::Array(a)) => {
                let algs: Vec<String> = a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter(|s| csps_sip::digest::Algorithm::from_token(s).is_some())
                    .map(str::to_owned)
                    .collect();
                if algs.is_empty() {
                    d.digest_algorithms.clone()
                } else {
                    algs
                }
            }
            _ => d.digest_algorithms.clone(),
        };
        Settings {
            digest_algorithms,
            default_sip_domain: str_leaf("Data.SipConfig.DefaultSipDomain", &d.default_sip_domain),
            trusted_ips,
            auth_failure_limit: u32_leaf("Data.SipConfig.AuthFailureLimit", d.auth_failure_limit),
            min_expires: u32_leaf("Data.SipConfig.MinExpires", d.min_expires),
            max_expires: u32_leaf("Data.SipConfig.MaxExpires", d.max_expires),
            nat_expires: u32_leaf("Data.SipConfig.NatExpires", d.nat_expires),
            certificate_thumbprint: str_leaf(
                "Data.SipConfig.CertificateThumbPrint",
                &d.certificate_thumbprint,
            ),
        }
    }
}

/// Parses a CIDR range (`10.0.0.0/8`, `2001:db8::/32`) or a single address (as /32 or /128).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{s}` is not an IPv4 or IPv6 address or CIDR range"))
}

/// The value at a dotted path of an entry.
pub fn leaf<'a>(entry: &'a ConfigEntry, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(entry, |v, k| v.get(k))
}

/// Sets the value at a dotted path, creating objects on the way.
pub fn set_leaf(entry: &mut ConfigEntry, path: &str, value: Value) {
    let mut cur = entry;
    let mut keys = path.split('.').peekable();
    while let Some(k) = keys.next() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if keys.peek().is_none() {
            obj.insert(k.to_owned(), value);
            return;
        }
        cur = obj.entry(k.to_owned()).or_insert_with(|| json!({}));
    }
}

/// The running server's view of its configuration, kept current from the store.
#[derive(Clone)]
pub struct LiveConfig {
    store: Arc<dyn Store>,
    server: String,
    tx: Arc<watch::Sender<Arc<Settings>>>,
}

impl LiveConfig {
    /// Makes sure the global and this server's entries exist (the server's copied from the global
    /// one at its first start), then loads the settings.
    pub async fn open(store: Arc<dyn Store>, server: &str) -> Result<LiveConfig, StoreError> {
        let global = match store.get_config(GLOBAL).await? {
            Some(g) => g,
            None => {
                let g = Settings::default().default_entry();
                store.put_config(GLOBAL, &g).await?;
                g
            }
        };
        let own = match store.get_config(server).await? {
            Some(e) => e,
            None => {
                store.put_config(server, &global).await?;
                global
            }
        };
        let (tx, _) = watch::channel(Arc::new(Settings::from_entry(&own)));
        Ok(LiveConfig {
            store,
            server: server.to_owned(),
            tx: Arc::new(tx),
        })
    }

    /// This server's name.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Settings>> {
        self.tx.subscribe()
    }

    /// Re-reads this server's entry from the store and publishes it if it changed.
    pub async fn reload(&self) -> Result<(), StoreError> {
        if let Some(e) = self.store.get_config(&self.server).await? {
            let s = Settings::from_entry(&e);
            self.tx.send_if_modified(|cur| {
                if **cur != s {
                    *cur = Arc::new(s);
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }
}
