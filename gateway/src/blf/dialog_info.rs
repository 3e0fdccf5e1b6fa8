//! The `application/dialog-info+xml` body of a dialog-package NOTIFY (RFC 4235 §4): a full-state
//! document of the watched user's dialogs, one `<dialog>` per call with its direction and state.

use std::fmt::Write;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialogEntry {
    /// The gateway's call number (the `id`; unique on this server, which is the notifier).
    pub call: u64,
    /// The user placed the call (`initiator`); else they were called (`recipient`).
    pub initiator: bool,
    /// Where the dialog is.
    pub state: DialogState,
}

/// The document: `entity` is the watched AoR, `version` the subscription's counter. Neither the
/// other party nor the legs' Call-IDs are shown: a lamp needs the state and direction only, and
/// the B2BUA's Call-IDs without the dialog's tags would not serve a pickup anyway.
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
        let _ = writeln!(
            s,
            "  <dialog id=\"call-{}\" direction=\"{direction}\">\n    <state>{}</state>\n  </dialog>",
            d.call,
            d.state.as_str()
        );
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
                },
                DialogEntry {
                    call: 9,
                    initiator: true,
                    state: DialogState::Terminated,
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
}
