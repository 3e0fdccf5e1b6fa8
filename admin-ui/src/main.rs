//! The csps web console: a Leptos client-side app (built by Trunk, served by the gateway at `/`).
//! Owns the page shell, the path-based navigation (history API; the gateway answers every
//! non-API path with `index.html`), the sign-in state and the live event feed the pages share.
//! The pages live in [`pages`], the end user's self-service page in [`me`] (with its web phone,
//! [`webphone`]); REST calls in
//! [`api`]; the OAuth sign-in in [`auth`].

mod api;
mod auth;
mod events;
mod me;
mod media;
mod pages;
mod webphone;

use leptos::prelude::*;

/// What every page can reach through the context.
#[derive(Clone, Copy)]
pub struct Shell {
    /// The current path (`/`, `/config`, …).
    pub path: RwSignal<String>,
    /// Whether a bearer token is held.
    pub signed_in: RwSignal<bool>,
    /// The live event feed.
    pub feed: events::Feed,
}

impl Shell {
    /// Goes to `to` without reloading.
    pub fn navigate(&self, to: &str) {
        if let Some(history) = web_sys::window().and_then(|w| w.history().ok()) {
            let _ = history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(to));
        }
        self.path.set(to.to_owned());
    }

    /// Forgets the token and shows the sign-in page.
    pub fn sign_out(&self) {
        api::store_token(None);
        self.signed_in.set(false);
        self.navigate("/");
    }
}

/// The shell from the context.
pub fn shell() -> Shell {
    expect_context::<Shell>()
}

fn current_path() -> String {
    web_sys::window()
        .and_then(|w| w.location().pathname().ok())
        .unwrap_or_else(|| "/".into())
}

/// The navigation: path and label.
const PAGES: &[(&str, &str)] = &[
    ("/", "Dashboard"),
    ("/config", "Configuration"),
    ("/trusted-ips", "Trusted IPs"),
    ("/registrations", "Registrations"),
    ("/calls", "Calls"),
    ("/users", "Users"),
    ("/policies", "Policies"),
    ("/audit", "Audit log"),
];

#[component]
fn NavLink(to: &'static str, label: &'static str) -> impl IntoView {
    let s = shell();
    let current = move || s.path.get() == to;
    view! {
        <a
            href=to
            aria-current=move || if current() { Some("page") } else { None }
            on:click=move |ev: web_sys::MouseEvent| {
                if !(ev.ctrl_key() || ev.meta_key() || ev.shift_key()) {
                    ev.prevent_default();
                    s.navigate(to);
                }
            }
        >
            {label}
        </a>
    }
}

#[component]
fn App() -> impl IntoView {
    let s = Shell {
        path: RwSignal::new(current_path()),
        signed_in: RwSignal::new(api::stored_token().is_some()),
        feed: events::Feed::new(),
    };
    provide_context(s);
    let handle = window_event_listener(leptos::ev::popstate, move |_| s.path.set(current_path()));
    on_cleanup(move || handle.remove());
    // One event stream while signed in; it stops when the token goes.
    let started = StoredValue::new(false);
    Effect::new(move |_| {
        if s.signed_in.get() && !started.get_value() {
            started.set_value(true);
            s.feed.run(move || {
                let alive = s.signed_in.get_untracked();
                if !alive {
                    started.set_value(false);
                }
                alive
            });
        }
    });
    let page = move || {
        let path = s.path.get();
        if path == auth::CALLBACK {
            return view! { <pages::Callback /> }.into_any();
        }
        // The end user's page needs no admin sign-in (it has its own).
        if path == me::PATH {
            return view! { <me::Me /> }.into_any();
        }
        if !s.signed_in.get() {
            return view! { <pages::SignIn /> }.into_any();
        }
        match path.as_str() {
            "/config" => view! { <pages::Config /> }.into_any(),
            "/trusted-ips" => view! { <pages::TrustedIps /> }.into_any(),
            "/registrations" => view! { <pages::Registrations /> }.into_any(),
            "/calls" => view! { <pages::Calls /> }.into_any(),
            "/users" => view! { <pages::Users /> }.into_any(),
            "/audit" => view! { <pages::Audit /> }.into_any(),
            "/policies" => view! { <pages::Policies /> }.into_any(),
            "/" => view! { <pages::Dashboard /> }.into_any(),
            _ => view! { <p role="alert">"No page at " {path}</p> }.into_any(),
        }
    };
    view! {
        <header>
            <h1>"csps"</h1>
            <Show when=move || s.signed_in.get()>
                <nav aria-label="Pages">
                    {PAGES.iter().map(|(to, label)| view! { <NavLink to=to label=label /> }).collect_view()}
                </nav>
                <span class="live" title="Live updates">
                    {move || if s.feed.connected.get() { "● live" } else { "○ connecting" }}
                </span>
                <button type="button" on:click=move |_| s.sign_out()>"Sign out"</button>
            </Show>
        </header>
        <main id="main">{page}</main>
    }
}

fn main() {
    console_panic_hook();
    // Remove the "loading" placeholder index.html shows until the app starts.
    if let Some(el) = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id("loading"))
    {
        el.remove();
    }
    mount_to_body(App);
}

/// Panics end up in the browser console rather than vanishing.
fn console_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&info.to_string().into());
    }));
}
