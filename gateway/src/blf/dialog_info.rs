//! The `application/dialog-info+xml` body of a dialog-package NOTIFY (RFC 4235 §4): a full-state
//! document of the watched user's dialogs, one `<dialog>` per call with its direction and state.

use std::fmt::Write;

use crate::calls::DialogIds;

/// The body's content type (RFC 4235 §4).
pub const CONTENT_TYPE: &str = "application/dialog-info+xml";

/// The state of one dialog as a busy-lamp field shows it (RFC 4235 §3.7.1, the coarse states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    /// Ringing (the user is called) or being set up.
    Early,
    /// Answered.
    Confirmed,
    /// Over (told once, then left out).
    Terminated,
}

impl DialogState {
    fn as_str(self) -> &'static str {
        match self {
            DialogState::Early => "early",
            DialogState::Confirmed => "confirmed",
            DialogState::Terminated => "terminated",
        }
    }
}

/// One dialog of the watched user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialogEntry {
    /// The gateway's call number (the `id`; unique on this server, which is the notifier).
    pub call: u64,
    /// The user placed the call (`initiator`); else they were called (`recipient`).
    pub initiator: bool,
    /// Where the dialog is.
    pub state: DialogState,
    /// While early: the ringing device's dialog and the caller, for a pickup.
    pub dialog: Option<DialogIds>,
}

/// The document: `entity` is the watched AoR, `version` the subscription's counter. An early
/// dialog with its identifiers carries them as a pickup needs them (RFC 4235 §4.1.6: `call-id`,
/// `local-tag` the ringing device's, `remote-tag` the gateway's; a phone builds its
/// `Replaces: call-id;to-tag=…;from-tag=…;early-only` from them), with the watched AoR as the
/// `<local>` identity and the caller as the `<remote>` one. Confirmed and terminated dialogs
/// show state and direction only: a lamp needs no more, and nobody picks those up.
pub fn document(entity: &str, version: u32, dialogs: &[DialogEntry]) -> String {
    let mut s = String::with_capacity(200 + 120 * dialogs.len());
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // Writing into a String cannot fail.
    let _ = writeln!(
        s,
        "<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{version}\" \
         state=\"full\" entity=\"{}\">",
        escape(entity)
    );
    for d in dialogs {
        let direction = if d.initiator {
            "initiator"
        } else {
            "recipient"
        };
        let ids = d.dialog.as_ref().filter(|_| d.state == DialogState::Early);
        let _ = write!(s, "  <dialog id=\"call-{}\"", d.call);
        if let Some(ids) = ids {
            let _ = write!(
                s,
                " call-id=\"{}\" local-tag=\"{}\" remote-tag=\"{}\"",
                escape(&ids.call_id),
                escape(&ids.local_tag),
                escape(&ids.remote_tag)
            );
        }
        let _ = writeln!(
            s,
            " direction=\"{direction}\">\n    <state>{}</state>",
            d.state.as_str()
        );
        if let Some(ids) = ids {
            let _ = writeln!(
                s,
                "    <local><identity>{}</identity></local>",
                escape(entity)
            );
            let display = ids
                .remote_name
                .as_deref()
                .map(|n| format!(" display=\"{}\"", escape(n)))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "    <remote><identity{display}>{}</identity></remote>",
                escape(&ids.remote)
            );
        }
        s.push_str("  </dialog>\n");
    }
    s.push_str("</dialog-info>\n");
    s
}

/// `value` as XML attribute or text content: the five predefined entities, and control
/// characters (which XML 1.0 cannot carry) left out.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_user_is_an_empty_full_document() {
        let doc = document("sip:bob@csps.local", 0, &[]);
        assert!(doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
        assert!(doc.contains(
            "<dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"0\" \
             state=\"full\" entity=\"sip:bob@csps.local\">"
        ));
        assert!(!doc.contains("<dialog "));
        assert!(doc.ends_with("</dialog-info>\n"));
    }

    #[test]
    fn each_dialog_has_its_id_direction_and_state() {
        let doc = document(
            "sip:bob@csps.local",
            3,
            &[
                DialogEntry {
                    call: 7,
                    initiator: false,
                    state: DialogState::Early,
                    dialog: None,
                },
                DialogEntry {
                    call: 9,
                    initiator: true,
                    state: DialogState::Terminated,
                    dialog: None,
                },
            ],
        );
        assert!(doc.contains("version=\"3\""));
        assert!(doc.contains(
            "<dialog id=\"call-7\" direction=\"recipient\">\n    <state>early</state>\n  </dialog>"
        ));
        assert!(doc.contains(
            "<dialog id=\"call-9\" direction=\"initiator\">\n    <state>terminated</state>"
        ));
    }

    #[test]
    fn markup_in_an_entity_is_escaped() {
        let doc = document("sip:a\"b<c>&'d\u{1}@x", 0, &[]);
        assert!(doc.contains("entity=\"sip:a&quot;b&lt;c&gt;&amp;&apos;d@x\""));
    }

    /// A ringing dialog with its identifiers carries them as RFC 4235 §4.1.6 attributes, the
    /// watched AoR as local identity and the caller (with display name) as remote identity,
    /// all escaped; the same dialog confirmed shows its state only.
    #[test]
    fn an_early_dialog_carries_what_a_pickup_names() {
        let ids = DialogIds {
            call_id: "b-1@gw".into(),
            local_tag: "dev&1".into(),
            remote_tag: "gw\"2".into(),
            remote: "sip:alice@csps.local".into(),
            remote_name: Some("Alice <A&B>".into()),
        };
        let entry = |state| DialogEntry {
            call: 4,
            initiator: false,
            state,
            dialog: Some(ids.clone()),
        };
        let doc = document("sip:bob@csps.local", 1, &[entry(DialogState::Early)]);
        assert!(
            doc.contains(
                "<dialog id=\"call-4\" call-id=\"b-1@gw\" local-tag=\"dev&amp;1\" \
                 remote-tag=\"gw&quot;2\" direction=\"recipient\">\n    <state>early</state>\n    \
                 <local><identity>sip:bob@csps.local</identity></local>\n    \
                 <remote><identity display=\"Alice &lt;A&amp;B&gt;\">sip:alice@csps.local\
                 </identity></remote>\n  </dialog>"
            ),
            "{doc}"
        );
        let doc = document("sip:bob@csps.local", 2, &[entry(DialogState::Confirmed)]);
        assert!(
            doc.contains(
                "<dialog id=\"call-4\" direction=\"recipient\">\n    <state>confirmed</state>\n  </dialog>"
            ),
            "{doc}"
        );
        let anonymous = DialogEntry {
            dialog: Some(DialogIds {
                remote_name: None,
                ..ids.clone()
            }),
            ..entry(DialogState::Early)
        };
        let doc = document("sip:bob@csps.local", 3, &[anonymous]);
        assert!(doc.contains("<remote><identity>sip:alice@csps.local</identity></remote>"));
    }
}
