//! The OpenAPI 3.1 document of the REST API (`GET /api/openapi.json`) and the Swagger UI
//! (`/swagger`). The operations come from the `#[utoipa::path]` annotations on the handlers; the
//! configuration entry's schema is built from the leaf model (`config::model::LEAVES`), so it
//! lists every leaf with its type, range, enum and default. The document and the UI are served to
//! local clients (the loopback, Host and proxy-header rules of [`super::access`]) and to clients
//! the API guard admits; `Data.System.SwaggerRemote` opens them to everyone.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Header, Ref, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::ApiState;
use super::access::{self, Rule};
use super::problem::{PROBLEM_JSON, Problem};
use crate::config::model::{GROUPS, Item, Kind, LEAVES, Leaf, Text};

/// Where the document is served.
pub const DOC_PATH: &str = "/api/openapi.json";
/// Where the Swagger UI is served.
pub const SWAGGER_PATH: &str = "/swagger";
/// Name of the bearer security scheme.
pub const BEARER: &str = "bearer";

/// The document's skeleton: operations, components, tags; [`Finish`] adds the rest.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "csps REST API",
        description = "Administration of the csps SIP gateway: users (SIP accounts), \
            registrations, configuration (global entry `*` and one entry per server), trusted \
            IPs, the audit log. JSON with snake_case fields (configuration keys keep their cSPS \
            spelling), RFC 3339 times, lists as bare arrays; every error is \
            `application/problem+json`, validation errors are 422 with `errors:[{path,message}]`. \
            Authentication: a bearer token of the admin Azure app (`Data.AdminAzureApp`; a \
            member of the admin group is an admin, others get 403) or the break-glass \
            `<data-dir>/admin-token` from localhost; without a token only the configuration \
            APIs answer, and only local requests. `GET /api/debug/claims` shows any signed-in \
            caller their own claims. `/api/me/…` is the end user's self-service: it takes only a \
            token of the end-user app (`Data.SpsAzureApp`) and shows and changes only the SIP \
            accounts whose `upn` is the token's."
    ),
    paths(
        super::version::get,
        super::console::auth_config,
        super::events::stream,
        openapi_json,
        crate::serve::healthz,
        crate::serve::metrics_page,
        super::users::list,
        super::users::create,
        super::users::get,
        super::users::patch,
        super::users::delete,
        super::registrations::list,
        super::config::servers,
        super::config::paths,
        super::config::get_entry,
        super::config::put_entry,
        super::config::get_leaf,
        super::config::put_leaf,
        super::trusted_ips::list,
        super::trusted_ips::add,
        super::trusted_ips::remove,
        super::config::audit_list,
        super::calls::list,
        super::calls::hang_up,
        super::calls::messages,
        super::calls::history,
        super::trunk::get,
        super::debug::claims,
        super::policies::list,
        super::policies::get,
        super::policies::put,
        super::policies::delete,
        super::policies::disable,
        super::me::get,
        super::me::deactivate,
        super::activate::refresh_now,
        super::webphone::start,
        super::webphone::get,
        super::webphone::events,
        super::webphone::call,
        super::webphone::answer,
        super::webphone::hang_up,
        super::webphone::hold,
        super::webphone::resume,
        super::webphone::stop,
    ),
    components(
        schemas(Problem, super::FieldError),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            MethodNotAllowed,
            Conflict,
            UnsupportedMediaType,
            Unprocessable,
            Unavailable,
            PayloadTooLarge,
            NotWasm
        )
    ),
    modifiers(&Finish),
    tags(
        (name = "system", description = "Version, health, metrics, this document"),
        (name = "users", description = "SIP accounts; passwords become digest HA1s and are never returned"),
        (name = "registrations", description = "Live bindings of every server"),
        (name = "calls", description = "Running and recent calls of this server, their SIP messages"),
        (name = "calls", description = "Running calls of this server"),
        (name = "trunk", description = "The Teams Direct Routing trunk of this server"),
        (name = "config", description = "Configuration entries and leaves (cSPS keys), trusted IPs, audit log"),
        (name = "me", description = "The signed-in end user's own SIP accounts, devices and Teams activation (end-user app tokens only)"),
        (name = "policies", description = "WASM policy modules (routing, admission, device quirks): upload, inspect, switch off, back to the built-in rule"),
    )
)]
pub struct ApiDoc;

/// Declares a reusable `application/problem+json` response component.
macro_rules! problem_response {
    ($($name:ident = $desc:literal;)*) => {$(
        #[doc = concat!("Response component: ", $desc)]
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                (stringify!($name), problem(stringify!($name), $desc).into())
            }
        }
    )*};
}

problem_response! {
    BadRequest = "The request cannot be read (query string, path).";
    Unauthorized = "No or invalid credentials (`WWW-Authenticate: Bearer`).";
    Forbidden = "Signed in, but not allowed.";
    NotFound = "No such resource.";
    MethodNotAllowed = "The path names another resource that does not support the method.";
    Conflict = "The change conflicts with existing data.";
    UnsupportedMediaType = "The body is not `application/json` (or `application/*+json`).";
    Unprocessable = "The request is not valid; `errors` lists each field with what is wrong.";
    Unavailable = "The store failed; the request may be retried.";
    PayloadTooLarge = "The body is larger than the endpoint accepts.";
    NotWasm = "The body is not sent as `application/wasm` (or `application/octet-stream`).";
}

/// A problem+json response; a 401 also carries its `WWW-Authenticate` header.
fn problem(name: &str, description: &str) -> utoipa::openapi::Response {
    let mut r = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        Content::new(Some(Ref::from_schema_name("Problem"))),
    );
    if name == "Unauthorized" {
        r = r.header(
            "WWW-Authenticate",
            Header::new(ObjectBuilder::new().schema_type(Type::String)),
        );
    }
    r.build()
}

/// Adds what the derive cannot: the bearer scheme and who needs it, the errors every protected
/// operation can answer, and the configuration schemas built from the leaf model.
struct Finish;

/// Operations open to everyone (no credentials); outside the guard of [`access`].
const OPEN: &[&str] = &["/api/version", "/api/auth/config", "/healthz", "/metrics"];

impl Modify for Finish {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token of the admin Azure app (JWT), or the break-glass token \
                         of `<data-dir>/admin-token` (from localhost); on `/api/me/…` an access \
                         token of the end-user app (`Data.SpsAzureApp`)",
                    ))
                    .build(),
            ),
        );
        let bearer = SecurityRequirement::new(BEARER, Vec::<String>::new());
        for (path, item) in doc.paths.paths.iter_mut() {
            let open = OPEN.contains(&path.as_str());
            // The rules of the guard; the document itself is also served to local clients.
            let rule = access::rule(path);
            let local_ok = rule == Rule::AdminOrLocal || path == DOC_PATH;
            for op in operations(item) {
                leaf_enum(op);
                if open {
                    op.security = Some(vec![SecurityRequirement::default()]);
                    continue;
                }
                // `{}`: the configuration APIs answer unauthenticated local requests too.
                op.security = Some(if local_ok {
                    vec![bearer.clone(), SecurityRequirement::default()]
                } else {
                    vec![bearer.clone()]
                });
                for (status, name) in [
                    ("400", "BadRequest"),
                    ("401", "Unauthorized"),
                    ("403", "Forbidden"),
                    ("503", "Unavailable"),
                ] {
                    // Any signed-in caller passes a `SignedIn` route, and an end user's valid
                    // token an `EndUser` one: no 403 there.
                    if status == "403" && matches!(rule, Rule::SignedIn | Rule::EndUser) {
                        continue;
                    }
                    op.responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| Ref::from_response_name(name).into());
                }
            }
        }
    }
}

/// Narrows a `{leaf}` path parameter to the model's leaf paths.
fn leaf_enum(op: &mut Operation) {
    for p in op.parameters.iter_mut().flatten() {
        if p.name == "leaf" {
            p.schema = Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(LEAVES.iter().map(|l| l.path)))
                    .into(),
            );
        }
    }
}

/// The operations of one path item.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
        item.head.as_mut(),
        item.options.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The schema of one leaf's value; a secret is also `null` (GET never shows it, PUT keeps it).
pub fn leaf_schema(l: &Leaf) -> Schema {
    let nullable = |t: Type| {
        if l.secret {
            SchemaType::from_iter([t, Type::Null])
        } else {
            SchemaType::new(t)
        }
    };
    let base = || {
        ObjectBuilder::new()
            .description(Some(l.meaning))
            .default(Some(l.default.value()))
    };
    match l.kind {
        Kind::Integer { min, max } => base()
            .schema_type(nullable(Type::Integer))
            .minimum(Some(min))
            .maximum(Some(max))
            .into(),
        Kind::Boolean => base().schema_type(nullable(Type::Boolean)).into(),
        Kind::String(text) => {
            let b = base().schema_type(nullable(Type::String));
            let b = match text {
                Text::Url => b.examples([json!("https://login.microsoftonline.com")]),
                Text::Sha1OrEmpty => {
                    b.examples([json!("0123456789abcdef0123456789abcdef01234567")])
                }
                Text::GuidOrEmpty => b.examples([json!("00000000-0000-0000-0000-000000000000")]),
                _ => b,
            };
            b.into()
        }
        Kind::Enum(values) => base()
            .schema_type(nullable(Type::String))
            .enum_values(Some(values.iter().copied()))
            .into(),
        Kind::Array(item) => {
            let items = match item {
                Item::Cidr => ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("IPv4/IPv6 address or CIDR range"))
                    .examples([json!("10.0.0.0/8")]),
                Item::OneOf(values) => ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(values.iter().copied())),
                Item::DialString => ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("digits, `*`, `#`, an optional leading `+`"))
                    .examples([json!("112")]),
                Item::Proxy => ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some(
                        "`host:port`, an IP address, or a domain located by DNS",
                    ))
                    .examples([json!("sip.pstnhub.microsoft.com:5061")]),
            };
            let a = ArrayBuilder::new()
                .description(Some(l.meaning))
                .default(Some(l.default.value()))
                .items(items);
            let a = if matches!(item, Item::OneOf(_)) {
                a.min_items(Some(1)).unique_items(true)
            } else {
                a
            };
            a.into()
        }
    }
}

/// `{"Data":{group:{key:value}}}`: every leaf optional (absent = default), unknown keys refused.
fn entry_schema() -> Schema {
    let mut data = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    for group in GROUPS {
        let mut g = ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        for l in LEAVES.iter().filter(|l| l.group_key().0 == *group) {
            g = g.property(l.group_key().1, leaf_schema(l));
        }
        data = data.property(*group, g);
    }
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "A configuration entry. GET fills in defaults and shows secrets as `null`; PUT \
             validates the whole entry, sets absent leaves to their default and keeps a secret \
             that is absent or `null`. Cross-field rules: MinRtpPort < MaxRtpPort, \
             MinExpires ≤ MaxExpires.",
        ))
        .property("Data", data)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .examples([crate::config::model::shown(
            &crate::config::model::defaults(),
        )])
        .into()
}

/// Any leaf's value: the leaf path says which type (`GET /api/config/paths`).
fn leaf_value_schema() -> Schema {
    let mut one = OneOfBuilder::new().description(Some(
        "The bare JSON value of one leaf (`\"sip.example.com\"`, `true`, `[\"10.0.0.0/8\"]`); \
         its type is the leaf's (`GET /api/config/paths`); a secret reads as `null`.",
    ));
    for t in [Type::Integer, Type::Boolean, Type::String, Type::Null] {
        one = one.item(ObjectBuilder::new().schema_type(t));
    }
    one = one.item(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)));
    one.into()
}

/// Schema component `ConfigEntry`: a whole configuration entry, from the leaf model.
pub struct ConfigEntry;

impl utoipa::PartialSchema for ConfigEntry {
    fn schema() -> RefOr<Schema> {
        entry_schema().into()
    }
}

impl utoipa::ToSchema for ConfigEntry {}

/// Schema component `LeafValue`: the bare value of one leaf.
pub struct LeafValue;

impl utoipa::PartialSchema for LeafValue {
    fn schema() -> RefOr<Schema> {
        leaf_value_schema().into()
    }
}

impl utoipa::ToSchema for LeafValue {}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null))
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "system",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object),
        (status = 401, response = Unauthorized),
    )
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::Json(document()).into_response().into_body(),
    )
        .into_response()
}

/// True when a request is local by the API's rules for unauthenticated requests (loopback peer,
/// loopback Host, no proxy headers, no foreign Origin): [`access::local_unauthenticated`].
fn is_local(req: Request) -> (bool, Request) {
    let (parts, body) = req.into_parts();
    let local = access::peer(&parts).is_some_and(|p| access::is_loopback(p.ip()))
        && access::local_unauthenticated(&parts).is_ok();
    (local, Request::from_parts(parts, body))
}

/// Swagger UI: local clients, or everyone when `Data.System.SwaggerRemote` is on.
async fn swagger_guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let (local, req) = is_local(req);
    if state.config.settings().swagger_remote || local {
        next.run(req).await
    } else {
        Problem::new(
            StatusCode::FORBIDDEN,
            "the Swagger UI is served to localhost only (Data.System.SwaggerRemote is off)",
        )
        .into_response()
    }
}

/// The document: what the Swagger UI admits, else whatever the API guard admits.
async fn doc_guard(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let (local, req) = is_local(req);
    if state.config.settings().swagger_remote || local {
        next.run(req).await
    } else {
        access::guard(State(state), req, next).await
    }
}

/// `GET /api/openapi.json` and the Swagger UI under `/swagger`, each behind its guard.
pub fn routes(state: ApiState) -> Router<ApiState> {
    let doc = Router::new()
        .route(DOC_PATH, axum::routing::get(openapi_json))
        .route_layer(middleware::from_fn_with_state(state.clone(), doc_guard));
    let ui: Router<ApiState> = SwaggerUi::new(SWAGGER_PATH)
        .config(Config::from(DOC_PATH))
        .into();
    let ui = ui.route_layer(middleware::from_fn_with_state(state, swagger_guard));
    doc.merge(ui)
}

/// The HTTP methods an OpenAPI path item may hold.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `(METHOD, path)` of every operation the document lists, sorted.
pub fn documented_operations() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = document().get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            if let Some(item) = item.as_object() {
                for method in item.keys().filter(|m| METHODS.contains(&m.as_str())) {
                    out.push((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
    }
    out.sort();
    out
}
