//! The typed leaf model of a configuration entry: every cSPS key under `Data.System`,
//! `Data.SpsAzureApp`, `Data.AdminAzureApp` and `Data.SipConfig`, with its JSON type, default,
//! validation (which also normalises, e.g. CIDRs) and whether it is a secret (never returned by
//! GET, masked in the audit log). Cross-field rules live in [`cross_field`].

use serde_json::{Map, Value, json};

use super::{leaf, parse_cidr, set_leaf};

/// What a string leaf must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Text {
    /// Any string without control characters.
    Any,
    /// A host name or IP address literal.
    Host,
    /// A host name or IP address literal, or empty.
    HostOrEmpty,
    /// An `https://` or `http://` URL, or empty.
    UrlOrEmpty,
    /// An `https://` or `http://` URL.
    Url,
    /// A GUID, or empty.
    GuidOrEmpty,
    /// A GUID or a DNS domain (tenant), or empty.
    TenantOrEmpty,
    /// 40 hex digits (SHA-1), `:`/space separators allowed, or empty.
    Sha1OrEmpty,
    /// Music on hold: empty, `builtin`, or an absolute path of a `.wav` file.
    MusicOrEmpty,
}

/// What the items of an array leaf must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// An IPv4/IPv6 address or CIDR range (normalised to `net/len`).
    Cidr,
    /// One of these strings (case-insensitive; normalised to the listed spelling), no duplicates,
    /// at least one.
    OneOf(&'static [&'static str]),
    /// A dial string: digits, `*`, `#`, optional leading `+`.
    DialString,
    /// A SIP proxy: `host:port` (a host name, an IPv4 address or a bracketed IPv6 address; port
    /// 1..=65535), an IP literal alone (port 5061), or a domain alone (located by RFC 3263).
    Proxy,
}

/// The type and rule of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A JSON integer in `min..=max`.
    Integer {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// `true` or `false`.
    Boolean,
    /// A string.
    String(Text),
    /// One of these strings (exact spelling; case-insensitive input is normalised).
    Enum(&'static [&'static str]),
    /// An array of strings.
    Array(Item),
}

impl Kind {
    /// The JSON type name (`integer`, `boolean`, `string`, `array`).
    pub fn json_type(&self) -> &'static str {
        match self {
            Kind::Integer { .. } => "integer",
            Kind::Boolean => "boolean",
            Kind::String(_) | Kind::Enum(_) => "string",
            Kind::Array(_) => "array",
        }
    }
}

/// A default value (const-friendly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(&'static str),
    /// An array of strings.
    Strs(&'static [&'static str]),
}

impl DefaultValue {
    /// As JSON.
    pub fn value(&self) -> Value {
        match *self {
            DefaultValue::Int(i) => json!(i),
            DefaultValue::Bool(b) => json!(b),
            DefaultValue::Str(s) => json!(s),
            DefaultValue::Strs(a) => json!(a),
        }
    }
}

/// One leaf of the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Leaf {
    /// Dotted path such as `Data.SipConfig.TrustedIps`.
    pub path: &'static str,
    /// Type and validation rule.
    pub kind: Kind,
    /// Value when the entry does not set it.
    pub default: DefaultValue,
    /// Never returned by GET; masked (`***`) in the audit log.
    pub secret: bool,
    /// What it means (README, `/api/config/paths`).
    pub meaning: &'static str,
}

impl Leaf {
    /// The JSON type name.
    pub fn json_type(&self) -> &'static str {
        self.kind.json_type()
    }

    /// Checks `v` and returns it normalised (CIDRs canonical, enum spelling, trimmed strings).
    pub fn check(&self, v: &Value) -> Result<Value, String> {
        check_kind(&self.kind, v)
    }

    /// The group (`System`, `SipConfig`, …) and key of the leaf.
    pub fn group_key(&self) -> (&'static str, &'static str) {
        let mut it = self.path.split('.').skip(1);
        (it.next().unwrap_or(""), it.next().unwrap_or(""))
    }

    /// A value as the API shows it: `null` for a secret.
    pub fn shown(&self, v: Value) -> Value {
        if self.secret { Value::Null } else { v }
    }

    /// A value as the audit log keeps it: a non-empty secret becomes `"***"`.
    pub fn masked(&self, v: Value) -> Value {
        match v {
            Value::String(s) if self.secret && !s.is_empty() => json!("***"),
            v if self.secret && !v.is_string() && !v.is_null() => json!("***"),
            v => v,
        }
    }
}

/// The four groups of an entry, in order.
pub const GROUPS: &[&str] = &["System", "SpsAzureApp", "AdminAzureApp", "SipConfig"];

/// `Srtp` modes.
pub const SRTP_MODES: &[&str] = &["Disabled", "Supported", "Required"];
/// Digest algorithms a challenge may name.
pub const DIGEST_ALGORITHMS: &[&str] = &["MD5", "SHA-256"];

const PORT: Kind = Kind::Integer {
    min: 1024,
    max: 65535,
};

/// Every leaf this version knows.
pub const LEAVES: &[Leaf] = &[
    Leaf {
        path: "Data.System.MinRtpPort",
        kind: PORT,
        default: DefaultValue::Int(20000),
        secret: false,
        meaning: "lowest UDP port for RTP/SRTP media; must be below MaxRtpPort",
    },
    Leaf {
        path: "Data.System.MaxRtpPort",
        kind: PORT,
        default: DefaultValue::Int(30000),
        secret: false,
        meaning: "highest UDP port for RTP/SRTP media",
    },
    Leaf {
        path: "Data.System.SwaggerRemote",
        kind: Kind::Boolean,
        default: DefaultValue::Bool(false),
        secret: false,
        meaning: "serve the Swagger UI to remote clients too (otherwise localhost only)",
    },
    Leaf {
        path: "Data.System.CallRecordDays",
        kind: Kind::Integer { min: 1, max: 3650 },
        default: DefaultValue::Int(30),
        secret: false,
        meaning: "days call records (and their SIP messages) are kept",
    },
    Leaf {
        path: "Data.SpsAzureApp.Tenant",
        kind: Kind::String(Text::TenantOrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "Entra ID tenant (GUID or domain) of the app end users sign in with",
    },
    Leaf {
        path: "Data.SpsAzureApp.ClientId",
        kind: Kind::String(Text::GuidOrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "application (client) id of the end-user app",
    },
    Leaf {
        path: "Data.SpsAzureApp.ClientSecret",
        kind: Kind::String(Text::Any),
        default: DefaultValue::Str(""),
        secret: true,
        meaning: "client secret of the end-user app (never returned; `null` in a PUT keeps it)",
    },
    Leaf {
        path: "Data.SpsAzureApp.RedirectUri",
        kind: Kind::String(Text::UrlOrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "OAuth redirect URI registered for the end-user app",
    },
    Leaf {
        path: "Data.SpsAzureApp.Authority",
        kind: Kind::String(Text::Url),
        default: DefaultValue::Str("https://login.microsoftonline.com"),
        secret: false,
        meaning: "Entra ID authority (login endpoint) of the end-user app",
    },
    Leaf {
        path: "Data.SpsAzureApp.TokenRefreshHour",
        kind: Kind::Integer { min: 0, max: 23 },
        default: DefaultValue::Int(3),
        secret: false,
        meaning: "hour (UTC, 0-23) at which users' refresh tokens are refreshed every night, plus up to 30 minutes of jitter",
    },
    Leaf {
        path: "Data.AdminAzureApp.Tenant",
        kind: Kind::String(Text::TenantOrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "Entra ID tenant (GUID or domain) of the admin app",
    },
    Leaf {
        path: "Data.AdminAzureApp.ClientId",
        kind: Kind::String(Text::GuidOrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "application (client) id of the admin app (the token audience)",
    },
    Leaf {
        path: "Data.AdminAzureApp.ClientSecret",
        kind: Kind::String(Text::Any),
        default: DefaultValue::Str(""),
        secret: true,
        meaning: "client secret of the admin app, for Graph group lookups (never returned)",
    },
    Leaf {
        path: "Data.AdminAzureApp.AdminGroupId",
        kind: Kind::String(Text::GuidOrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "object id of the Entra ID group whose members are admins",
    },
    Leaf {
        path: "Data.AdminAzureApp.Authority",
        kind: Kind::String(Text::Url),
        default: DefaultValue::Str("https://login.microsoftonline.com"),
        secret: false,
        meaning: "Entra ID authority (login endpoint) of the admin app",
    },
    Leaf {
        path: "Data.AdminAzureApp.GraphUrl",
        kind: Kind::String(Text::Url),
        default: DefaultValue::Str("https://graph.microsoft.com"),
        secret: false,
        meaning: "Microsoft Graph base URL, asked for group membership when an admin's token has the groups overage",
    },
    Leaf {
        path: "Data.SipConfig.DefaultSipDomain",
        kind: Kind::String(Text::Host),
        default: DefaultValue::Str("csps.local"),
        secret: false,
        meaning: "domain (and digest realm) of accounts created without one",
    },
    Leaf {
        path: "Data.SipConfig.Use8KHz",
        kind: Kind::Boolean,
        default: DefaultValue::Bool(false),
        secret: false,
        meaning: "offer narrowband (8 kHz) codecs only to phones",
    },
    Leaf {
        path: "Data.SipConfig.CertificateThumbPrint",
        kind: Kind::String(Text::Sha1OrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "SHA-1 thumbprint (40 hex digits) of the TLS certificate in `<data-dir>/certs/*.pem`; empty: a self-signed one",
    },
    Leaf {
        path: "Data.SipConfig.Srtp",
        kind: Kind::Enum(SRTP_MODES),
        default: DefaultValue::Str("Disabled"),
        secret: false,
        meaning: "SRTP towards phones: `Disabled`, `Supported` (offered, RTP accepted), `Required`",
    },
    Leaf {
        path: "Data.SipConfig.SrtpOverPlainTransport",
        kind: Kind::Boolean,
        default: DefaultValue::Bool(false),
        secret: false,
        meaning: "send SRTP keys (SDES) to phones signalling over UDP/TCP too; off: only over TLS",
    },
    Leaf {
        path: "Data.SipConfig.MusicOnHold",
        kind: Kind::String(Text::MusicOrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "what a held party hears: empty: nothing (the phones' own hold handling); `builtin`: the gateway's melody; or the absolute path of a WAV file on the server (any rate and channels, looped)",
    },
    Leaf {
        path: "Data.SipConfig.TrustedIps",
        kind: Kind::Array(Item::Cidr),
        default: DefaultValue::Strs(&[]),
        secret: false,
        meaning: "REGISTERs from these IPv4/IPv6 ranges are not challenged (the account must exist)",
    },
    Leaf {
        path: "Data.SipConfig.AuthFailureLimit",
        kind: Kind::Integer { min: 1, max: 1000 },
        default: DefaultValue::Int(5),
        secret: false,
        meaning: "failed digest answers per account and source address (within 60 s) before that pair gets 403 for 300 s",
    },
    Leaf {
        path: "Data.SipConfig.MinExpires",
        kind: Kind::Integer { min: 1, max: 86400 },
        default: DefaultValue::Int(60),
        secret: false,
        meaning: "shorter registrations get 423 with Min-Expires; at most MaxExpires",
    },
    Leaf {
        path: "Data.SipConfig.MaxExpires",
        kind: Kind::Integer { min: 1, max: 86400 },
        default: DefaultValue::Int(3600),
        secret: false,
        meaning: "longer registrations are granted this",
    },
    Leaf {
        path: "Data.SipConfig.NatExpires",
        kind: Kind::Integer { min: 10, max: 3600 },
        default: DefaultValue::Int(120),
        secret: false,
        meaning: "registration interval granted to phones behind NAT over UDP",
    },
    Leaf {
        path: "Data.SipConfig.DigestAlgorithms",
        kind: Kind::Array(Item::OneOf(DIGEST_ALGORITHMS)),
        default: DefaultValue::Strs(&["MD5"]),
        secret: false,
        meaning: "digest challenges offered, most preferred first (`MD5`, `SHA-256`); not empty",
    },
    Leaf {
        path: "Data.SipConfig.SbcFqdn",
        kind: Kind::String(Text::HostOrEmpty),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "the gateway's FQDN on the Teams Direct Routing trunk (in Via and Contact of every trunk request; the TLS certificate's SAN must hold it); empty: no trunk",
    },
    Leaf {
        path: "Data.SipConfig.TeamsProxies",
        kind: Kind::Array(Item::Proxy),
        default: DefaultValue::Strs(&[
            "sip.pstnhub.microsoft.com:5061",
            "sip2.pstnhub.microsoft.com:5061",
            "sip3.pstnhub.microsoft.com:5061",
        ]),
        secret: false,
        meaning: "Direct Routing SIP proxies over TLS in failover order: `host:port` (or an IP address, port 5061), or a domain without a port whose proxies DNS names (RFC 3263: NAPTR `SIPS+D2T`, SRV `_sips._tcp`, else the domain on 5061; each SRV target one proxy, in priority and weight order); new calls go to the first one answering OPTIONS",
    },
    Leaf {
        path: "Data.SipConfig.TeamsCaFile",
        kind: Kind::String(Text::Any),
        default: DefaultValue::Str(""),
        secret: false,
        meaning: "PEM file of the CAs trusted for the Direct Routing proxies' certificates; empty: the public web PKI roots (Mozilla's), as Microsoft's certificates chain to",
    },
    Leaf {
        path: "Data.SipConfig.TeamsOptionsInterval",
        kind: Kind::Integer { min: 1, max: 3600 },
        default: DefaultValue::Int(60),
        secret: false,
        meaning: "seconds between OPTIONS keep-alives to each Direct Routing proxy (an unreachable one is retried as often)",
    },
    Leaf {
        path: "Data.SipConfig.EmergencyNumbers",
        kind: Kind::Array(Item::DialString),
        default: DefaultValue::Strs(&["112", "911", "999"]),
        secret: false,
        meaning: "numbers always routed as emergency calls",
    },
    Leaf {
        path: "Data.SipConfig.ConferenceUri",
        kind: Kind::String(Text::Any),
        default: DefaultValue::Str("conference"),
        secret: false,
        meaning: "the conference focus phones call (a user part, or a SIP URI whose user part counts): that user joins the room of its name, `<user>-<room>` the room `<room>`; empty: no conferences",
    },
];

/// The leaf at `path` (exact spelling).
pub fn find(path: &str) -> Option<&'static Leaf> {
    LEAVES.iter().find(|l| l.path == path)
}

/// Pairs `(lower, upper, strict)`: `lower < upper` (strict) or `lower <= upper`.
pub const ORDERED: &[(&str, &str, bool)] = &[
    ("Data.System.MinRtpPort", "Data.System.MaxRtpPort", true),
    (
        "Data.SipConfig.MinExpires",
        "Data.SipConfig.MaxExpires",
        false,
    ),
];

/// One violated cross-field rule: the two paths and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossFieldError {
    /// The lower bound's path.
    pub lower: &'static str,
    /// The upper bound's path.
    pub upper: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Checks the cross-field rules on an entry with effective values (see [`effective`]).
pub fn cross_field(entry: &Value) -> Vec<CrossFieldError> {
    let mut out = Vec::new();
    for &(lower, upper, strict) in ORDERED {
        let (Some(lo), Some(hi)) = (
            leaf(entry, lower).and_then(Value::as_i64),
            leaf(entry, upper).and_then(Value::as_i64),
        ) else {
            continue;
        };
        let ok = if strict { lo < hi } else { lo <= hi };
        if !ok {
            let (lk, uk) = (last(lower), last(upper));
            let rel = if strict { "less than" } else { "at most" };
            out.push(CrossFieldError {
                lower,
                upper,
                message: format!("{lk} ({lo}) must be {rel} {uk} ({hi})"),
            });
        }
    }
    out
}

fn last(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// The value of `l` in `entry`: the stored one when valid, else the default (logged).
pub fn value_of(entry: &Value, l: &Leaf) -> Value {
    match leaf(entry, l.path) {
        None | Some(Value::Null) => l.default.value(),
        Some(v) => match l.check(v) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(
                    leaf = l.path,
                    "stored value is invalid, using the default: {e}"
                );
                l.default.value()
            }
        },
    }
}

/// An entry with every leaf of the model at its effective value (stored or default); keys the
/// model does not know are left out. Secrets are included in clear: for internal use only.
pub fn effective(entry: &Value) -> Value {
    let mut out = json!({"Data": {}});
    for g in GROUPS {
        set_leaf(&mut out, &format!("Data.{g}"), Value::Object(Map::new()));
    }
    for l in LEAVES {
        set_leaf(&mut out, l.path, value_of(entry, l));
    }
    out
}

/// The entry as GET shows it: [`effective`] with secrets `null`.
pub fn shown(entry: &Value) -> Value {
    let mut out = effective(entry);
    for l in LEAVES.iter().filter(|l| l.secret) {
        set_leaf(&mut out, l.path, Value::Null);
    }
    out
}

/// The entry of a fresh store: every leaf at its default.
pub fn defaults() -> Value {
    effective(&json!({}))
}

fn check_kind(kind: &Kind, v: &Value) -> Result<Value, String> {
    match *kind {
        Kind::Integer { min, max } => match v.as_i64() {
            Some(i) if (min..=max).contains(&i) => Ok(json!(i)),
            Some(i) => Err(format!("{i} is out of range {min}..={max}")),
            None => Err(format!("must be an integer in {min}..={max}")),
        },
        Kind::Boolean => v
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| "must be `true` or `false`".to_owned()),
        Kind::String(t) => {
            let Some(s) = v.as_str() else {
                return Err("must be a string".into());
            };
            check_text(t, s).map(Value::String)
        }
        Kind::Enum(names) => {
            let found = v
                .as_str()
                .and_then(|s| names.iter().find(|n| n.eq_ignore_ascii_case(s.trim())));
            found
                .map(|n| json!(n))
                .ok_or_else(|| format!("must be one of {}", names.join(", ")))
        }
        Kind::Array(item) => {
            let Some(items) = v.as_array() else {
                return Err("must be an array of strings".into());
            };
            let mut out: Vec<String> = Vec::with_capacity(items.len());
            for (i, it) in items.iter().enumerate() {
                let Some(s) = it.as_str() else {
                    return Err(format!("item {i} must be a string"));
                };
                let n = check_item(item, s).map_err(|e| format!("item {i}: {e}"))?;
                if !out.contains(&n) {
                    out.push(n);
                } else if matches!(item, Item::OneOf(_)) {
                    return Err(format!("item {i}: `{n}` is listed twice"));
                }
            }
            if matches!(item, Item::OneOf(_)) && out.is_empty() {
                return Err("must name at least one".into());
            }
            Ok(json!(out))
        }
    }
}

fn check_item(item: Item, s: &str) -> Result<String, String> {
    match item {
        Item::Cidr => parse_cidr(s).map(|n| n.to_string()),
        Item::OneOf(names) => names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(s.trim()))
            .map(|n| (*n).to_owned())
            .ok_or_else(|| format!("must be one of {}", names.join(", "))),
        Item::Proxy => {
            let s = s.trim();
            let bad = || format!("`{s}` is not `host:port`, an IP address or a domain");
            let host = match s.rsplit_once(':') {
                // An IPv6 literal must be bracketed: `[::1]` or `[::1]:5061`.
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                    if !p.parse::<u16>().is_ok_and(|p| p > 0) {
                        return Err(bad());
                    }
                    h
                }
                Some(_) if s.starts_with('[') && s.ends_with(']') => s,
                Some(_) => return Err(bad()),
                None => s,
            };
            match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => {}
                Some(_) => return Err(bad()),
                None if host.parse::<std::net::Ipv4Addr>().is_ok() => {}
                None => crate::api::users::check_domain(host).map_err(|_| bad())?,
            }
            Ok(s.to_ascii_lowercase())
        }
        Item::DialString => {
            let s = s.trim();
            let digits = s.strip_prefix('+').unwrap_or(s);
            if !digits.is_empty()
                && digits.len() <= 32
                && digits
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
            {
                Ok(s.to_owned())
            } else {
                Err(format!(
                    "`{s}` is not a dial string (digits, `*`, `#`, optional leading `+`)"
                ))
            }
        }
    }
}

fn check_text(t: Text, s: &str) -> Result<String, String> {
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if s.len() > 4096 {
        return Err("must be at most 4096 bytes".into());
    }
    let s = if t == Text::Any { s } else { s.trim() };
    match t {
        Text::Any => Ok(s.to_owned()),
        Text::HostOrEmpty if s.is_empty() => Ok(String::new()),
        Text::Host | Text::HostOrEmpty => {
            crate::api::users::check_domain(s).map(|()| s.to_ascii_lowercase())
        }
        Text::UrlOrEmpty if s.is_empty() => Ok(String::new()),
        Text::Url | Text::UrlOrEmpty => check_url(s).map(|()| s.to_owned()),
        Text::GuidOrEmpty if s.is_empty() => Ok(String::new()),
        Text::GuidOrEmpty => uuid::Uuid::parse_str(s)
            .map(|u| u.hyphenated().to_string())
            .map_err(|_| format!("`{s}` is not a GUID")),
        Text::TenantOrEmpty if s.is_empty() => Ok(String::new()),
        Text::TenantOrEmpty => {
            if let Ok(u) = uuid::Uuid::parse_str(s) {
                return Ok(u.hyphenated().to_string());
            }
            let dns = s.contains('.') && s.parse::<std::net::IpAddr>().is_err();
            match crate::api::users::check_domain(s) {
                Ok(()) if dns => Ok(s.to_ascii_lowercase()),
                _ => Err(format!(
                    "`{s}` is not a tenant id (a GUID or a domain such as contoso.onmicrosoft.com)"
                )),
            }
        }
        Text::MusicOrEmpty => {
            let wav = s
                .get(s.len().saturating_sub(4)..)
                .is_some_and(|e| e.eq_ignore_ascii_case(".wav"));
            let file = std::path::Path::new(s).is_absolute() && wav;
            if s.is_empty() || s == crate::media::moh::BUILTIN || file {
                Ok(s.to_owned())
            } else {
                Err(format!(
                    "`{s}` is not `builtin` or the absolute path of a .wav file"
                ))
            }
        }
        Text::Sha1OrEmpty => {
            let hex: String = s.chars().filter(|c| *c != ':' && *c != ' ').collect();
            if hex.is_empty() {
                Ok(String::new())
            } else if hex.len() == 40 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(hex.to_ascii_uppercase())
            } else {
                Err("must be a SHA-1 thumbprint (40 hex digits) or empty".into())
            }
        }
    }
}

/// An absolute `http(s)://host[:port][/path]` URL without credentials or spaces.
fn check_url(s: &str) -> Result<(), String> {
    let bad = || format!("`{s}` is not an http(s) URL");
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(bad)?;
    if s.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, tail)) if tail.is_empty() || port_ok(tail) => {
                return h
                    .parse::<std::net::Ipv6Addr>()
                    .map(|_| ())
                    .map_err(|_| bad());
            }
            _ => return Err(bad()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if port_ok(&format!(":{p}")) => h,
            Some(_) => return Err(bad()),
            None => authority,
        }
    };
    crate::api::users::check_domain(host).map_err(|_| bad())
}

fn port_ok(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_valid() {
        for l in LEAVES {
            assert_eq!(
                l.check(&l.default.value()),
                Ok(l.default.value()),
                "{}",
                l.path
            );
            assert!(GROUPS.contains(&l.group_key().0), "{}", l.path);
        }
        assert!(cross_field(&defaults()).is_empty());
    }

    #[test]
    fn rules() {
        let get = |p: &str| find(p).expect(p);
        let port = get("Data.System.MinRtpPort");
        assert!(port.check(&json!(1023)).is_err());
        assert!(port.check(&json!("2000")).is_err());
        assert_eq!(port.check(&json!(65535)), Ok(json!(65535)));
        let srtp = get("Data.SipConfig.Srtp");
        assert_eq!(srtp.check(&json!("required")), Ok(json!("Required")));
        assert!(srtp.check(&json!("Maybe")).is_err());
        let ips = get("Data.SipConfig.TrustedIps");
        assert_eq!(
            ips.check(&json!(["10.1.2.3/8", "192.0.2.7"])),
            Ok(json!(["10.0.0.0/8", "192.0.2.7/32"]))
        );
        assert!(ips.check(&json!(["nope"])).is_err());
        let algs = get("Data.SipConfig.DigestAlgorithms");
        assert!(algs.check(&json!([])).is_err());
        assert!(algs.check(&json!(["MD5", "md5"])).is_err());
        assert_eq!(algs.check(&json!(["sha-256"])), Ok(json!(["SHA-256"])));
        let tp = get("Data.SipConfig.CertificateThumbPrint");
        assert!(tp.check(&json!("abc")).is_err());
        assert_eq!(
            tp.check(&json!(
                "aa bb cc dd ee ff 00 11 22 33 44 55 66 77 88 99 aa bb cc dd"
            )),
            Ok(json!("AABBCCDDEEFF00112233445566778899AABBCCDD"))
        );
        let url = get("Data.SpsAzureApp.RedirectUri");
        assert!(url.check(&json!("https://csps.example.com/auth")).is_ok());
        assert!(url.check(&json!("https://csps.example.com:8443/x")).is_ok());
        for bad in ["ftp://x", "https://", "https://a b", "https://u@x.com", "x"] {
            assert!(url.check(&json!(bad)).is_err(), "{bad}");
        }
        let tenant = get("Data.AdminAzureApp.Tenant");
        assert!(tenant.check(&json!("contoso.onmicrosoft.com")).is_ok());
        assert!(tenant.check(&json!("nodots")).is_err());
        let proxies = get("Data.SipConfig.TeamsProxies");
        assert_eq!(
            proxies.check(&json!([
                "SIP.example.com:5061",
                "127.0.0.1:1",
                "[::1]:5061",
                "PSTNhub.microsoft.com",
                "127.0.0.1",
                "[::1]"
            ])),
            Ok(json!([
                "sip.example.com:5061",
                "127.0.0.1:1",
                "[::1]:5061",
                "pstnhub.microsoft.com",
                "127.0.0.1",
                "[::1]"
            ]))
        );
        for bad in [
            "::1", "[::1]x", "x:0", "x:70000", "::1:5061", "[x]:1", "a b:1",
        ] {
            assert!(proxies.check(&json!([bad])).is_err(), "{bad}");
        }
        let fqdn = get("Data.SipConfig.SbcFqdn");
        assert_eq!(fqdn.check(&json!("")), Ok(json!("")));
        assert_eq!(
            fqdn.check(&json!("SBC1.csps.test")),
            Ok(json!("sbc1.csps.test"))
        );
        assert!(fqdn.check(&json!("bad host")).is_err());
        let em = get("Data.SipConfig.EmergencyNumbers");
        assert!(em.check(&json!(["112", "+4930*1#"])).is_ok());
        assert!(em.check(&json!(["11a"])).is_err());
    }

    #[test]
    fn cross_field_rules() {
        let mut e = defaults();
        set_leaf(&mut e, "Data.System.MinRtpPort", json!(30000));
        let errs = cross_field(&e);
        assert_eq!(errs.len(), 1);
        set_leaf(&mut e, "Data.System.MinRtpPort", json!(20000));
        set_leaf(&mut e, "Data.SipConfig.MinExpires", json!(3600));
        assert!(cross_field(&e).is_empty());
    }

    #[test]
    fn secrets_are_hidden_and_masked() {
        let mut e = defaults();
        set_leaf(&mut e, "Data.SpsAzureApp.ClientSecret", json!("s3cret"));
        assert_eq!(
            leaf(&shown(&e), "Data.SpsAzureApp.ClientSecret"),
            Some(&Value::Null)
        );
        let l = find("Data.SpsAzureApp.ClientSecret").expect("leaf");
        assert_eq!(l.masked(json!("s3cret")), json!("***"));
        assert_eq!(l.masked(json!("")), json!(""));
    }
}
