//! Sans-IO SIP core of csps: messages, transactions (RFC 3261 §17 with RFC 6026), the registrar
//! and digest authentication. Nothing here reads a clock, touches a socket or spawns: time comes in
//! with each input, randomness from an injected RNG, and work for the outside world leaves as output.
//!
//! The SIP parser is hand-written on purpose: rsip 0.4 is unmaintained since 2022, has no license
//! metadata, and cannot answer 400 from a partly-read message as RFC 4475 expects.
#![forbid(unsafe_code)]

pub mod dialog;
pub mod digest;
pub mod headers;
pub mod message;
pub mod parse;
pub mod registrar;
pub mod replaces;
pub mod sdp;
pub mod transaction;
pub mod transport;
pub mod uri;
pub mod validate;

pub use message::{Header, Headers, Message, Method, Request, Response, SipHeaders};
pub use parse::{Frame, ParseError, Parsed, frame, parse};
pub use transport::{FlowId, Remote, Transport};
pub use uri::Uri;
pub use validate::{Rejection, check_request};
