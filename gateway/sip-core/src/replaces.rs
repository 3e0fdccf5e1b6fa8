//! The Replaces header (RFC 3891): which dialog a new INVITE takes the place of, as it travels
//! in a Refer-To URI's header part (`?Replaces=…`, escaped) and as a header of its own.

use crate::uri::{Uri, percent_decode};

/// A dialog named by a Replaces value: `call-id;to-tag=…;from-tag=…[;early-only]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaces {
    /// The dialog's Call-ID.
    pub call_id: String,
    /// The tag the receiver of the Replaces holds as its own (RFC 3891 §3).
    pub to_tag: String,
    /// The tag of the receiver's peer.
    pub from_tag: String,
    /// Only an early dialog may be replaced.
    pub early_only: bool,
}

/// Why a Replaces value could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad Replaces: {0}")]
pub struct ReplacesError(pub &'static str);

impl Replaces {
    /// Reads a Replaces header value.
    pub fn parse(value: &str) -> Result<Replaces, ReplacesError> {
        let mut parts = value.trim().split(';');
        let call_id = parts.next().unwrap_or("").trim();
        if call_id.is_empty() || call_id.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(ReplacesError("no Call-ID"));
        }
        let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
        for p in parts {
            let (name, v) = match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (p.trim(), None),
            };
            match (name.to_ascii_lowercase().as_str(), v) {
                ("to-tag", Some(v)) if !v.is_empty() => to_tag = Some(v),
                ("from-tag", Some(v)) if !v.is_empty() => from_tag = Some(v),
                ("early-only", None) => early_only = true,
                ("to-tag" | "from-tag", _) => return Err(ReplacesError("empty tag")),
                _ => {}
            }
        }
        Ok(Replaces {
            call_id: call_id.to_owned(),
            to_tag: to_tag.ok_or(ReplacesError("no to-tag"))?.to_owned(),
            from_tag: from_tag.ok_or(ReplacesError("no from-tag"))?.to_owned(),
            early_only,
        })
    }

    /// The Replaces in a URI's header part (a Refer-To of an attended transfer), unescaped;
    /// `Ok(None)` when the URI has none.
    pub fn in_uri(uri: &Uri) -> Result<Option<Replaces>, ReplacesError> {
        let Some(headers) = uri.headers.as_deref() else {
            return Ok(None);
        };
        for h in headers.split('&') {
            let (name, value) = h.split_once('=').unwrap_or((h, ""));
            if name.eq_ignore_ascii_case("replaces") {
                let value = String::from_utf8(percent_decode(value))
                    .map_err(|_| ReplacesError("not UTF-8"))?;
                return Replaces::parse(&value).map(Some);
            }
        }
        Ok(None)
    }

    /// True when this names the dialog `call_id` between tags `a` and `b`, in either order
    /// (a transferor names its dialog from its own side, a target from the other).
    pub fn names(&self, call_id: &str, a: &str, b: &str) -> bool {
        self.call_id == call_id
            && ((self.to_tag == a && self.from_tag == b)
                || (self.to_tag == b && self.from_tag == a))
    }
}

impl std::fmt::Display for Replaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{};to-tag={};from-tag={}",
            self.call_id, self.to_tag, self.from_tag
        )?;
        if self.early_only {
            f.write_str(";early-only")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_header_and_the_escaped_refer_to_form() {
        let r = Replaces::parse("425928@bobster.example.org;to-tag=7743;from-tag=6472").unwrap();
        assert_eq!(r.call_id, "425928@bobster.example.org");
        assert_eq!((r.to_tag.as_str(), r.from_tag.as_str()), ("7743", "6472"));
        assert!(!r.early_only);
        assert_eq!(
            r.to_string(),
            "425928@bobster.example.org;to-tag=7743;from-tag=6472"
        );

        let uri = Uri::parse(
            "sip:carol@csps.local?Replaces=abc%2F%2F%2F1-2%40h%3Bto-tag%3Dx1%3Bfrom-tag%3Dy2%3Bearly-only",
        )
        .unwrap();
        let r = Replaces::in_uri(&uri).unwrap().unwrap();
        assert_eq!(r.call_id, "abc///1-2@h");
        assert!(r.names("abc///1-2@h", "y2", "x1") && r.names("abc///1-2@h", "x1", "y2"));
        assert!(!r.names("abc///1-2@h", "x1", "x1"));
        assert!(r.early_only);
        assert_eq!(
            Replaces::in_uri(&Uri::parse("sip:carol@csps.local").unwrap()),
            Ok(None)
        );
    }

    #[test]
    fn refuses_what_names_no_dialog() {
        for bad in [
            "",
            ";to-tag=a;from-tag=b",
            "id;to-tag=a",
            "id;from-tag=b",
            "id;to-tag=;from-tag=b",
        ] {
            assert!(Replaces::parse(bad).is_err(), "{bad:?}");
        }
        let uri = Uri::parse("sip:c@h?Replaces=%FF%FE").unwrap();
        assert!(Replaces::in_uri(&uri).is_err());
    }
}
