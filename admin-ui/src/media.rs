//! What the Calls page shows of a running call's media: one table per call, one row per leg
//! (the caller's first; a conference room has more), read from a leg of `GET /api/calls`
//! (`codec, srtp, music_on_hold, counters:{…}`). Every field is optional here: an older server
//! or a leg without counters shows "–", never an error. The rows follow the call's value in place
//! (fine-grained), so the page's periodic refresh keeps focus and open details.

use leptos::prelude::*;
use serde_json::Value;

use crate::pages::{head, text_of};

/// What a missing or unreadable field shows.
pub const NONE: &str = "–";

/// The `dropped_*` counters with what each means, as the breakdown names them.
const DROPPED: [(&str, &str); 4] = [
    ("dropped_unexpected", "from an unexpected address"),
    ("dropped_malformed", "not RTP/RTCP"),
    ("dropped_unsent", "could not be sent on"),
    ("dropped_srtp", "failed SRTP authentication or replay check"),
];

/// A counter of a leg, when the server gave a readable one.
fn counter(leg: &Value, name: &str) -> Option<u64> {
    leg.get("counters")?.get(name)?.as_u64()
}

/// The leg's codec (`PCMU/8000`, `opus/48000`), when known.
pub fn codec(leg: &Value) -> Option<&str> {
    leg.get("codec")?.as_str().filter(|c| !c.is_empty())
}

/// "yes" / "no" for a boolean field, "–" otherwise.
pub fn yes_no(leg: &Value, name: &str) -> &'static str {
    match leg.get(name).and_then(Value::as_bool) {
        Some(true) => "yes",
        Some(false) => "no",
        None => NONE,
    }
}

/// RTP packets received from the leg.
pub fn received(leg: &Value) -> String {
    counter(leg, "rtp_packets").map_or_else(|| NONE.into(), |n| n.to_string())
}

/// Packets lost on the way from the leg, with their share of those expected (received + lost).
pub fn lost(leg: &Value) -> String {
    let Some(lost) = counter(leg, "rtp_lost") else {
        return NONE.into();
    };
    match counter(leg, "rtp_packets").map(|r| r.saturating_add(lost)) {
        Some(expected) if expected > 0 => {
            format!("{lost} ({:.1} %)", lost as f64 * 100.0 / expected as f64)
        }
        _ => lost.to_string(),
    }
}

/// The interarrival jitter of what the leg sends, in ms, when the server measures it.
pub fn jitter(leg: &Value) -> String {
    millis(leg, "jitter_ms").map_or_else(|| NONE.into(), |ms| format!("{ms:.1} ms"))
}

/// A counter in milliseconds of a leg, when the server gave a readable one.
fn millis(leg: &Value, name: &str) -> Option<f64> {
    leg.get("counters")?
        .get(name)?
        .as_f64()
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
}

/// Packets dropped from the leg (the sum of the `dropped_*` counters the server gave) and the
/// breakdown, one counter per line.
pub fn dropped(leg: &Value) -> (String, String) {
    let known: Vec<(u64, &str)> = DROPPED
        .iter()
        .filter_map(|(name, what)| counter(leg, name).map(|n| (n, *what)))
        .collect();
    if known.is_empty() {
        return (NONE.into(), "No drop counters from the server.".into());
    }
    let total = known
        .iter()
        .fold(0u64, |sum, (n, _)| sum.saturating_add(*n));
    let breakdown = known
        .iter()
        .map(|(n, what)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join("\n");
    (total.to_string(), breakdown)
}

/// The distinct codecs of a call's legs when they differ (the gateway transcodes), else `None`.
pub fn transcoding(legs: &[Value]) -> Option<String> {
    let mut codecs: Vec<&str> = Vec::new();
    for c in legs.iter().filter_map(codec) {
        if !codecs.contains(&c) {
            codecs.push(c);
        }
    }
    (codecs.len() > 1).then(|| codecs.join(" ↔ "))
}

/// An ended call's media as its record keeps it (`media: [{party, codec, rtp_packets,
/// rtp_lost, jitter_max_ms}]`, caller's leg first): one line per leg, the highest jitter when
/// measured, "–" for a record without it (a conference room, an older server).
pub fn record_summary(record: &Value) -> String {
    let Some(legs) = record.get("media").and_then(Value::as_array) else {
        return NONE.into();
    };
    if legs.is_empty() {
        return NONE.into();
    }
    legs.iter()
        .map(|leg| {
            let flat = serde_json::json!({ "counters": leg });
            let jitter = millis(&flat, "jitter_max_ms")
                .map(|ms| format!(", jitter up to {ms:.1} ms"))
                .unwrap_or_default();
            format!(
                "{}: {} received, {} lost{jitter}",
                codec(leg).unwrap_or(NONE),
                received(&flat),
                lost(&flat)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The legs of a call (none when the server gave no list).
pub fn legs(call: &Value) -> Vec<Value> {
    call.get("legs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The media table of call `id`; `call` is its current value (`None` once it is gone).
#[component]
pub fn CallMedia(id: String, call: Memo<Option<Value>>) -> impl IntoView {
    let all = Memo::new(move |_| call.get().map(|c| legs(&c)).unwrap_or_default());
    let count = Memo::new(move |_| all.with(Vec::len));
    let transcoded = Memo::new(move |_| all.with(|l| transcoding(l)));
    let caption = {
        let id = id.clone();
        move || match transcoded.get() {
            Some(codecs) => format!("Call {id}: transcoded ({codecs})"),
            None => format!("Call {id}"),
        }
    };
    let leg = move |i: usize| Memo::new(move |_| all.with(|l| l.get(i).cloned()));
    view! {
        <div class="scroll">
            <table class="media" id=format!("media-{id}") data-call=id.clone()>
                <caption>{caption}</caption>
                {head(&["Party", "Leg", "Codec", "SRTP", "Music on hold", "Packets received",
                    "Lost", "Jitter", "Dropped"])}
                <tbody>
                    <For each=move || 0..count.get() key=|i| *i let:i>
                        <LegRow index=i legs=count leg=leg(i) transcoded=transcoded />
                    </For>
                </tbody>
            </table>
        </div>
    }
}

/// One leg of the media table.
#[component]
fn LegRow(
    index: usize,
    legs: Memo<usize>,
    leg: Memo<Option<Value>>,
    transcoded: Memo<Option<String>>,
) -> impl IntoView {
    let field = move |f: fn(&Value) -> String| {
        move || leg.with(|l| l.as_ref().map_or_else(|| NONE.into(), f))
    };
    let party = move || {
        leg.with(|l| {
            let p = l.as_ref().map(|l| text_of(l, "party")).unwrap_or_default();
            if p.is_empty() { NONE.into() } else { p }
        })
    };
    // Caller and callee in a two-party call; a room's legs by their place.
    let kind = move || {
        let role = match (index, legs.get()) {
            (0, _) => "caller".to_owned(),
            (1, 2) => "callee".to_owned(),
            (i, _) => format!("leg {}", i + 1),
        };
        match leg.with(|l| l.as_ref().map(|l| text_of(l, "kind")).unwrap_or_default()) {
            k if k.is_empty() => role,
            k => format!("{role} ({k})"),
        }
    };
    let codec_text = field(|l| codec(l).unwrap_or(NONE).to_owned());
    let differs =
        move || transcoded.get().is_some() && leg.with(|l| l.as_ref().and_then(codec).is_some());
    let dropped_total =
        move || leg.with(|l| l.as_ref().map_or_else(|| NONE.into(), |l| dropped(l).0));
    let breakdown = move || leg.with(|l| l.as_ref().map_or_else(String::new, |l| dropped(l).1));
    view! {
        <tr data-leg=index>
            <th scope="row">{party}</th>
            <td class="kind">{kind}</td>
            <td class="codec" class:transcoded=differs>
                {codec_text}
                {move || differs().then(|| view! { <span class="tag">"transcoded"</span> })}
            </td>
            <td class="srtp">{field(|l| yes_no(l, "srtp").into())}</td>
            <td class="moh">{field(|l| yes_no(l, "music_on_hold").into())}</td>
            <td class="num packets">{field(received)}</td>
            <td class="num lost">{field(lost)}</td>
            <td class="num jitter">{field(jitter)}</td>
            <td class="num dropped">
                <details>
                    <summary title=breakdown>{dropped_total}</summary>
                    <pre class="breakdown">{breakdown}</pre>
                </details>
            </td>
        </tr>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_leg() {
        let leg = json!({"codec": "PCMU/8000", "srtp": false, "music_on_hold": true,
            "counters": {"rtp_packets": 990, "rtp_lost": 10, "jitter_ms": 2.34,
                "dropped_unexpected": 1, "dropped_malformed": 2, "dropped_unsent": 0, "dropped_srtp": 4}});
        assert_eq!(codec(&leg), Some("PCMU/8000"));
        assert_eq!(yes_no(&leg, "srtp"), "no");
        assert_eq!(yes_no(&leg, "music_on_hold"), "yes");
        assert_eq!(received(&leg), "990");
        assert_eq!(lost(&leg), "10 (1.0 %)");
        assert_eq!(jitter(&leg), "2.3 ms");
        let (total, breakdown) = dropped(&leg);
        assert_eq!(total, "7");
        assert!(breakdown.contains("4 failed SRTP"), "{breakdown}");
    }

    #[test]
    fn missing_and_bad_fields_show_a_dash() {
        for leg in [
            json!({}),
            json!(null),
            json!({"codec": 5, "srtp": "yes", "counters": null}),
            json!({"counters": {"rtp_packets": -1, "rtp_lost": "x", "jitter_ms": null}}),
        ] {
            assert_eq!(codec(&leg), None, "{leg}");
            assert_eq!(yes_no(&leg, "srtp"), NONE, "{leg}");
            assert_eq!(received(&leg), NONE, "{leg}");
            assert_eq!(lost(&leg), NONE, "{leg}");
            assert_eq!(jitter(&leg), NONE, "{leg}");
            assert_eq!(dropped(&leg).0, NONE, "{leg}");
        }
        assert!(legs(&json!({"legs": "none"})).is_empty());
        // Nothing received and nothing lost: no share to give.
        assert_eq!(
            lost(&json!({"counters": {"rtp_lost": 0, "rtp_packets": 0}})),
            "0"
        );
    }

    #[test]
    fn transcoding_is_named_when_the_codecs_differ() {
        let pcmu = json!({"codec": "PCMU/8000"});
        let opus = json!({"codec": "opus/48000"});
        assert_eq!(transcoding(&[pcmu.clone(), pcmu.clone()]), None);
        assert_eq!(transcoding(&[pcmu.clone(), json!({})]), None);
        assert_eq!(
            transcoding(&[pcmu, opus.clone(), opus]).as_deref(),
            Some("PCMU/8000 ↔ opus/48000")
        );
    }

    #[test]
    fn an_ended_calls_record_summary() {
        let record = json!({"media": [
            {"party": "sip:a@x", "codec": "PCMU/8000", "rtp_packets": 990, "rtp_lost": 10,
                "jitter_ms": 1.2, "jitter_max_ms": 12.34},
            {"party": "sip:b@x", "codec": null, "rtp_packets": 0, "rtp_lost": 0},
        ]});
        assert_eq!(
            record_summary(&record),
            "PCMU/8000: 990 received, 10 (1.0 %) lost, jitter up to 12.3 ms\n–: 0 received, 0 lost"
        );
        for r in [json!({}), json!({"media": []}), json!({"media": "x"})] {
            assert_eq!(record_summary(&r), NONE, "{r}");
        }
    }
}
