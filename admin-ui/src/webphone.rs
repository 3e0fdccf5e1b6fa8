//! The web phone on the self-service page: one browser peer connection (audio only, sendrecv)
//! that the gateway terminates, registered as a device of the chosen account while it runs
//! (`/api/me/webphone`, see WEBPHONE_API in the repository's notes). The browser sends its
//! complete offer (no trickle ICE), plays the remote audio in `<audio id="webphone-remote">`,
//! and follows the phone's state through its event stream; calling, answering and hanging up
//! are REST calls. The state line (`id="webphone-state"`) carries the raw state in `data-state`
//! for tests. One web phone per page: the running one lives outside the component, so leaving
//! the page can still stop it.

use std::cell::RefCell;

use leptos::prelude::*;
use serde_json::{Value, json};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AbortController, HtmlMediaElement, MediaStream, MediaStreamConstraints, MediaStreamTrack,
    RtcIceGatheringState, RtcPeerConnection, RtcSdpType, RtcSessionDescriptionInit, RtcTrackEvent,
};

use crate::api;
use crate::events::{read_stream, sleep_ms};
use crate::me::token;
use crate::pages::{outcome, text_of};

/// The id of the element that plays the far end.
const REMOTE_AUDIO: &str = "webphone-remote";

/// How long the browser may gather ICE candidates before the offer goes as it is (ms).
const GATHER_MS: i32 = 5000;

/// The running web phone: the gateway's id for it and what the browser holds for it.
struct Session {
    id: String,
    pc: RtcPeerConnection,
    mic: MediaStream,
    /// Ends the event stream when the phone stops.
    abort: AbortController,
    /// Kept alive while the peer connection may call it.
    _on_track: Closure<dyn FnMut(RtcTrackEvent)>,
}

impl Session {
    /// Closes the peer connection, releases the microphone and silences the remote audio.
    fn close(&self) {
        self.abort.abort();
        self.pc.set_ontrack(None);
        self.pc.close();
        stop_tracks(&self.mic);
        if let Some(audio) = remote_audio() {
            audio.set_src_object(None);
        }
    }

    fn path(&self, action: &str) -> String {
        phone_path(&self.id, action)
    }
}

thread_local! {
    /// The page's web phone, if one runs.
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

/// `/api/me/webphone/{id}` with `action` appended (`""`, `"/call"`, …).
fn phone_path(id: &str, action: &str) -> String {
    format!("/api/me/webphone/{}{action}", api::encode(id))
}

/// Whether `id` is the running phone.
fn is_current(id: &str) -> bool {
    SESSION.with(|s| s.borrow().as_ref().is_some_and(|s| s.id == id))
}

/// The running phone's path for `action`.
fn current_path(action: &str) -> Option<String> {
    SESSION.with(|s| s.borrow().as_ref().map(|s| s.path(action)))
}

/// Takes the running phone out (closed) and says whether there was one.
fn close_session() -> Option<String> {
    let session = SESSION.with(|s| s.borrow_mut().take())?;
    session.close();
    Some(session.path(""))
}

fn remote_audio() -> Option<HtmlMediaElement> {
    web_sys::window()?
        .document()?
        .get_element_by_id(REMOTE_AUDIO)?
        .dyn_into()
        .ok()
}

fn stop_tracks(stream: &MediaStream) {
    for track in stream.get_tracks() {
        if let Ok(track) = track.dyn_into::<MediaStreamTrack>() {
            track.stop();
        }
    }
}

/// One line for a failed browser call.
fn js_error(what: &str, e: JsValue) -> String {
    let text = js_sys::Reflect::get(&e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    format!("{what}: {text}")
}

/// A state of our own (`off`, `starting`), keeping how the last call ended.
fn local_state(state: &str, last: &Value) -> Value {
    json!({"state": state, "ended": last.get("ended").cloned().unwrap_or(Value::Null)})
}

/// The far end as a person reads it: `bob@csps.local`, `+14255550100`, or with a display
/// name `Bob (bob@csps.local)`.
fn peer_name(v: &Value) -> String {
    let peer = text_of(v, "peer");
    let (name, uri) = match peer.split_once('<') {
        Some((name, rest)) => (name.trim().trim_matches('"'), rest.trim_end_matches('>')),
        None => ("", peer.as_str()),
    };
    let uri = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"))
        .unwrap_or(uri);
    if name.is_empty() {
        uri.to_owned()
    } else {
        format!("{name} ({uri})")
    }
}

/// The state line's text.
fn describe(v: &Value) -> String {
    let peer = peer_name(v);
    let state = text_of(v, "state");
    let line = match state.as_str() {
        "off" => "Off".to_owned(),
        "starting" | "connecting" => "Connecting…".to_owned(),
        "idle" => "Ready".to_owned(),
        "calling" => format!("Calling {peer}…"),
        "ringing" => format!("Ringing {peer}…"),
        "incoming" => format!("Incoming call from {peer}"),
        "in-call" => format!("In call with {peer}"),
        "held" => format!("On hold: {peer}"),
        "closed" => "Closed by the gateway".to_owned(),
        other => other.to_owned(),
    };
    match v.get("ended").and_then(Value::as_str) {
        Some(ended) if matches!(state.as_str(), "off" | "idle" | "closed") => {
            format!("{line} · last call: {ended}")
        }
        _ => line,
    }
}

/// Starts a web phone for `aor`: microphone, peer connection, the complete offer to the
/// gateway, its answer. The phone is the running one when this returns `Ok`.
async fn start(aor: String, state: RwSignal<Value>) -> Result<(), String> {
    let window = web_sys::window().ok_or("no window")?;
    let devices = window.navigator().media_devices().map_err(
        |_| "this browser gives no microphone access (the page needs https or localhost)",
    )?;
    let constraints = MediaStreamConstraints::new();
    constraints.set_audio(&JsValue::TRUE);
    let mic: MediaStream = JsFuture::from(
        devices
            .get_user_media_with_constraints(&constraints)
            .map_err(|e| js_error("microphone", e))?,
    )
    .await
    .map_err(|e| js_error("microphone", e))?
    .dyn_into()
    .map_err(|_| "microphone: not a media stream")?;
    let pc = match RtcPeerConnection::new() {
        Ok(pc) => pc,
        Err(e) => {
            stop_tracks(&mic);
            return Err(js_error("WebRTC", e));
        }
    };
    let on_track = Closure::<dyn FnMut(RtcTrackEvent)>::new(|ev: RtcTrackEvent| {
        let stream = ev
            .streams()
            .get(0)
            .dyn_into::<MediaStream>()
            .ok()
            .or_else(|| {
                // An answer without a=msid: the track comes without a stream.
                let s = MediaStream::new().ok()?;
                s.add_track(&ev.track());
                Some(s)
            });
        if let Some(audio) = remote_audio() {
            audio.set_src_object(stream.as_ref());
            if let Ok(playing) = audio.play() {
                wasm_bindgen_futures::spawn_local(async move {
                    let _ = JsFuture::from(playing).await;
                });
            }
        }
    });
    pc.set_ontrack(Some(on_track.as_ref().unchecked_ref()));
    let answer = match offer(&pc, &mic).await {
        Ok(sdp) => {
            let body = json!({"aor": aor, "sdp": sdp});
            api::call_as("POST", "/api/me/webphone", Some(&body), token())
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    let answer = match answer {
        Ok(v) => v,
        Err(e) => {
            pc.close();
            stop_tracks(&mic);
            return Err(e);
        }
    };
    let id = text_of(&answer, "id");
    let session = Session {
        id: id.clone(),
        pc: pc.clone(),
        mic,
        abort: AbortController::new().map_err(|e| js_error("abort controller", e))?,
        _on_track: on_track,
    };
    let signal = session.abort.signal();
    if let Some(old) = SESSION.with(|s| s.borrow_mut().replace(session)) {
        old.close();
    }
    let remote = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
    remote.set_sdp(&text_of(&answer, "sdp"));
    if let Err(e) = JsFuture::from(pc.set_remote_description(&remote)).await {
        // The gateway holds a phone the browser cannot use: let it go.
        if let Some(path) = close_session() {
            let _ = api::call_as("DELETE", &path, None, token()).await;
        }
        return Err(js_error("the gateway's answer", e));
    }
    state.set(answer);
    follow(id, signal, state);
    Ok(())
}

/// Adds the microphone, makes the offer and waits for ICE gathering to complete; the offer's
/// SDP with every candidate.
async fn offer(pc: &RtcPeerConnection, mic: &MediaStream) -> Result<String, String> {
    let track: MediaStreamTrack = mic
        .get_audio_tracks()
        .get(0)
        .dyn_into()
        .map_err(|_| "the microphone gave no audio track")?;
    pc.add_track_0(&track, mic);
    let offer: RtcSessionDescriptionInit = JsFuture::from(pc.create_offer())
        .await
        .map_err(|e| js_error("offer", e))?
        .unchecked_into();
    JsFuture::from(pc.set_local_description(&offer))
        .await
        .map_err(|e| js_error("offer", e))?;
    let mut waited = 0;
    while pc.ice_gathering_state() != RtcIceGatheringState::Complete && waited < GATHER_MS {
        sleep_ms(50).await;
        waited += 50;
    }
    pc.local_description()
        .map(|d| d.sdp())
        .ok_or_else(|| "the browser made no offer".to_owned())
}

/// Shows the phone's states from its event stream while it is the running one; when the stream
/// ends, asks once (gone: the phone is closed) and follows again.
fn follow(id: String, abort: web_sys::AbortSignal, state: RwSignal<Value>) {
    leptos::task::spawn_local(async move {
        let events = phone_path(&id, "/events");
        while is_current(&id) {
            let shown = |e: crate::events::Event| {
                if is_current(&id) {
                    apply(e.data, state);
                }
            };
            let _ = read_stream(&events, token(), Some(&abort), || (), shown).await;
            if !is_current(&id) {
                return;
            }
            match api::call_as("GET", &phone_path(&id, ""), None, token()).await {
                Ok(v) => apply(v, state),
                Err(e) if e.status == 404 => {
                    close_session();
                    state.update(|v| *v = local_state("closed", v));
                }
                Err(_) => {}
            }
            sleep_ms(1000).await;
        }
    });
}

/// Shows a state from the gateway; a closed phone is closed here too.
fn apply(v: Value, state: RwSignal<Value>) {
    if v["state"] == "closed" {
        close_session();
    }
    state.set(v);
}

/// Stops the running phone (the gateway unregisters it).
async fn stop() {
    if let Some(path) = close_session() {
        let _ = api::call_as("DELETE", &path, None, token()).await;
    }
}

/// The "Web phone" section for the signed-in user's accounts (`sip:` AoRs); bumps `devices`
/// when the phone comes up or stops, so the page shows its registration.
#[component]
pub fn WebPhone(accounts: Memo<Vec<String>>, devices: RwSignal<u32>) -> impl IntoView {
    let state = RwSignal::new(json!({"state": "off"}));
    let message = RwSignal::new(None::<Result<String, String>>);
    let chosen = RwSignal::new(String::new());
    let to = RwSignal::new(String::new());
    // Leaving the page (or signing out) stops the phone.
    on_cleanup(|| leptos::task::spawn_local(stop()));
    let raw = move || text_of(&state.get(), "state");
    Effect::new(move |before: Option<String>| {
        let now = raw();
        let came_up = now == "idle" && matches!(before.as_deref(), Some("connecting" | "starting"));
        if came_up || (now == "off" && before.as_deref().is_some_and(|b| b != "starting")) {
            devices.update(|n| *n += 1);
        }
        now
    });
    let on = move || !matches!(raw().as_str(), "off" | "starting" | "closed");
    let aor = move || {
        let list = accounts.get();
        let pick = chosen.get();
        if list.contains(&pick) {
            pick
        } else {
            list.first().cloned().unwrap_or_default()
        }
    };
    let start_phone = move |_| {
        let aor = aor();
        message.set(None);
        state.update(|v| *v = local_state("starting", v));
        leptos::task::spawn_local(async move {
            if let Err(e) = start(aor, state).await {
                state.update(|v| *v = local_state("off", v));
                message.set(Some(Err(e)));
            }
        });
    };
    let stop_phone = move |_| {
        message.set(None);
        leptos::task::spawn_local(async move {
            stop().await;
            state.update(|v| *v = local_state("off", v));
        });
    };
    // A call action on the running phone, or why not. The new state comes by the event stream:
    // the answer's state may already be older than the stream's (a callee that answers at once).
    let act = move |action: &'static str, body: Option<Value>| {
        let Some(path) = current_path(action) else {
            return;
        };
        message.set(None);
        leptos::task::spawn_local(async move {
            if let Err(e) = api::call_as("POST", &path, body.as_ref(), token()).await {
                message.set(Some(Err(e.to_string())));
            }
        });
    };
    let dial = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let number = to.get_untracked().trim().to_owned();
        if number.is_empty() {
            message.set(Some(Err("Enter a number or SIP address first.".into())));
            return;
        }
        act("/call", Some(json!({"to": number})));
    };
    view! {
        <section aria-labelledby="webphone-title" class="webphone">
            <h3 id="webphone-title">"Web phone"</h3>
            <p class="muted">"Call and be called in this browser with one of your accounts, for \
                instance to try a desk phone. It rings together with your other phones while it \
                runs."</p>
            <p id="webphone-state" role="status" aria-live="polite" data-state=raw>
                {move || describe(&state.get())}
            </p>
            <p aria-live="polite">{move || outcome(message.get())}</p>
            {move || (!on()).then(|| {
                let many = accounts.get().len() > 1;
                view! {
                    <div class="toolbar">
                        {many.then(|| view! {
                            <label for="webphone-account">"Account"</label>
                            <select id="webphone-account"
                                on:change=move |ev| chosen.set(event_target_value(&ev))>
                                {accounts.get().into_iter().map(|a| {
                                    let (a2, value) = (a.clone(), a.clone());
                                    view! { <option value=value selected=move || aor() == a2>{a}</option> }
                                }).collect_view()}
                            </select>
                        })}
                        <button type="button" class="primary" on:click=start_phone
                            disabled=move || raw() == "starting">
                            "Start web phone"
                        </button>
                    </div>
                }
            })}
            {move || on().then(|| view! {
                <p class="muted">"Web phone of " {move || text_of(&state.get(), "aor")}</p>
                {move || match raw().as_str() {
                    "idle" => view! {
                        <form class="inline" on:submit=dial>
                            <label for="webphone-to">"Number or SIP address"</label>
                            <input id="webphone-to" type="text" autocomplete="off"
                                inputmode="tel" prop:value=move || to.get()
                                on:input=move |ev| to.set(event_target_value(&ev)) />
                            <button type="submit">"Call"</button>
                        </form>
                    }.into_any(),
                    "incoming" => view! {
                        <div class="toolbar">
                            <button type="button" class="primary answer"
                                on:click=move |_| act("/answer", None)>"Answer"</button>
                            <button type="button" on:click=move |_| act("/hangup", None)>
                                "Decline"
                            </button>
                        </div>
                    }.into_any(),
                    "in-call" => view! {
                        <div class="toolbar">
                            <button type="button" on:click=move |_| act("/hold", None)>"Hold"</button>
                            <button type="button" class="hangup"
                                on:click=move |_| act("/hangup", None)>"Hang up"</button>
                        </div>
                    }.into_any(),
                    "held" => view! {
                        <div class="toolbar">
                            <button type="button" class="primary"
                                on:click=move |_| act("/resume", None)>"Resume"</button>
                            <button type="button" class="hangup"
                                on:click=move |_| act("/hangup", None)>"Hang up"</button>
                        </div>
                    }.into_any(),
                    "calling" | "ringing" => view! {
                        <div class="toolbar">
                            <button type="button" class="hangup"
                                on:click=move |_| act("/hangup", None)>"Hang up"</button>
                        </div>
                    }.into_any(),
                    _ => ().into_any(),
                }}
                <div class="toolbar">
                    <button type="button" on:click=stop_phone>"Stop web phone"</button>
                </div>
            })}
            <audio id=REMOTE_AUDIO autoplay></audio>
        </section>
    }
}
