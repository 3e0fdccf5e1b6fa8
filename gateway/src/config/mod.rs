//! Configuration: the local file (`csps.toml`, only what is needed to reach the store), and the
//! live settings read from the store's configuration entries (`*` and one per server) under the
//! cSPS keys (`Data.SipConfig.TrustedIps`, …). Changes are published on a watch channel, so every
//! consumer (the registrar's trusted ranges, the TLS listener) applies them without a restart.
//! [`model`] holds the typed leaf table (types, defaults, validation, secrets); [`propagate`]
//! keeps the view current when other servers change the shared store.

pub mod local;
pub mod model;
pub mod propagate;
pub mod upgrade;

use std::sync::Arc;

use ipnet::IpNet;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use model::{LEAVES, Leaf};

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
    /// `Data.SipConfig.Srtp`: SRTP towards phones.
    pub srtp: SrtpMode,
    /// `Data.SipConfig.SrtpOverPlainTransport`: SDES keys may cross unencrypted signalling.
    pub srtp_over_plain: bool,
    /// `Data.SipConfig.Use8KHz`: offer narrowband codecs only to phones.
    pub use_8khz: bool,
    /// `Data.SipConfig.MusicOnHold`: empty (off), `builtin`, or the path of a WAV file.
    pub music_on_hold: String,
    /// `Data.SipConfig.EmergencyNumbers`: numbers always routed as emergency calls.
    pub emergency_numbers: Vec<String>,
    /// The user part of `Data.SipConfig.ConferenceUri`: what phones dial to join a conference
    /// room; empty: no conferences.
    pub conference_user: String,
    /// `Data.System.MinRtpPort`: lowest media port (below `max_rtp_port`).
    pub min_rtp_port: u16,
    /// `Data.System.MaxRtpPort`: highest media port.
    pub max_rtp_port: u16,
    /// `Data.System.SwaggerRemote`: Swagger UI for remote clients too.
    pub swagger_remote: bool,
    /// `Data.System.CallRecordDays`: days call records are kept.
    pub call_record_days: u32,
    /// `Data.SipConfig.SbcFqdn`, `TeamsProxies`, `TeamsCaFile`, `TeamsOptionsInterval`: the
    /// Direct Routing trunk.
    pub trunk: TrunkSettings,
    /// `Data.SpsAzureApp.*`: the app end users sign in with.
    pub sps_app: AzureApp,
    /// `Data.AdminAzureApp.*`: the app admins sign in with.
    pub admin_app: AzureApp,
    /// `Data.SpsAzureApp.TokenRefreshHour`: the UTC hour of the nightly token refresh.
    pub token_refresh_hour: u32,
}

/// `Data.SipConfig.Srtp`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SrtpMode {
    /// Plain RTP only (the cSPS default).
    #[default]
    Disabled,
    /// SRTP offered; plain RTP accepted.
    Supported,
    /// SRTP only.
    Required,
}

/// The Direct Routing trunk's leaves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrunkSettings {
    /// The gateway's FQDN on the trunk; empty: no trunk.
    pub fqdn: String,
    /// `host:port` of each proxy, in failover order.
    pub proxies: Vec<String>,
    /// PEM file of trusted CAs; empty: the web PKI roots.
    pub ca_file: String,
    /// Seconds between OPTIONS keep-alives.
    pub options_interval: u32,
}

/// A secret string: compared and cloned like a string, never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    /// The secret in clear.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// An Entra ID application (`Data.SpsAzureApp` or `Data.AdminAzureApp`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AzureApp {
    /// Tenant id or domain; empty when not configured.
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Secret,
    /// OAuth redirect URI (SpsAzureApp only; empty otherwise).
    pub redirect_uri: String,
    /// Login authority, `https://login.microsoftonline.com` by default.
    pub authority: String,
    /// Object id of the admin group (AdminAzureApp only; empty otherwise).
    pub admin_group_id: String,
    /// Microsoft Graph base URL (AdminAzureApp only; empty otherwise).
    pub graph_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        // The model's defaults: DigestAlgorithms is MD5 only by default: baresip 1.0 (libre)
        // fails the whole registration with ENOSYS when any challenge names SHA-256, and SIPp
        // answers only the first one; operators whose phones speak RFC 8760 add "SHA-256".
        Settings::from_entry(&json!({}))
    }
}

impl Settings {
    /// The entry a fresh store starts with: every leaf of the model at its default, with this
    /// value's SIP settings.
    pub fn default_entry(&self) -> ConfigEntry {
        let mut e = model::defaults();
        for (p, v) in [
            ("DefaultSipDomain", json!(self.default_sip_domain)),
            (
                "TrustedIps",
                json!(
                    self.trusted_ips
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                ),
            ),
            ("AuthFailureLimit", json!(self.auth_failure_limit)),
            ("MinExpires", json!(self.min_expires)),
            ("MaxExpires", json!(self.max_expires)),
            ("NatExpires", json!(self.nat_expires)),
            ("CertificateThumbPrint", json!(self.certificate_thumbprint)),
            ("DigestAlgorithms", json!(self.digest_algorithms)),
        ] {
            set_leaf(&mut e, &format!("Data.SipConfig.{p}"), v);
        }
        e
    }

    /// Reads the settings from an entry; a missing or invalid leaf keeps its default (and is
    /// logged), and so does a pair that breaks a cross-field rule (MinRtpPort < MaxRtpPort,
    /// MinExpires <= MaxExpires).
    pub fn from_entry(entry: &ConfigEntry) -> Settings {
        let mut e = model::effective(entry);
        for err in model::cross_field(&e) {
            tracing::warn!("stored configuration: {}; using the defaults", err.message);
            for p in [err.lower, err.upper] {
                if let Some(l) = model::find(p) {
                    set_leaf(&mut e, p, l.default.value());
                }
            }
        }
        let e = &e;
        let s = |p: &str| {
            leaf(e, p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let int = |p: &str| leaf(e, p).and_then(Value::as_i64).unwrap_or_default();
        let u32_ = |p: &str| u32::try_from(int(p)).unwrap_or_default();
        let u16_ = |p: &str| u16::try_from(int(p)).unwrap_or_default();
        let bool_ = |p: &str| leaf(e, p).and_then(Value::as_bool).unwrap_or_default();
        let strs = |p: &str| -> Vec<String> {
            leaf(e, p)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let app = |g: &str| AzureApp {
            tenant: s(&format!("Data.{g}.Tenant")),
            client_id: s(&format!("Data.{g}.ClientId")),
            client_secret: Secret(s(&format!("Data.{g}.ClientSecret"))),
            redirect_uri: s(&format!("Data.{g}.RedirectUri")),
            authority: s(&format!("Data.{g}.Authority")),
            admin_group_id: s(&format!("Data.{g}.AdminGroupId")),
            graph_url: s(&format!("Data.{g}.GraphUrl")),
        };
        Settings {
            default_sip_domain: s("Data.SipConfig.DefaultSipDomain"),
            trusted_ips: strs("Data.SipConfig.TrustedIps")
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .collect(),
            auth_failure_limit: u32_("Data.SipConfig.AuthFailureLimit"),
            min_expires: u32_("Data.SipConfig.MinExpires"),
            max_expires: u32_("Data.SipConfig.MaxExpires"),
            nat_expires: u32_("Data.SipConfig.NatExpires"),
            certificate_thumbprint: s("Data.SipConfig.CertificateThumbPrint"),
            digest_algorithms: strs("Data.SipConfig.DigestAlgorithms")
                .into_iter()
                .filter(|a| csps_sip::digest::Algorithm::from_token(a).is_some())
                .collect(),
            srtp: match s("Data.SipConfig.Srtp").as_str() {
                "Supported" => SrtpMode::Supported,
                "Required" => SrtpMode::Required,
                _ => SrtpMode::Disabled,
            },
            srtp_over_plain: bool_("Data.SipConfig.SrtpOverPlainTransport"),
            use_8khz: bool_("Data.SipConfig.Use8KHz"),
            music_on_hold: s("Data.SipConfig.MusicOnHold"),
            emergency_numbers: strs("Data.SipConfig.EmergencyNumbers"),
            conference_user: crate::calls::conference::conference_user(&s(
                "Data.SipConfig.ConferenceUri",
            )),
            min_rtp_port: u16_("Data.System.MinRtpPort"),
            max_rtp_port: u16_("Data.System.MaxRtpPort"),
            swagger_remote: bool_("Data.System.SwaggerRemote"),
            call_record_days: u32_("Data.System.CallRecordDays"),
            trunk: TrunkSettings {
                fqdn: s("Data.SipConfig.SbcFqdn"),
                proxies: strs("Data.SipConfig.TeamsProxies"),
                ca_file: s("Data.SipConfig.TeamsCaFile"),
                options_interval: u32_("Data.SipConfig.TeamsOptionsInterval"),
            },
            sps_app: app("SpsAzureApp"),
            admin_app: app("AdminAzureApp"),
            token_refresh_hour: u32_("Data.SpsAzureApp.TokenRefreshHour"),
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
