//! The end user's self-service page (`/me`): sign in with the end-user app (`Data.SpsAzureApp`),
//! see your SIP accounts, whether each is activated for Teams, your devices and whether they
//! are registered, and (re-)activate or deactivate — all through `/api/me`. Its token is kept
//! apart from the console's (another session-storage key), so neither is ever sent as the other.
//! Below the accounts, the web phone ([`crate::webphone`]).

use leptos::prelude::*;
use serde_json::Value;

use crate::api::{self, ApiError};
use crate::pages::{MicrosoftSignIn, devices, error_line, outcome, text_of};
use crate::webphone::WebPhone;

/// Where the page lives.
pub const PATH: &str = "/me";

/// The session-storage key of the end user's token.
const TOKEN_KEY: &str = "csps.me.token";

/// How often the page asks again (devices come and go).
const POLL_MS: u64 = 10_000;

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok()?
}

/// The end user's token, if signed in.
pub fn token() -> Option<String> {
    storage()?
        .get_item(TOKEN_KEY)
        .ok()?
        .filter(|t| !t.is_empty())
}

/// Keeps (or, with `None`, forgets) the end user's token.
pub fn store_token(token: Option<&str>) {
    if let Some(s) = storage() {
        let _ = match token {
            Some(t) => s.set_item(TOKEN_KEY, t),
            None => s.remove_item(TOKEN_KEY),
        };
    }
}

#[component]
pub fn Me() -> impl IntoView {
    let signed_in = RwSignal::new(token().is_some());
    view! {
        {move || if signed_in.get() {
            view! { <Mine signed_in=signed_in /> }.into_any()
        } else {
            view! { <MeSignIn /> }.into_any()
        }}
    }
}

/// The end user's sign-in.
#[component]
fn MeSignIn() -> impl IntoView {
    let message = RwSignal::new(None::<String>);
    view! {
        <section aria-labelledby="me-title" class="narrow">
            <h2 id="me-title">"Your phones and Teams"</h2>
            <p>"Sign in with your Microsoft account to see your SIP phones, whether they are \
                registered, and to activate them for Microsoft Teams."</p>
            <MicrosoftSignIn which="user" return_to=PATH message=message
                unconfigured="Self-service sign-in is not configured yet (Data.SpsAzureApp.Tenant \
                    and ClientId); ask your administrator." />
            {move || message.get().map(|m| view! { <p class="error" role="alert">{m}</p> })}
        </section>
    }
}

/// The signed-in end user's accounts.
#[component]
fn Mine(signed_in: RwSignal<bool>) -> impl IntoView {
    let reload = RwSignal::new(0u32);
    let me = RwSignal::new(None::<Result<Value, ApiError>>);
    // Back from the gateway's activation sign-in (`/activate` sends the browser to `/me?activated=N`).
    let back_activated = web_sys::window()
        .and_then(|w| w.location().search().ok())
        .is_some_and(|q| q.contains("activated="));
    let message = RwSignal::new(back_activated.then(|| Ok("Activated for Teams.".to_owned())));
    // The accounts' AoRs for the web phone, kept while a reload is under way or fails, so the
    // running phone is not rebuilt every poll.
    let aors = Memo::new(move |prev: Option<&Vec<String>>| match me.get() {
        Some(Ok(v)) => v["accounts"]
            .as_array()
            .map(|list| list.iter().map(aor_of).collect())
            .unwrap_or_default(),
        _ => prev.cloned().unwrap_or_default(),
    });
    let sign_out = move || {
        store_token(None);
        signed_in.set(false);
    };
    Effect::new(move |_| {
        reload.track();
        leptos::task::spawn_local(async move {
            let answer = api::call_as("GET", "/api/me", None, token()).await;
            if let Err(e) = &answer
                && e.status == 401
            {
                // Expired or refused: sign in again.
                sign_out();
                return;
            }
            me.set(Some(answer));
        });
    });
    if let Ok(handle) = set_interval_with_handle(
        move || reload.update(|n| *n += 1),
        std::time::Duration::from_millis(POLL_MS),
    ) {
        on_cleanup(move || handle.clear());
    }
    let change = move |method: &'static str, done: &'static str| {
        leptos::task::spawn_local(async move {
            message.set(Some(
                match api::call_as(method, "/api/me/activation", None, token()).await {
                    Ok(v) => {
                        me.set(Some(Ok(v)));
                        Ok(done.to_owned())
                    }
                    Err(e) => Err(e.to_string()),
                },
            ));
        });
    };
    view! {
        <section aria-labelledby="me-title">
            <h2 id="me-title">"Your phones and Teams"</h2>
            <div class="toolbar">
                <span id="me-upn">{move || match me.get() {
                    Some(Ok(v)) => format!("Signed in as {}", text_of(&v, "upn")),
                    _ => String::new(),
                }}</span>
                <button type="button" on:click=move |_| reload.update(|n| *n += 1)>"Refresh"</button>
                <button type="button" on:click=move |_| sign_out()>"Sign out"</button>
            </div>
            <p aria-live="polite">{move || outcome(message.get())}</p>
            {move || match me.get() {
                None => view! { <p>"Loading…"</p> }.into_any(),
                Some(Err(e)) => error_line(&e),
                Some(Ok(v)) => {
                    let accounts = v["accounts"].as_array().cloned().unwrap_or_default();
                    if accounts.is_empty() {
                        return view! {
                            <p id="no-account">"No SIP account carries your sign-in name yet; ask \
                                your administrator to create one with your UPN."</p>
                        }.into_any();
                    }
                    let any_active = accounts.iter().any(|a| a["activated"] == true);
                    // Activation is the gateway's own sign-in (it keeps the refresh token).
                    let activate = format!("/activate?login_hint={}", encode(&text_of(&v, "upn")));
                    view! {
                        <div class="toolbar">
                            <a role="button" class="button primary" href=activate>
                                {if any_active { "Re-activate for Teams" } else { "Activate for Teams" }}
                            </a>
                            {any_active.then(|| view! {
                                <button type="button"
                                    on:click=move |_| change("DELETE", "No longer activated for Teams.")>
                                    "Deactivate"
                                </button>
                            })}
                        </div>
                        {accounts.into_iter().map(|a| view! { <Account account=a /> }).collect_view()}
                    }.into_any()
                }
            }}
        </section>
        <Show when=move || !aors.get().is_empty()>
            <WebPhone accounts=aors devices=reload />
        </Show>
    }
}

/// The `sip:` AoR of an account of `GET /api/me`.
fn aor_of(account: &Value) -> String {
    format!(
        "sip:{}@{}",
        text_of(account, "username"),
        text_of(account, "domain")
    )
}

/// One SIP account: activation, number, devices.
#[component]
fn Account(account: Value) -> impl IntoView {
    let aor = aor_of(&account);
    let bindings = account["devices"].as_array().cloned().unwrap_or_default();
    let activated = account["activated"] == true;
    let needs_reactivation = account["needs_reactivation"] == true;
    let registered = !bindings.is_empty();
    let title_id = format!("account-{}", text_of(&account, "id"));
    let labelled_by = title_id.clone();
    let (aor_attr, heading) = (aor.clone(), aor.clone());
    view! {
        <article class="account" aria-labelledby=labelled_by data-aor=aor_attr>
            <h3 id=title_id>{heading}</h3>
            <dl class="cards">
                <div><dt>"Teams"</dt>
                    <dd class="activation">{match (activated, needs_reactivation) {
                        (true, true) => "Needs re-activation",
                        (true, false) => "Activated",
                        _ => "Not activated",
                    }}</dd></div>
                <div><dt>"Phone number"</dt><dd>{match text_of(&account, "phone_number") {
                    n if n.is_empty() => "none".to_owned(),
                    n => n,
                }}</dd></div>
                <div><dt>"Registered"</dt>
                    <dd class="registered">{if registered {
                        format!("yes, {} device(s)", bindings.len())
                    } else {
                        "no".to_owned()
                    }}</dd></div>
            </dl>
            <h4>"Devices"</h4>
            <div class="devices">{devices(&aor, &bindings)}</div>
        </article>
    }
}

/// `s` percent-encoded for a query value (unreserved characters kept).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
