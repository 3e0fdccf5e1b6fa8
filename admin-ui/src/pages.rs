//! The pages: sign-in and its callback, the dashboard, the configuration editor, trusted IPs,
//! registrations, active calls (with each leg's media, [`crate::media`]), users (SIP accounts), policies and the audit log. Each loads from the REST API and reloads when the event feed says its data
//! moved.

use leptos::prelude::*;
use serde_json::Value;

use crate::api::{self, ApiError};
use crate::auth::{self, AppInfo};
use crate::shell;

/// Loads `path` now and again whenever `watch` changes; `None` until the first answer.
pub fn load<T>(
    path: impl Fn() -> Option<String> + 'static,
    watch: impl Fn() + 'static,
) -> RwSignal<Option<Result<T, ApiError>>>
where
    T: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let out = RwSignal::new(None);
    // Only the latest request's answer is shown: one started earlier (before another server
    // was picked) may answer later.
    let latest = RwSignal::new(0u64);
    Effect::new(move |_| {
        watch();
        if let Some(p) = path() {
            latest.update_untracked(|n| *n += 1);
            let mine = latest.get_untracked();
            leptos::task::spawn_local(async move {
                let answer = api::get::<T>(&p).await;
                if latest.get_untracked() == mine {
                    out.set(Some(answer));
                }
            });
        }
    });
    out
}

/// What an action came to: a confirmation, or an error read out by screen readers.
pub fn outcome(result: Option<Result<String, String>>) -> AnyView {
    match result {
        Some(Ok(m)) => view! { <span class="ok">{m}</span> }.into_any(),
        Some(Err(m)) => view! { <span class="error" role="alert">{m}</span> }.into_any(),
        None => ().into_any(),
    }
}

/// A table's header row.
pub fn head(columns: &'static [&'static str]) -> impl IntoView {
    view! {
        <thead><tr>
            {columns.iter().map(|c| view! { <th scope="col">{*c}</th> }).collect_view()}
        </tr></thead>
    }
}

/// An error line, read by screen readers.
pub fn error_line(e: &ApiError) -> AnyView {
    view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any()
}

/// "Sign in with Microsoft" for one app of `GET /api/auth/config` (`admin` or `user`), coming
/// back to `return_to`; `unconfigured` when that app is not set up; why a start failed in
/// `message`.
#[component]
pub fn MicrosoftSignIn(
    which: &'static str,
    return_to: &'static str,
    unconfigured: &'static str,
    message: RwSignal<Option<String>>,
) -> impl IntoView {
    let app = load::<Value>(|| Some("/api/auth/config".into()), || ());
    let start = move |info: AppInfo| {
        leptos::task::spawn_local(async move {
            if let Err(e) = auth::start(&info, return_to).await {
                message.set(Some(e));
            }
        });
    };
    move || match app.get() {
        None => view! { <p>"Loading…"</p> }.into_any(),
        Some(Err(e)) => error_line(&e),
        Some(Ok(v)) => {
            let info: AppInfo = serde_json::from_value(v[which].clone()).unwrap_or_default();
            if info.configured() {
                view! {
                    <button type="button" class="primary" on:click=move |_| start(info.clone())>
                        "Sign in with Microsoft"
                    </button>
                }
                .into_any()
            } else {
                view! { <p>{unconfigured}</p> }.into_any()
            }
        }
    }
}

#[component]
pub fn SignIn() -> impl IntoView {
    let s = shell();
    let message = RwSignal::new(None::<String>);
    let token = RwSignal::new(String::new());
    let use_token = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let t = token.get_untracked().trim().to_owned();
        if t.is_empty() {
            message.set(Some("Paste the token first.".into()));
            return;
        }
        api::store_token(Some(&t));
        s.signed_in.set(true);
    };
    view! {
        <section aria-labelledby="signin-title" class="narrow">
            <h2 id="signin-title">"Sign in"</h2>
            <MicrosoftSignIn which="admin" return_to="/" message=message
                unconfigured="Azure sign-in is not configured yet (Data.AdminAzureApp.Tenant and \
                    ClientId). On the server itself, use the admin token below." />
            {move || message.get().map(|m| view! { <p class="error" role="alert">{m}</p> })}
            <form on:submit=use_token>
                <label for="admin-token">"Admin token (" <code>"<data-dir>/admin-token"</code> ", from this machine only)"</label>
                <input id="admin-token" type="password" autocomplete="off"
                    prop:value=move || token.get()
                    on:input=move |ev| token.set(event_target_value(&ev)) />
                <button type="submit">"Use the admin token"</button>
            </form>
        </section>
    }
}

#[component]
pub fn Callback() -> impl IntoView {
    let s = shell();
    let message = RwSignal::new(None::<String>);
    let search = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .unwrap_or_default();
    leptos::task::spawn_local(async move {
        match auth::finish(&search).await {
            Ok(done) if done.return_to == crate::me::PATH => {
                crate::me::store_token(Some(&done.token));
                s.navigate(crate::me::PATH);
            }
            Ok(done) => {
                api::store_token(Some(&done.token));
                s.signed_in.set(true);
                s.navigate("/");
            }
            Err(e) => message.set(Some(e)),
        }
    });
    view! {
        <section class="narrow">
            <h2>"Signing in…"</h2>
            {move || message.get().map(|m| view! {
                <p class="error" role="alert">{m}</p>
                <a href="/">"Back to the sign-in page"</a>
            })}
        </section>
    }
}

fn count(list: &Option<Result<Vec<Value>, ApiError>>) -> String {
    match list {
        None => "…".into(),
        Some(Ok(l)) => l.len().to_string(),
        Some(Err(_)) => "?".into(),
    }
}

/// Signs out when the gateway no longer takes the token.
fn expired(result: &Option<Result<Vec<Value>, ApiError>>) {
    if let Some(Err(e)) = result
        && e.status == 401
    {
        shell().sign_out();
    }
}

#[component]
pub fn Dashboard() -> impl IntoView {
    let feed = shell().feed;
    let regs = load::<Vec<Value>>(
        || Some("/api/registrations".into()),
        move || feed.registrations.track(),
    );
    let calls = load::<Vec<Value>>(|| Some("/api/calls".into()), move || feed.calls.track());
    let users = load::<Vec<Value>>(|| Some("/api/users".into()), || ());
    let policies = load::<Vec<Value>>(
        || Some("/api/policies".into()),
        move || feed.policies.track(),
    );
    let version = load::<Value>(|| Some("/api/version".into()), || ());
    Effect::new(move |_| expired(&regs.get()));
    let activated = move || match users.get() {
        Some(Ok(l)) => l
            .iter()
            .filter(|u| u.get("activated").and_then(Value::as_bool).unwrap_or(false))
            .count()
            .to_string(),
        other => count(&other),
    };
    let policy_line = move || match policies.get() {
        Some(Ok(l)) if l.is_empty() => "built-in rules".to_owned(),
        Some(Ok(l)) => l
            .iter()
            .map(|p| {
                let state = match (text_of(p, "source").as_str(), p.get("version")) {
                    (_, _) if !text_of(p, "disabled_reason").is_empty() => "switched off".into(),
                    ("module", Some(v)) => format!("module v{v}"),
                    (source, _) => source.to_owned(),
                };
                format!("{} ({state})", text_of(p, "kind"))
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(Err(e)) => e.to_string(),
        None => "…".into(),
    };
    view! {
        <h2>"Dashboard"</h2>
        <dl class="cards">
            <div><dt>"Registrations"</dt><dd id="count-registrations">{move || count(&regs.get())}</dd></div>
            <div><dt>"Active calls"</dt><dd id="count-calls">{move || count(&calls.get())}</dd></div>
            <div><dt>"Users"</dt><dd id="count-users">{move || count(&users.get())}</dd></div>
            <div><dt>"Activated users"</dt><dd>{activated}</dd></div>
            <div><dt>"Policies"</dt><dd>{policy_line}</dd></div>
            <div><dt>"Version"</dt><dd>{move || match version.get() {
                Some(Ok(v)) => format!("{} ({})", v["version"].as_str().unwrap_or("?"),
                    v["git_commit"].as_str().unwrap_or("?")),
                Some(Err(e)) => e.to_string(),
                None => "…".into(),
            }}</dd></div>
        </dl>
        <h3>"Recent events"</h3>
        <ol class="events" aria-live="polite">
            {move || feed.recent.get().into_iter().map(|e| view! {
                <li><code>{e.kind}</code>" "{summary(&e.data)}</li>
            }).collect_view()}
        </ol>
    }
}

/// A short line for an event's data.
fn summary(data: &Value) -> String {
    let Some(map) = data.as_object() else {
        return data.to_string();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null() && !v.is_object())
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The server picker: `*` (when `global`) and every server entry.
#[component]
fn ServerPicker(
    selected: RwSignal<String>,
    global: bool,
    #[prop(optional)] any: bool,
) -> impl IntoView {
    let servers = load::<Vec<String>>(|| Some("/api/config/servers".into()), || ());
    view! {
        <label for="server">"Server"</label>
        <select id="server" on:change=move |ev| selected.set(event_target_value(&ev))
            prop:value=move || selected.get()>
            {any.then(|| view! { <option value="">"all servers"</option> })}
            {global.then(|| view! { <option value="*">"* (global: every server)"</option> })}
            {move || match servers.get() {
                Some(Ok(list)) => list.into_iter().map(|name| {
                    let (n, value) = (name.clone(), name.clone());
                    view! { <option value=value selected=move || selected.get() == n>{name}</option> }
                }).collect_view().into_any(),
                Some(Err(e)) => error_line(&e),
                None => ().into_any(),
            }}
        </select>
    }
}

/// The value at a dotted path of an entry.
fn leaf_value(entry: &Value, path: &str) -> Value {
    path.split('.')
        .try_fold(entry, |v, k| v.get(k))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A leaf's value as the text its input shows (arrays one item per line).
fn as_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// What an input's text means for a leaf of type `kind` (the API judges the result).
fn from_text(kind: &str, text: &str) -> Value {
    match kind {
        "integer" => text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(text)),
        "boolean" => Value::Bool(text == "true"),
        "array" => Value::Array(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(Value::from)
                .collect(),
        ),
        _ => Value::from(text),
    }
}

#[component]
pub fn Config() -> impl IntoView {
    let feed = shell().feed;
    let server = RwSignal::new("*".to_owned());
    let paths = load::<Vec<Value>>(|| Some("/api/config/paths".into()), || ());
    let servers = load::<Vec<String>>(|| Some("/api/config/servers".into()), || ());
    let entry = load::<Value>(
        move || Some(format!("/api/config/{}", api::encode(&server.get()))),
        move || feed.config.track(),
    );
    let reach = move || match (server.get().as_str(), servers.get()) {
        ("*", Some(Ok(list))) => format!(
            "A change here is written to the global entry and to every server entry: {}.",
            list.join(", ")
        ),
        ("*", _) => {
            "A change here is written to the global entry and to every server entry.".into()
        }
        (name, _) => format!("A change here applies to server {name} only."),
    };
    // The rows are made once per list of leaves; each follows its own value in the entry shown,
    // so a reload (another server picked, a `config.changed` event) keeps what the rows say.
    let current = Memo::new(move |_| match entry.get() {
        Some(Ok(v)) => Some(v),
        _ => None,
    });
    view! {
        <h2>"Configuration"</h2>
        <div class="toolbar"><ServerPicker selected=server global=true /></div>
        <p id="reach">{reach}</p>
        {move || match entry.get() {
            Some(Err(e)) => error_line(&e),
            _ => ().into_any(),
        }}
        {move || match paths.get() {
            Some(Err(e)) => error_line(&e),
            Some(Ok(paths)) => view! {
                <table class="leaves">
                    <thead><tr><th scope="col">"Setting"</th><th scope="col">"Value"</th><th scope="col"></th></tr></thead>
                    <tbody>
                        {paths.into_iter().map(|info| {
                            let path = info["path"].as_str().unwrap_or("").to_owned();
                            let value = Memo::new(move |_| {
                                current.get().map(|e| leaf_value(&e, &path))
                            });
                            view! { <Leaf server=server info=info value=value /> }
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any(),
            None => view! { <p>"Loading…"</p> }.into_any(),
        }}
    }
}

/// One row of the editor: a typed input for the leaf, saved on its own (`PUT …/{leaf}`).
#[component]
fn Leaf(server: RwSignal<String>, info: Value, value: Memo<Option<Value>>) -> impl IntoView {
    let path = info["path"].as_str().unwrap_or("").to_owned();
    let kind = info["type"].as_str().unwrap_or("string").to_owned();
    let secret = info["secret"].as_bool().unwrap_or(false);
    let choices: Vec<String> = info["enum"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let text = RwSignal::new(String::new());
    let status = RwSignal::new(None::<Result<String, String>>);
    // The input shows the stored value whenever it changes (`None`: the entry is loading).
    Effect::new(move |_| {
        if let Some(v) = value.get() {
            text.set(as_text(&v));
        }
    });
    // A message about one server's leaf does not stay when another server is shown.
    Effect::new(move |_| {
        server.track();
        status.set(None);
    });
    let id = format!("leaf-{}", path.replace('.', "-"));
    let hint = format!(
        "{} (default {})",
        info["description"].as_str().unwrap_or(""),
        info["default"]
    );
    let save = {
        let (path, kind) = (path.clone(), kind.clone());
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            let current = text.get_untracked();
            if secret && current.is_empty() {
                status.set(Some(Err(
                    "Type a new value (the stored secret is never shown).".into(),
                )));
                return;
            }
            let body = from_text(&kind, &current);
            let url = format!(
                "/api/config/{}/{}",
                api::encode(&server.get_untracked()),
                path
            );
            leptos::task::spawn_local(async move {
                status.set(Some(match api::call("PUT", &url, Some(&body)).await {
                    Ok(_) => Ok("Saved.".into()),
                    Err(e) => Err(e.to_string()),
                }));
            });
        }
    };
    // Nothing is typed before the stored value arrives: it would overwrite the typing, and a
    // Save would then store the old value.
    let loading = move || value.get().is_none();
    let input = match kind.as_str() {
        "boolean" => view! {
            <input id=id.clone() type="checkbox" prop:checked=move || text.get() == "true"
                prop:disabled=loading
                on:change=move |ev| text.set(event_target_checked(&ev).to_string()) />
        }
        .into_any(),
        "array" => view! {
            <textarea id=id.clone() rows="3" prop:value=move || text.get() prop:disabled=loading
                on:input=move |ev| text.set(event_target_value(&ev))></textarea>
        }
        .into_any(),
        _ if !choices.is_empty() => view! {
            <select id=id.clone() prop:disabled=loading
                on:change=move |ev| text.set(event_target_value(&ev))>
                {choices.into_iter().map(|c| {
                    let (c2, value) = (c.clone(), c.clone());
                    view! { <option value=value selected=move || text.get() == c2>{c}</option> }
                }).collect_view()}
            </select>
        }
        .into_any(),
        _ => view! {
            <input id=id.clone()
                type=if secret { "password" } else if kind == "integer" { "number" } else { "text" }
                placeholder=if secret { "unchanged" } else { "" }
                prop:value=move || text.get() prop:disabled=loading
                on:input=move |ev| text.set(event_target_value(&ev)) />
        }
        .into_any(),
    };
    view! {
        <tr>
            <th scope="row"><label for=id.clone()>{path.clone()}</label><small>{hint}</small></th>
            <td>
                <form on:submit=save class="leaf" data-path=path.clone()>
                    {input}
                    <button type="submit" prop:disabled=loading>"Save"</button>
                </form>
            </td>
            <td class="status" aria-live="polite">{move || outcome(status.get())}</td>
        </tr>
    }
}

#[component]
pub fn TrustedIps() -> impl IntoView {
    let feed = shell().feed;
    let server = RwSignal::new("*".to_owned());
    let reload = RwSignal::new(0u32);
    let list = load::<Vec<String>>(
        move || {
            Some(format!(
                "/api/config/{}/trusted-ips",
                api::encode(&server.get())
            ))
        },
        move || {
            feed.config.track();
            reload.track();
        },
    );
    let cidr = RwSignal::new(String::new());
    let message = RwSignal::new(None::<String>);
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let url = format!(
            "/api/config/{}/trusted-ips",
            api::encode(&server.get_untracked())
        );
        let body = serde_json::json!({ "cidr": cidr.get_untracked().trim() });
        leptos::task::spawn_local(async move {
            match api::call("POST", &url, Some(&body)).await {
                Ok(_) => {
                    message.set(None);
                    cidr.set(String::new());
                }
                Err(e) => message.set(Some(e.to_string())),
            }
            reload.update(|n| *n += 1);
        });
    };
    let remove = move |c: String| {
        let url = format!(
            "/api/config/{}/trusted-ips?cidr={}",
            api::encode(&server.get_untracked()),
            api::encode(&c)
        );
        leptos::task::spawn_local(async move {
            if let Err(e) = api::call("DELETE", &url, None).await {
                message.set(Some(e.to_string()));
            }
            reload.update(|n| *n += 1);
        });
    };
    view! {
        <h2>"Trusted IPs"</h2>
        <p>"REGISTERs from these ranges are not challenged (the account must exist)."</p>
        <div class="toolbar"><ServerPicker selected=server global=true /></div>
        <form on:submit=add class="inline">
            <label for="cidr">"Address or range (CIDR)"</label>
            <input id="cidr" type="text" placeholder="10.0.0.0/8" prop:value=move || cidr.get()
                on:input=move |ev| cidr.set(event_target_value(&ev)) />
            <button type="submit">"Add"</button>
        </form>
        {move || message.get().map(|m| view! { <p class="error" role="alert">{m}</p> })}
        {move || match list.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => error_line(&e),
            Some(Ok(l)) if l.is_empty() => view! { <p>"No trusted ranges."</p> }.into_any(),
            Some(Ok(l)) => view! {
                <ul class="trusted" id="trusted-list">
                    {l.into_iter().map(|c| {
                        let label = format!("Remove {c}");
                        let c2 = c.clone();
                        view! { <li><code>{c}</code>" "
                            <button type="button" aria-label=label on:click=move |_| remove(c2.clone())>"Remove"</button></li> }
                    }).collect_view()}
                </ul>
            }.into_any(),
        }}
    }
}

#[component]
pub fn Registrations() -> impl IntoView {
    let feed = shell().feed;
    let server = RwSignal::new(String::new());
    let filter = RwSignal::new(String::new());
    let list = load::<Vec<Value>>(
        move || {
            let s = server.get();
            Some(if s.is_empty() {
                "/api/registrations".into()
            } else {
                format!("/api/registrations?server={}", api::encode(&s))
            })
        },
        move || feed.registrations.track(),
    );
    let field = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    view! {
        <h2>"Registrations"</h2>
        <div class="toolbar">
            <ServerPicker selected=server global=false any=true />
            <label for="aor-filter">"Filter"</label>
            <input id="aor-filter" type="search" placeholder="user, contact or agent"
                on:input=move |ev| filter.set(event_target_value(&ev)) />
        </div>
        {move || match list.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => error_line(&e),
            Some(Ok(l)) => {
                let needle = filter.get().to_lowercase();
                let rows: Vec<Value> = l.into_iter()
                    .filter(|r| needle.is_empty() || r.to_string().to_lowercase().contains(&needle))
                    .collect();
                view! {
                    <p id="registration-count">{format!("{} registration(s)", rows.len())}</p>
                    <div class="scroll"><table id="registrations">
                        {head(&["Address of record", "Contact", "Server", "Transport", "Source", "User agent", "Expires"])}
                        <tbody>
                            {rows.into_iter().map(|r| view! {
                                <tr>
                                    <td>{field(&r, "aor")}</td><td>{field(&r, "contact")}</td>
                                    <td>{field(&r, "server")}</td><td>{field(&r, "transport")}</td>
                                    <td>{field(&r, "source")}</td><td>{field(&r, "user_agent")}</td>
                                    <td>{field(&r, "expires_at")}</td>
                                </tr>
                            }).collect_view()}
                        </tbody>
                    </table></div>
                }.into_any()
            }
        }}
    }
}

/// A JSON field as text (`""` when absent or null).
pub fn text_of(v: &Value, k: &str) -> String {
    match v.get(k) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[component]
pub fn Users() -> impl IntoView {
    let feed = shell().feed;
    let reload = RwSignal::new(0u32);
    let list = load::<Vec<Value>>(
        || Some("/api/users".into()),
        move || {
            feed.users.track();
            reload.track();
        },
    );
    let (username, password, display, upn, number) = (
        RwSignal::new(String::new()),
        RwSignal::new(String::new()),
        RwSignal::new(String::new()),
        RwSignal::new(String::new()),
        RwSignal::new(String::new()),
    );
    let users = move || match list.get() {
        Some(Ok(l)) => l,
        _ => Vec::new(),
    };
    // Every binding, live; each row picks its user's.
    let regs = load::<Vec<Value>>(
        || Some("/api/registrations".into()),
        move || feed.registrations.track(),
    );
    let bindings = Memo::new(move |_| match regs.get() {
        Some(Ok(l)) => l,
        _ => Vec::new(),
    });
    let message = RwSignal::new(None::<Result<String, String>>);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let name = username.get_untracked().trim().to_owned();
        let mut body =
            serde_json::json!({ "username": name, "password": password.get_untracked() });
        for (key, field) in [
            ("display_name", display),
            ("upn", upn),
            ("phone_number", number),
        ] {
            let text = field.get_untracked().trim().to_owned();
            if !text.is_empty() {
                body[key] = Value::from(text);
            }
        }
        leptos::task::spawn_local(async move {
            match api::call("POST", "/api/users", Some(&body)).await {
                Ok(_) => {
                    message.set(Some(Ok(format!("Created {name}."))));
                    for f in [username, password, display, upn, number] {
                        f.set(String::new());
                    }
                }
                Err(e) => message.set(Some(Err(e.to_string()))),
            }
            reload.update(|n| *n += 1);
        });
    };
    view! {
        <h2>"Users"</h2>
        <p>"SIP accounts: a phone registers with the username and password in the account's domain."</p>
        <form on:submit=create class="inline" aria-label="New SIP account">
            <label for="new-username">"Username"</label>
            <input id="new-username" type="text" autocomplete="off" required
                prop:value=move || username.get() on:input=move |ev| username.set(event_target_value(&ev)) />
            <label for="new-password">"Password"</label>
            <input id="new-password" type="password" autocomplete="new-password" required
                prop:value=move || password.get() on:input=move |ev| password.set(event_target_value(&ev)) />
            <label for="new-display">"Display name"</label>
            <input id="new-display" type="text"
                prop:value=move || display.get() on:input=move |ev| display.set(event_target_value(&ev)) />
            <label for="new-upn">"UPN (Microsoft sign-in)"</label>
            <input id="new-upn" type="email" autocomplete="off" placeholder="alice@contoso.com"
                prop:value=move || upn.get() on:input=move |ev| upn.set(event_target_value(&ev)) />
            <label for="new-number">"Phone number (E.164)"</label>
            <input id="new-number" type="tel" autocomplete="off" placeholder="+14255550100"
                prop:value=move || number.get() on:input=move |ev| number.set(event_target_value(&ev)) />
            <button type="submit">"Create"</button>
        </form>
        <p aria-live="polite">{move || outcome(message.get())}</p>
        {move || list.with(|l| match l {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => error_line(e),
            Some(Ok(l)) => view! { <p>{format!("{} user(s)", l.len())}</p> }.into_any(),
        })}
        <div class="scroll"><table id="users">
            {head(&["Username", "Domain", "Display name", "UPN", "Phone number", "Enabled", "Activated for Teams", "Devices", "New password"])}
            <tbody>
                // Keyed by the whole user: a reload keeps the rows (and what their forms say)
                // of the users that did not change.
                <For each=users key=|u: &Value| u.to_string()
                    children=move |u| view! { <UserRow user=u bindings=bindings /> } />
            </tbody>
        </table></div>
    }
}

/// The address of record a user's phones register (`sip:username@domain`).
pub fn aor_of(user: &Value) -> String {
    format!(
        "sip:{}@{}",
        text_of(user, "username"),
        text_of(user, "domain")
    )
}

/// A user's devices: one line per binding of `aor` (user agent, contact, transport, server,
/// expiry); "none registered" when there is none.
pub fn devices(aor: &str, bindings: &[Value]) -> AnyView {
    let mine: Vec<&Value> = bindings
        .iter()
        .filter(|b| text_of(b, "aor").eq_ignore_ascii_case(aor))
        .collect();
    if mine.is_empty() {
        return view! { <span class="muted">"none registered"</span> }.into_any();
    }
    view! {
        <ul class="devices">
            {mine.into_iter().map(|b| {
                let agent = match text_of(b, "user_agent") {
                    a if a.is_empty() => "unknown device".to_owned(),
                    a => a,
                };
                view! {
                    <li>
                        <strong>{agent}</strong>" "<code>{text_of(b, "contact")}</code>
                        <small>{format!(" {} via {}, server {}, until {} UTC", text_of(b, "source"),
                            text_of(b, "transport"), text_of(b, "server"), short_time(&text_of(b, "expires_at")))}</small>
                    </li>
                }
            }).collect_view()}
        </ul>
    }
    .into_any()
}

/// One user, with its devices and a form that sets a new password (`PATCH /api/users/{id}`).
#[component]
fn UserRow(user: Value, bindings: Memo<Vec<Value>>) -> impl IntoView {
    let id = text_of(&user, "id");
    let name = text_of(&user, "username");
    let aor = aor_of(&user);
    let yes_no = |k: &str| {
        if user.get(k).and_then(Value::as_bool).unwrap_or(false) {
            "yes"
        } else {
            "no"
        }
    };
    let password = RwSignal::new(String::new());
    let status = RwSignal::new(None::<Result<String, String>>);
    let input_id = format!("password-{name}");
    let activated = user
        .get("activated")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let url = format!("/api/users/{}", api::encode(&id));
    // The row comes back from the reload the change's event causes, showing the new state.
    let toggle = {
        let url = url.clone();
        move |_| {
            let (url, body) = (url.clone(), serde_json::json!({ "activated": !activated }));
            leptos::task::spawn_local(async move {
                if let Err(e) = api::call("PATCH", &url, Some(&body)).await {
                    status.set(Some(Err(e.to_string())));
                }
            });
        }
    };
    let toggle_label = format!(
        "{} {name} for Teams",
        if activated { "Deactivate" } else { "Activate" }
    );
    let reset = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let url = url.clone();
        let body = serde_json::json!({ "password": password.get_untracked() });
        leptos::task::spawn_local(async move {
            status.set(Some(match api::call("PATCH", &url, Some(&body)).await {
                Ok(_) => {
                    password.set(String::new());
                    Ok("Password set.".into())
                }
                Err(e) => Err(e.to_string()),
            }));
        });
    };
    view! {
        <tr data-user=name.clone()>
            <td>{name.clone()}</td><td>{text_of(&user, "domain")}</td>
            <td>{text_of(&user, "display_name")}</td><td>{text_of(&user, "upn")}</td>
            <td>{text_of(&user, "phone_number")}</td>
            <td>{yes_no("enabled")}</td>
            <td>{yes_no("activated")}" "
                <button type="button" aria-label=toggle_label on:click=toggle>
                    {if activated { "Deactivate" } else { "Activate" }}
                </button>
            </td>
            <td class="devices">{move || bindings.with(|b| devices(&aor, b))}</td>
            <td>
                <form on:submit=reset class="leaf">
                    <label for=input_id.clone() class="visually-hidden">{format!("New password for {name}")}</label>
                    <input id=input_id type="password" autocomplete="new-password" required
                        prop:value=move || password.get() on:input=move |ev| password.set(event_target_value(&ev)) />
                    <button type="submit">"Set"</button>
                </form>
                <span aria-live="polite">{move || outcome(status.get())}</span>
            </td>
        </tr>
    }
}

#[component]
pub fn Audit() -> impl IntoView {
    let feed = shell().feed;
    let list = load::<Vec<Value>>(
        || Some("/api/audit?limit=100".into()),
        move || {
            feed.config.track();
            feed.users.track();
            feed.policies.track();
        },
    );
    let json = |v: &Value, k: &str| match v.get(k) {
        None | Some(Value::Null) => String::new(),
        Some(x) => x.to_string(),
    };
    view! {
        <h2>"Audit log"</h2>
        <p>"Every admin change, newest first (secrets show as ***)."</p>
        {move || match list.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => error_line(&e),
            Some(Ok(l)) => view! {
                <div class="scroll"><table id="audit">
                    {head(&["When", "Who", "What", "Target", "Before", "After"])}
                    <tbody>
                        {l.into_iter().map(|e| view! {
                            <tr>
                                <td>{text_of(&e, "at")}</td><td>{text_of(&e, "actor")}</td>
                                <td>{text_of(&e, "action")}</td><td>{text_of(&e, "target")}</td>
                                <td><code>{json(&e, "old")}</code></td><td><code>{json(&e, "new")}</code></td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table></div>
            }.into_any(),
        }}
    }
}

/// How long the Calls page waits after an answer before asking again while calls run (their
/// packet counters move).
const CALLS_REFRESH_MS: u64 = 3_000;

/// What the active-calls list is at: the page re-renders only when this changes, the rows
/// follow their call in place.
#[derive(Clone, PartialEq)]
enum ListState {
    Loading,
    Failed(String),
    Empty,
    Calls,
}

#[component]
pub fn Calls() -> impl IntoView {
    let feed = shell().feed;
    let reload = RwSignal::new(0u32);
    let list = load::<Vec<Value>>(
        || Some("/api/calls".into()),
        move || {
            feed.calls.track();
            reload.track();
        },
    );
    // While calls run, ask again a while after each answer (one request at a time, however
    // slow the server); a call event asks at once. Stops when the page is left.
    let next = StoredValue::new(None::<TimeoutHandle>);
    let cancel = move || {
        if let Some(h) = next.try_update_value(Option::take).flatten() {
            h.clear();
        }
    };
    Effect::new(move |_| {
        let again = match list.get() {
            Some(Ok(l)) => !l.is_empty(),
            Some(Err(e)) => e.status != 401,
            None => false,
        };
        cancel();
        if again {
            let handle = set_timeout_with_handle(
                move || reload.update(|n| *n += 1),
                std::time::Duration::from_millis(CALLS_REFRESH_MS),
            );
            next.set_value(handle.ok());
        }
    });
    on_cleanup(cancel);
    Effect::new(move |_| expired(&list.get()));
    let state = Memo::new(move |_| match list.get() {
        None => ListState::Loading,
        Some(Err(e)) => ListState::Failed(e.to_string()),
        Some(Ok(l)) if l.is_empty() => ListState::Empty,
        Some(Ok(_)) => ListState::Calls,
    });
    let ids = Memo::new(move |_| match list.get() {
        Some(Ok(l)) => l.iter().map(|c| text_of(c, "id")).collect::<Vec<_>>(),
        _ => Vec::new(),
    });
    let call = move |id: String| {
        Memo::new(move |_| {
            list.with(|l| match l {
                Some(Ok(l)) => l.iter().find(|c| text_of(c, "id") == id).cloned(),
                _ => None,
            })
        })
    };
    let message = RwSignal::new(None::<Result<String, String>>);
    let hang_up = move |id: String| {
        let url = format!("/api/calls/{}", api::encode(&id));
        leptos::task::spawn_local(async move {
            message.set(Some(match api::call("DELETE", &url, None).await {
                Ok(_) => Ok(format!("Call {id}: hanging up.")),
                Err(e) => Err(e.to_string()),
            }));
            reload.update(|n| *n += 1);
        });
    };
    view! {
        <h2>"Active calls"</h2>
        <p>"The calls running on this server, with each leg's media (refreshed every few \
            seconds); hanging up sends BYE to both phones."</p>
        <p aria-live="polite">{move || outcome(message.get())}</p>
        {move || match state.get() {
            ListState::Loading => view! { <p>"Loading…"</p> }.into_any(),
            ListState::Failed(e) => view! { <p class="error" role="alert">{e}</p> }.into_any(),
            ListState::Empty => view! { <p id="no-calls">"No calls right now."</p> }.into_any(),
            ListState::Calls => view! {
                <div class="scroll"><table id="calls">
                    {head(&["Call", "State", "Caller", "Callee", "Started", ""])}
                    <tbody>
                        <For each=move || ids.get() key=|id| id.clone() let:id>
                            <CallRow id=id.clone() call=call(id) hang_up=hang_up />
                        </For>
                    </tbody>
                </table></div>
                <h3>"Media"</h3>
                <p class="muted">"Per leg, what it sent to the gateway: packets received, lost \
                    (of those expected), interarrival jitter, and packets dropped (open for why)."</p>
                <For each=move || ids.get() key=|id| id.clone() let:id>
                    <crate::media::CallMedia id=id.clone() call=call(id) />
                </For>
            }.into_any(),
        }}
        <RecentCalls />
    }
}

/// One running call: its parties, state and the hang-up button (kept in place while the list
/// refreshes, so focus stays on it).
#[component]
fn CallRow(
    id: String,
    call: Memo<Option<Value>>,
    hang_up: impl Fn(String) + Copy + 'static,
) -> impl IntoView {
    let field = move |k: &'static str| move || call.with(|c| c.as_ref().map(|c| text_of(c, k)));
    // The party of leg `i` (the caller's leg first).
    let party =
        move |i: usize| move || call.with(|c| c.as_ref().map(|c| text_of(&c["legs"][i], "party")));
    let label = format!("Hang up call {id}");
    let (target, key) = (id.clone(), id.clone());
    view! {
        <tr data-call=key>
            <td>{id}</td><td>{field("state")}</td>
            <td>{party(0)}</td><td>{party(1)}</td>
            <td>{field("started_at")}</td>
            <td><button type="button" aria-label=label
                on:click=move |_| hang_up(target.clone())>"Hang up"</button></td>
        </tr>
    }
}

/// The recent ended calls (`GET /api/calls/history`), each with its SIP ladder on demand.
#[component]
fn RecentCalls() -> impl IntoView {
    let feed = shell().feed;
    let history = load::<Vec<Value>>(
        || Some("/api/calls/history".into()),
        move || feed.calls.track(),
    );
    let shown = RwSignal::new(None::<String>);
    view! {
        <h3>"Recent calls"</h3>
        {move || match history.get() {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => error_line(&e),
            Some(Ok(l)) if l.is_empty() => view! { <p>"No ended calls yet."</p> }.into_any(),
            Some(Ok(l)) => view! {
                <div class="scroll"><table id="history">
                    {head(&["Call", "Caller", "Callee", "Started", "Status", "End", "Media", ""])}
                    <tbody>
                        {l.into_iter().map(|c| {
                            let id = text_of(&c, "id");
                            let label = format!("SIP ladder of call {id}");
                            let target = id.clone();
                            view! {
                                <tr>
                                    <td>{id}</td><td>{text_of(&c, "caller")}</td>
                                    <td>{text_of(&c, "callee")}</td><td>{text_of(&c, "started_at")}</td>
                                    <td>{text_of(&c, "status")}</td><td>{text_of(&c, "end_reason")}</td>
                                    <td class="record-media">{crate::media::record_summary(&c)}</td>
                                    <td><button type="button" aria-label=label
                                        on:click=move |_| shown.set(Some(target.clone()))>"Ladder"</button></td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table></div>
            }.into_any(),
        }}
        {move || shown.get().map(|id| view! { <Ladder id=id /> })}
    }
}

/// A call's SIP ladder: caller, gateway and callee as three lanes, one row per message in the
/// order the gateway received or sent it (`GET /api/calls/{id}/messages`); each row opens to the
/// whole message.
#[component]
fn Ladder(id: String) -> impl IntoView {
    let path = format!("/api/calls/{}/messages", api::encode(&id));
    let messages = load::<Vec<Value>>(move || Some(path.clone()), || ());
    view! {
        <section aria-labelledby="ladder-title">
            <h3 id="ladder-title">{format!("SIP ladder of call {id}")}</h3>
            {move || match messages.get() {
                None => view! { <p>"Loading…"</p> }.into_any(),
                Some(Err(e)) => error_line(&e),
                Some(Ok(l)) => view! {
                    <div class="scroll"><table id="ladder" class="ladder">
                        {head(&["Time", "Caller", "", "Gateway", "", "Callee"])}
                        <tbody>
                            {l.into_iter().map(|m| view! { <LadderRow message=m /> }).collect_view()}
                        </tbody>
                    </table></div>
                }.into_any(),
            }}
        </section>
    }
}

/// One message of the ladder: an arrow in the caller–gateway lane (leg `a`) or the
/// gateway–callee lane (leg `b`), pointing the way it went.
#[component]
fn LadderRow(message: Value) -> impl IntoView {
    let leg = text_of(&message, "leg");
    let inbound = text_of(&message, "direction") == "in";
    let label = {
        let status = text_of(&message, "status");
        let method = text_of(&message, "method");
        if status.is_empty() {
            method
        } else {
            format!("{status} ({method})")
        }
    };
    // Leg a: in = caller → gateway; leg b: in = callee → gateway.
    let rightward = (leg == "a") == inbound;
    let text = if rightward {
        format!("{label} →")
    } else {
        format!("← {label}")
    };
    let arrow = view! {
        <td class=if rightward { "arrow right" } else { "arrow left" }>
            <details><summary>{text}</summary><pre>{text_of(&message, "text")}</pre></details>
        </td>
    }
    .into_any();
    let empty = view! { <td></td> }.into_any();
    let (caller_side, callee_side) = if leg == "a" {
        (arrow, empty)
    } else {
        (empty, arrow)
    };
    let time = text_of(&message, "at");
    let time = time.get(11..23).unwrap_or(&time).to_owned();
    view! {
        <tr data-leg=leg>
            <td><code>{time}</code></td>
            <td class="lane"></td>
            {caller_side}
            <td class="lane"></td>
            {callee_side}
            <td class="lane"></td>
        </tr>
    }
}

/// The policy kinds, as `/api/policies/{kind}` names them.
const POLICY_KINDS: [&str; 3] = ["routing", "admission", "quirks"];

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC), or as it is.
fn short_time(t: &str) -> String {
    t.get(..19)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| t.to_owned())
}

#[component]
pub fn Policies() -> impl IntoView {
    let feed = shell().feed;
    let reload = RwSignal::new(0u32);
    let list = load::<Vec<Value>>(
        || Some("/api/policies".into()),
        move || {
            feed.policies.track();
            reload.track();
        },
    );
    let status_of = move |kind: &'static str| {
        Memo::new(move |_| match list.get() {
            Some(Ok(l)) => l.into_iter().find(|p| text_of(p, "kind") == kind),
            _ => None,
        })
    };
    let message = RwSignal::new(None::<Result<String, String>>);
    let kind = RwSignal::new(POLICY_KINDS[0].to_owned());
    let file = NodeRef::<leptos::html::Input>::new();
    let upload = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let chosen = file
            .get()
            .and_then(|input| input.files())
            .and_then(|f| f.get(0));
        let Some(chosen) = chosen else {
            message.set(Some(Err("Choose a .wasm component first.".into())));
            return;
        };
        let kind = kind.get_untracked();
        leptos::task::spawn_local(async move {
            let url = format!("/api/policies/{}", api::encode(&kind));
            message.set(Some(
                match api::upload(&url, &chosen, "application/wasm").await {
                    Ok(v) => Ok(format!(
                        "The {kind} policy version {} is in use.",
                        v["version"]
                    )),
                    Err(e) => Err(e.to_string()),
                },
            ));
            if let Some(input) = file.get_untracked() {
                input.set_value("");
            }
            reload.update(|n| *n += 1);
        });
    };
    view! {
        <h2>"Policies"</h2>
        <p>"WASM components that replace the built-in routing, admission and device-quirk rules \
            without a restart (built for " <code>"wasm32-wasip2"</code> " with " <code>"policies/sdk"</code>
            "). A module that fails 5 times within 60 s is switched off and the built-in rule decides."</p>
        <form on:submit=upload class="inline" id="policy-upload" aria-label="Upload a policy">
            <label for="policy-kind">"Kind"</label>
            <select id="policy-kind" on:change=move |ev| kind.set(event_target_value(&ev))>
                {POLICY_KINDS.into_iter().map(|k| view! { <option value=k>{k}</option> }).collect_view()}
            </select>
            <label for="policy-file">"Component (.wasm)"</label>
            <input id="policy-file" type="file" accept=".wasm,application/wasm" node_ref=file />
            <button type="submit">"Upload"</button>
        </form>
        <p aria-live="polite">{move || outcome(message.get())}</p>
        {move || list.with(|l| match l {
            None => view! { <p>"Loading…"</p> }.into_any(),
            Some(Err(e)) => error_line(e),
            Some(Ok(_)) => ().into_any(),
        })}
        <div class="scroll"><table id="policies">
            {head(&["Kind", "In use", "Version", "SHA-256", "Uploaded", "Decisions", "Failures", "Last error", "Switched off", ""])}
            <tbody>
                {POLICY_KINDS.into_iter().map(|kind| view! {
                    <PolicyRow kind=kind status=status_of(kind) reload=reload message=message />
                }).collect_view()}
            </tbody>
        </table></div>
    }
}

/// One policy kind: its state, switch off, back to the built-in rule.
#[component]
fn PolicyRow(
    kind: &'static str,
    status: Memo<Option<Value>>,
    reload: RwSignal<u32>,
    message: RwSignal<Option<Result<String, String>>>,
) -> impl IntoView {
    let field =
        move |k: &'static str| move || status.get().map(|s| text_of(&s, k)).unwrap_or_default();
    let url = format!("/api/policies/{kind}");
    let act = move |method: &'static str, path: String, done: String| {
        leptos::task::spawn_local(async move {
            message.set(Some(match api::call(method, &path, None).await {
                Ok(_) => Ok(done),
                Err(e) => Err(e.to_string()),
            }));
            reload.update(|n| *n += 1);
        });
    };
    let disable_url = format!("{url}/disable");
    let failures = move || {
        status
            .get()
            .and_then(|s| s.get("failures").and_then(Value::as_object).cloned())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let hash = move || {
        status
            .get()
            .map(|s| text_of(&s, "hash"))
            .unwrap_or_default()
    };
    let uploaded = move || {
        status
            .get()
            .map(|s| {
                format!(
                    "{} {}",
                    short_time(&text_of(&s, "uploaded_at")),
                    text_of(&s, "uploaded_by")
                )
            })
            .unwrap_or_default()
    };
    view! {
        <tr data-kind=kind>
            <th scope="row">{kind}</th>
            <td>{field("source")}</td>
            <td class="version">{field("version")}</td>
            <td class="hash"><code title=hash>{move || hash().chars().take(12).collect::<String>()}</code></td>
            <td>{uploaded}</td>
            <td>{move || status.get().map(|s| s["decisions"].to_string()).unwrap_or_default()}</td>
            <td>{failures}</td>
            <td>{field("last_error")}</td>
            <td class="disabled">{field("disabled_reason")}</td>
            <td class="actions">
                <button type="button" aria-label=format!("Switch off the {kind} policy")
                    on:click=move |_| act("POST", disable_url.clone(), format!("The {kind} policy is switched off."))>
                    "Switch off"</button>
                <button type="button" aria-label=format!("Back to the built-in {kind} rule")
                    on:click=move |_| act("DELETE", url.clone(), format!("The built-in {kind} rule decides."))>
                    "Built-in"</button>
            </td>
        </tr>
    }
}
