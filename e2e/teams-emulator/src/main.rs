//! `teams-emulator`: stands in for Microsoft's cloud, which tests cannot reach. One module per
//! face of it, each shaped after the real service:
//! - [`token`]: Entra ID — OpenID discovery, JWKS, the client-credentials token endpoint;
//! - [`graph`]: Microsoft Graph — group membership (`checkMemberGroups`, `getMemberGroups`) and
//!   presence (`setPresence`, `clearPresence`, `GET …/presence`);
//! - [`sip`]: Direct Routing — three SIP proxies over TLS (with `--sip-fqdn`), and [`calls`]
//!   through them both ways (tone and echo).
//!
//! Every request to a face is recorded ([`record`]) for tests to assert on. Test facilities live
//! under `/test/` and are not part of any Microsoft API: `POST /test/mint` (sign a user token),
//! `GET|DELETE /test/requests` (the request log), `POST /test/graph/throttle` (429s from Graph),
//! `POST /test/graph/hold` and `/release` (a slow `clearPresence`), `GET /test/sip` and
//! `POST /test/sip/{n}/stop|start|options|call`, `GET /test/sip/calls`,
//! `POST /test/sip/calls/{call_id}/bye` (the SIP proxies and their calls). The emulator listens on loopback only.

#![forbid(unsafe_code)]

mod calls;
mod graph;
mod keys;
mod record;
mod sip;
mod srtp;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use clap::Parser;

use keys::SigningKey;

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "teams-emulator",
    about = "Entra ID and Graph (and later Teams Direct Routing) for tests, on loopback"
)]
struct Args {
    /// Address to listen on; must be loopback (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The tenant id served (other tenants get AADSTS90002).
    #[arg(long)]
    tenant: String,
    /// PKCS#8 PEM RSA key that signs tokens (published in the JWKS).
    #[arg(long)]
    signing_key: PathBuf,
    /// Key id of the signing key.
    #[arg(long, default_value = "emulator-key-1")]
    kid: String,
    /// A second PKCS#8 PEM RSA key for forged tokens (`POST /test/mint` with `"key":"rogue"`).
    #[arg(long)]
    rogue_key: Option<PathBuf>,
    /// An app allowed the client-credentials grant, `CLIENT_ID=SECRET` (repeatable).
    #[arg(long = "client")]
    clients: Vec<String>,
    /// Group memberships from a JSON file `{"<user object id>": ["<group id>", …]}`.
    #[arg(long)]
    groups: Option<PathBuf>,
    /// One group membership, `USER_OBJECT_ID=GROUP_ID` (repeatable; added to `--groups`).
    #[arg(long = "member")]
    members: Vec<String>,
    /// The gateway's FQDN: starts the SIP proxies, which refuse an OPTIONS or INVITE whose
    /// Contact does not hold it.
    #[arg(long)]
    sip_fqdn: Option<String>,
    /// Where the first SIP proxy listens (the others on the next ports); loopback only; port 0:
    /// any free ports (printed, and listed by `GET /test/sip`).
    #[arg(long, default_value = "127.0.0.1:0")]
    sip_listen: SocketAddr,
}

/// What every face shares.
pub struct Emulator {
    /// `http://<listen address>`: the authority and Graph base URL clients are configured with.
    pub base: String,
    /// The tenant id served.
    pub tenant: String,
    /// Signs tokens; its public key is in the JWKS.
    pub signing: SigningKey,
    /// Signs forged tokens (same `kid`, key not published).
    pub rogue: Option<SigningKey>,
    /// Client id → secret of apps allowed the client-credentials grant.
    pub clients: HashMap<String, String>,
    /// User object id (lower case) → group ids.
    pub members: HashMap<String, Vec<String>>,
    /// The request log.
    pub log: record::Log,
    /// The Direct Routing SIP proxies, when `--sip-fqdn` is given.
    pub sip: Option<sip::SipFace>,
    /// Users' presence sessions (Graph presence).
    pub presence: graph::PresenceBook,
}

/// Shared state of the handlers.
pub type Shared = Arc<Emulator>;

impl Emulator {
    /// `{base}/{tenant}/v2.0`, the issuer of every token.
    pub fn issuer(&self) -> String {
        format!("{}/{}/v2.0", self.base, self.tenant)
    }

    /// True for the served tenant (by id, case-insensitive).
    pub fn knows_tenant(&self, t: &str) -> bool {
        t.eq_ignore_ascii_case(&self.tenant)
    }
}

fn pair(s: &str, what: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("{what}: `{s}` is not of the form A=B"))
}

fn members(args: &Args) -> Result<HashMap<String, Vec<String>>, String> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if let Some(path) = &args.groups {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--groups {}: {e}", path.display()))?;
        let table: HashMap<String, Vec<String>> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "--groups {}: expected {{\"oid\": [\"group\", …]}}: {e}",
                path.display()
            )
        })?;
        for (oid, groups) in table {
            out.entry(oid.to_ascii_lowercase())
                .or_default()
                .extend(groups);
        }
    }
    for m in &args.members {
        let (oid, group) = pair(m, "--member")?;
        out.entry(oid.to_ascii_lowercase()).or_default().push(group);
    }
    Ok(out)
}

/// The routes of every face.
fn app(state: Shared) -> Router {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(token::discovery),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(token::jwks))
        .route("/{tenant}/oauth2/v2.0/token", post(token::token))
        .route("/{tenant}/oauth2/v2.0/authorize", get(token::authorize))
        .route("/v1.0/users/{id}", get(graph::get_user))
        .route("/test/users", post(token::add_user))
        .route("/test/signin-as", post(token::signin_as))
        .route("/test/revoke", post(token::revoke))
        .route("/test/token-lifetime", post(token::token_lifetime))
        .route("/test/tamper-id-token", post(token::tamper_id_token))
        .route(
            "/v1.0/users/{id}/checkMemberGroups",
            post(graph::check_member_groups),
        )
        .route(
            "/v1.0/users/{id}/getMemberGroups",
            post(graph::get_member_groups),
        )
        .route(
            "/v1.0/users/{id}/presence/setPresence",
            post(graph::set_presence),
        )
        .route(
            "/v1.0/users/{id}/presence/clearPresence",
            post(graph::clear_presence),
        )
        .route("/v1.0/users/{id}/presence", get(graph::get_presence))
        .route("/test/mint", post(token::mint))
        .route("/test/graph/throttle", post(graph::throttle))
        .route("/test/graph/hold", post(graph::hold))
        .route("/test/graph/release", post(graph::release))
        .route("/test/requests", get(record::list).delete(record::clear))
        .route("/test/sip", get(sip::status))
        .route("/test/sip/{n}/stop", post(sip::stop))
        .route("/test/sip/{n}/start", post(sip::start))
        .route("/test/sip/{n}/options", post(sip::ping))
        .route("/test/sip/{n}/call", post(calls::call))
        .route("/test/sip/calls", get(calls::list))
        .route("/test/sip/calls/{call_id}/bye", post(calls::hang_up))
        .route("/test/sip/calls/{call_id}/hold", post(calls::hold))
        .route("/test/sip/calls/{call_id}/resume", post(calls::resume))
        .route("/test/sip/calls/{call_id}/refer", post(calls::refer))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record::record,
        ))
        .with_state(state)
}

async fn run(args: Args) -> Result<(), String> {
    for (flag, a) in [("--listen", args.listen), ("--sip-listen", args.sip_listen)] {
        if !a.ip().is_loopback() {
            return Err(format!("{flag} {a}: loopback addresses only"));
        }
    }
    let signing = SigningKey::load(&args.signing_key, &args.kid)?;
    let rogue = match &args.rogue_key {
        Some(p) => Some(SigningKey::load(p, &args.kid)?),
        None => None,
    };
    let clients = args
        .clients
        .iter()
        .map(|c| pair(c, "--client"))
        .collect::<Result<HashMap<_, _>, _>>()?;
    let members = members(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listening address: {e}"))?;
    let (sip, sip_listeners) = match &args.sip_fqdn {
        Some(fqdn) => {
            let (face, l) = sip::SipFace::bind(fqdn.clone(), args.sip_listen).await?;
            (Some(face), l)
        }
        None => (None, Vec::new()),
    };
    let state = Arc::new(Emulator {
        base: format!("http://{addr}"),
        tenant: args.tenant.clone(),
        signing,
        rogue,
        clients,
        members,
        log: record::Log::default(),
        sip,
        presence: graph::PresenceBook::default(),
    });
    println!("teams-emulator listening on {addr}");
    if let Some(face) = &state.sip {
        for (i, a) in face.addrs().iter().enumerate() {
            println!("SIP proxy {} ({}) on tls:{a}", i + 1, sip::NAMES[i]);
        }
    }
    for (i, l) in sip_listeners.into_iter().enumerate() {
        sip::serve(&state, i, l);
    }
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("serving: {e}"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("teams-emulator: {e}");
        std::process::exit(1);
    }
}
