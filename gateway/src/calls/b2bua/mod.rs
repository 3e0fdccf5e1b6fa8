//! The sans-IO call: a back-to-back user agent between the caller's leg (A, the phone's INVITE
//! server transaction and then its dialog) and the callee's forks (B, one client INVITE per
//! registered device). Events come in with the time ([`Input`]); SIP messages to send, media
//! changes and the end of the call leave as [`Output`]; [`Call::poll_timeout`] says when to call
//! back. Nothing here reads a clock, a socket or a global RNG.
//!
//! The spine is here: the types, [`Call::handle`], the dispatch of responses and
//! [`Call::poll_output`]. Each area of the call is a file of its own: `forks` (ringing),
//! `hangup`, `in_dialog`, `media` (SDP and SRTP), `reoffer` (re-INVITE, UPDATE, hold), `info`
//! (INFO and DTMF), `transfer` (REFER, rooms), `replaces` (RFC 3891), `timers`, and `messages`
//! (the gateway's Via, Contact and new INVITE).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use csps_sip::dialog::Dialog;
use csps_sip::replaces::Replaces;
use csps_sip::sdp::{self, Sdp};
use csps_sip::transaction::TxnKey;
use csps_sip::{Method, Remote, Request, Response, SipHeaders, Uri};
use rand::RngCore;

use super::codecs;
use super::rel1xx::Rel1xx;
use super::sdes::{Sdes, SrtpPolicy};
use crate::media::dtmf::Digit;
use crate::media::srtp::SrtpKeys;
use crate::media::transcode::LegFormat;

mod forks;
mod hangup;
mod in_dialog;
mod info;
mod media;
mod messages;
mod reoffer;
mod replaces;
mod timers;
mod transfer;

use messages::hex_token;
pub(crate) use messages::{contact_for, new_invite, via_for};
pub(crate) use timers::{session_expires, supports_timer, teams_timer};

/// How long the callee's devices ring before the caller gets 480.
pub const NO_ANSWER: Duration = Duration::from_secs(60);
/// How long a call that is ending waits for the last answers (64·T1).
const LINGER: Duration = Duration::from_secs(32);
/// RFC 3261 T1 and T2 for the 2xx retransmissions of a UAS core (§13.3.1.4).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// The smallest session interval accepted (RFC 4028 §5: never below 90 s).
pub const MIN_SE: u32 = 90;
/// RFC 3326 reason on the BYEs of a session whose timer ran out.
const SESSION_EXPIRED: &str = "SIP;cause=408;text=\"Session timer expired\"";
/// RFC 3326 reason for forks that lost the race.
pub const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";
/// RFC 3326 reason on the BYE to a device whose dialog an INVITE with Replaces took over.
pub const REPLACED: &str = "SIP;cause=200;text=\"Call replaced\"";

/// Session interval the gateway proposes to Teams when the caller asked for none (RFC 4028
/// §4 recommends 1800 s); Teams is asked to refresh, as the gateway only relays refreshes.
pub const TEAMS_SESSION_EXPIRES: u32 = 1800;

/// How the gateway names itself on a leg to the Direct Routing trunk: its FQDN and TLS port
/// in Via and Contact (Direct Routing refuses requests whose Contact lacks the FQDN).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sbc {
    /// `Data.SipConfig.SbcFqdn`.
    pub fqdn: String,
    /// The TLS port named with it.
    pub port: u16,
    /// User part of the Contact (the caller's number on an outgoing call).
    pub user: String,
}

/// One device to ring.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where to send (the flow the device registered on).
    pub to: Remote,
    /// The Request-URI (the registered Contact).
    pub uri: Uri,
    /// The gateway's SIP address on that flow (for Via and Contact).
    pub local: SocketAddr,
    /// Set when the target is the Teams trunk: the gateway's FQDN replaces `local`, the trunk's
    /// Allow and session timers are sent.
    pub sbc: Option<Sbc>,
}

/// What a new call starts from.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The caller's INVITE server transaction.
    pub key: TxnKey,
    /// Where the INVITE came from.
    pub from: Remote,
    /// The gateway's SIP address on the caller's flow.
    pub local: SocketAddr,
    /// The INVITE.
    pub invite: Request,
    /// The caller as the gateway asserts it: `"Name" <sip:user@domain>`.
    pub caller: String,
    /// The caller's own AoR (`sip:user@domain`) when `caller` is not it: a call out through
    /// the trunk asserts the user's number at the gateway's FQDN. Whom a Replaces of leg A, or
    /// an attended transfer's REFER from it, is checked against.
    pub caller_party: Option<String>,
    /// The callee's To value: `<sip:user@domain>`.
    pub callee: String,
    /// The devices to ring.
    pub targets: Vec<Target>,
    /// Call-ID of the B side.
    pub b_call_id: String,
    /// The relay's RTP address facing A and B.
    pub relay_a: SocketAddr,
    /// See `relay_a`.
    pub relay_b: SocketAddr,
    /// Server name for Warning headers.
    pub agent: String,
    /// Set when the caller is the Teams trunk (see [`Target::sbc`]).
    pub a_sbc: Option<Sbc>,
    /// SRTP towards phones (`Data.SipConfig.Srtp`); the Teams leg always uses it.
    pub srtp: SrtpPolicy,
    /// The gateway plays music to a held party: a hold offer saying `inactive` reaches it as
    /// `sendonly` (it will receive the music), and [`Output::MusicOnHold`] says when to play.
    pub music_on_hold: bool,
    /// `Data.SipConfig.Use8KHz`: phone legs use G.711 only (see [`codecs::narrowband`]).
    pub narrowband: bool,
}

/// Something that happened to the call.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// A new server transaction inside one of the call's dialogs (BYE, re-INVITE, INFO, …).
    Request {
        /// The transaction.
        key: TxnKey,
        /// Its source.
        from: Remote,
        /// The request.
        req: Request,
    },
    /// An ACK to a 2xx.
    Ack(Request),
    /// The caller cancelled its INVITE (the transaction layer answered the CANCEL).
    Cancel(Request),
    /// A response to a request this call sent (`tag` as in [`Output::Send`]).
    Response {
        /// The request's tag.
        tag: u32,
        /// The response.
        resp: Response,
    },
    /// A request this call sent got no final answer in time (or could not be sent).
    Timeout {
        /// The request's tag.
        tag: u32,
    },
    /// Hang up (an administrator's DELETE).
    Hangup,
    /// A digit the relay read from leg A's (`from_a`) or B's RFC 4733 events while the other
    /// leg has no telephone-event: it goes there as SIP INFO.
    Dtmf {
        /// Read from leg A's events (else B's).
        from_a: bool,
        /// The digit.
        digit: Digit,
    },
    /// A REFER inside one of the call's dialogs (blind transfer, RFC 3515) with the switch's
    /// resolution of its Refer-To.
    Refer {
        /// The transaction.
        key: TxnKey,
        /// Its source.
        from: Remote,
        /// The REFER.
        req: Request,
        /// Where the transfer goes, or why it cannot (boxed: the other inputs are small).
        target: Box<Result<TransferTarget, ReferRefusal>>,
    },
    /// A new INVITE whose Replaces header names one of this call's dialogs (RFC 3891).
    Replace(Box<Replacement>),
    /// A REFER inside one of the call's dialogs whose Refer-To is a conference room: the other
    /// party is to join that room (RFC 4579: the focus is the gateway itself).
    ReferToRoom {
        /// The transaction.
        key: TxnKey,
        /// Its source.
        from: Remote,
        /// The REFER.
        req: Request,
        /// The room the Refer-To names.
        room: RoomRef,
    },
    /// The other half of an attended transfer whose consultation party is no device of this
    /// gateway (Teams, a web phone): that party goes to `room`, where the transferee is moved
    /// too; `keep` is the gateway's tag of the transferor's dialog in this call.
    PullToRoom {
        /// The private room the transfer bridges in.
        room: RoomRef,
        /// The transferor's dialog (the gateway's tag), which is not moved.
        keep: String,
    },
    /// How the move of this call's transferee into a room ended (the room's word, through
    /// the switch).
    RoomOutcome(RoomOutcome),
}

/// A conference room a Refer-To names: its name and the host the URI was written with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRef {
    /// The room (`team` for `conference-team`).
    pub name: String,
    /// The Refer-To's host (the room's URI is `<room user>@<host>`).
    pub host: String,
}

/// A leg handed over to a conference room: its dialog as the gateway holds it, where its
/// device is, and who it is. The room re-INVITEs it with the room's media in that dialog.
#[derive(Clone, Debug)]
pub struct Handover {
    /// The room it goes to.
    pub room: RoomRef,
    /// The leg's dialog (the gateway's side of it).
    pub dialog: Dialog,
    /// The device's flow.
    pub to: Remote,
    /// The gateway's SIP address on that flow.
    pub local: SocketAddr,
    /// The leg's party (`sip:user@domain`).
    pub party: String,
    /// The trunk's names when the leg is Teams (FQDN in Via and Contact, its session timer).
    pub sbc: Option<Sbc>,
}

/// How a [`Handover`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomOutcome {
    /// The device answered the room's re-INVITE: it is a participant, its dialog the room's.
    Joined,
    /// It is not in the room: `status` for the transferor's NOTIFY, the dialog's CSeq as the
    /// room left it, and whether the dialog is over (the device hung up, or the room hung it
    /// up after an answer it could not use); otherwise its session is as it was.
    Failed {
        /// The final status.
        status: u16,
        /// The dialog's local CSeq after the room's requests.
        local_seq: u32,
        /// The dialog ended.
        gone: bool,
    },
}

/// An authenticated phone's INVITE with a Replaces naming a dialog of this call (by Call-ID):
/// the call matches the tags against its legs and takes the phone in, or refuses it.
#[derive(Debug)]
pub struct Replacement {
    /// The INVITE's server transaction.
    pub key: TxnKey,
    /// Where it came from.
    pub from: Remote,
    /// The gateway's SIP address on that flow.
    pub local: SocketAddr,
    /// The INVITE.
    pub req: Request,
    /// Its Replaces header.
    pub replaces: Replaces,
    /// The authenticated sender as the gateway asserts it (`"Name" <sip:user@domain>`).
    pub party: String,
}

/// Where a blind transfer goes: the devices of the Refer-To's user.
#[derive(Clone, Debug)]
pub struct TransferTarget {
    /// The devices to ring.
    pub targets: Vec<Target>,
    /// The To value of the new leg: `<sip:user@domain>`.
    pub to: String,
    /// The target's AoR (for the call's record and the user-state bus).
    pub party: String,
    /// Call-ID of the new leg.
    pub call_id: String,
    /// Attended transfer (RFC 3891): the target's dialog with the gateway that the new leg
    /// replaces, as the target holds it (sent as `Replaces` with `Require: replaces`).
    pub replaces: Option<Replaces>,
    /// Attended transfer: the AoR of the party whose dialog the Replaces names; only that
    /// party may refer with it (403 otherwise: no one hands over a call they are not in).
    pub referrer: Option<String>,
    /// The caller the new leg asserts (From, P-Asserted-Identity, Referred-By) when it is not
    /// the transferee: a transfer through the trunk goes out as the transferor's call.
    pub asserted: Option<String>,
}

/// One confirmed leg of a running call as its device holds the dialog: what a Replaces names
/// and where an attended transfer's INVITE goes.
#[derive(Clone, Debug)]
pub struct LegDialog {
    /// The dialog's Call-ID.
    pub call_id: String,
    /// The gateway's tag in it.
    pub gateway_tag: String,
    /// The device's tag in it.
    pub device_tag: String,
    /// How to reach the device (its Contact in the dialog, over its flow).
    pub target: Target,
    /// The leg's party as the gateway names it (`"Name" <sip:user@domain>` or `<sip:…>`).
    pub party: String,
}

/// Why a REFER's Refer-To leads nowhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReferRefusal {
    /// Missing or unreadable Refer-To: 400.
    Bad(String),
    /// Not supported (a Replaces naming a Teams leg): 501.
    Unsupported(String),
    /// Accepted (202), then failed with this final status in the NOTIFY (RFC 3515 §2.4.5):
    /// unknown user, no registered device.
    Failed(u16),
}

/// Option tags a caller may require (RFC 3261 §8.2.2.3; the SIP core answers 420 to others):
/// session timers (RFC 4028), reliable provisionals (RFC 3262) and Replaces (RFC 3891).
pub const SUPPORTED_OPTIONS: &[&str] = &["timer", "100rel", "replaces"];

/// Media changes for the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaChange {
    /// Leg A's SDP address and signalling source.
    A(Option<SocketAddr>, std::net::IpAddr),
    /// Leg B's (the answering or early-media device).
    B(Option<SocketAddr>, std::net::IpAddr),
    /// The codecs of legs A and B when they differ (the relay transcodes), `None` when media
    /// is relayed unchanged. Follows the address changes of the same offer/answer exchange; an
    /// exchange that changes an address without it leaves legs that share a codec.
    Transcode(Option<(LegFormat, LegFormat)>),
    /// The telephone-event (payload type, clock) legs A and B negotiated, after an exchange
    /// that chose codecs: when only one has it, the relay reads its events as digits and plays
    /// it the other leg's SIP INFO digits (see [`Output::Dtmf`], [`Input::Dtmf`]).
    Dtmf(TelephoneEvent, TelephoneEvent),
    /// The audio (payload type, RTP clock) legs A and B send, after an exchange that chose
    /// codecs (with [`MediaChange::Transcode`]): what each leg's jitter is measured in.
    Audio(codecs::AudioClock, codecs::AudioClock),
}

/// A leg's telephone-event payload type and clock, when it negotiated RFC 4733.
pub type TelephoneEvent = Option<(u8, u32)>;

/// Work for the driver.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Answer a server transaction.
    Respond {
        /// The transaction.
        key: TxnKey,
        /// The response.
        resp: Response,
    },
    /// Start a client transaction; its responses come back with `tag`.
    Send {
        /// The call's name for it.
        tag: u32,
        /// Destination.
        to: Remote,
        /// The request.
        req: Request,
    },
    /// Send without a transaction (ACK to a 2xx).
    Stateless {
        /// Destination.
        to: Remote,
        /// The ACK.
        req: Request,
    },
    /// Point the relay somewhere.
    Media(MediaChange),
    /// SRTP keys for the relay's side facing leg A (`a`) or B (`None`: plain RTP).
    Srtp {
        /// The side facing leg A (else B).
        a: bool,
        /// The keys.
        keys: Option<SrtpKeys>,
    },
    /// Music on hold for leg A (`a`) or B: the other leg put it on hold and it receives in
    /// `format` (the first audio format of its answer to the hold); `None`: it is not held (any
    /// more), or cannot receive. Only when [`Setup::music_on_hold`] is set.
    MusicOnHold {
        /// Leg A is held (else B).
        a: bool,
        /// The codec and payload type to play in.
        format: Option<sdp::Format>,
    },
    /// The callee's phone answered (for the call list and user state).
    Answered,
    /// A transfer completed: leg A (`a`) or B is now `party` (the transferor left the call).
    Transferred {
        /// The caller's leg was replaced (else the callee's).
        a: bool,
        /// The new party's AoR.
        party: String,
        /// The new party is reached through the Teams trunk (else a device of a local user).
        teams: bool,
    },
    /// Play a digit (from the other leg's SIP INFO) as RFC 4733 events to leg A (`to_a`) or B.
    Dtmf {
        /// To leg A (else B).
        to_a: bool,
        /// The digit.
        digit: Digit,
    },
    /// Leg A's or B's device goes to a conference room (the other party referred it there);
    /// the call waits for [`Input::RoomOutcome`].
    ToRoom(Box<Handover>),
    /// The call is over; the driver drops it.
    Ended,
}

/// Why a call ended, for its record (the first cause wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// The caller sent BYE.
    CallerHungUp,
    /// The answering device sent BYE.
    CalleeHungUp,
    /// The caller cancelled before an answer.
    Cancelled,
    /// Every device of the callee refused or could not be reached (the status says how).
    CalleeRefused,
    /// Nobody answered in time.
    NoAnswer,
    /// The gateway refused the call (bad or unusable SDP, too short a session interval).
    Rejected,
    /// An administrator hung up (`DELETE /api/calls/{id}`).
    AdminHangUp,
    /// Nobody refreshed the session in time (RFC 4028).
    SessionExpired,
    /// The caller never acknowledged the 200 (RFC 3261 §13.3.1.4).
    NoAck,
    /// The transferor left and its transfer failed: nobody was left to talk to the transferee.
    TransferFailed,
    /// The transferor referred the other party into a conference room, which took it over.
    MovedToConference,
}

impl EndReason {
    /// The snake_case name (as in the API and the metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::CallerHungUp => "caller_hung_up",
            EndReason::CalleeHungUp => "callee_hung_up",
            EndReason::Cancelled => "cancelled",
            EndReason::CalleeRefused => "callee_refused",
            EndReason::NoAnswer => "no_answer",
            EndReason::Rejected => "rejected",
            EndReason::AdminHangUp => "admin_hang_up",
            EndReason::SessionExpired => "session_expired",
            EndReason::NoAck => "no_ack",
            EndReason::TransferFailed => "transfer_failed",
            EndReason::MovedToConference => "moved_to_conference",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForkState {
    /// INVITE sent, nothing heard.
    Calling,
    /// A provisional response arrived (CANCEL is now allowed).
    Proceeding,
    /// Answered 2xx.
    Answered,
    /// A final non-2xx (or timeout: 408).
    Done(u16),
}

struct Fork {
    tag: u32,
    target: Target,
    invite: Request,
    state: ForkState,
    /// Lost the race or the call ended: CANCEL as soon as a provisional allows it.
    cancel: Option<&'static str>,
    dialog: Option<Dialog>,
    /// The device's tags of the early dialogs its provisionals made (what a call pickup's
    /// Replaces names as `from-tag`).
    early_tags: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Forks ringing; the caller has no final answer.
    Ringing,
    /// 200 sent to the caller; waiting for its ACK.
    Answered,
    /// Both dialogs confirmed.
    Confirmed,
    /// BYEs or CANCELs out; waiting for their answers.
    Ending,
    /// Over.
    Ended,
}

/// A session modification in flight: a re-INVITE or UPDATE from one leg (the origin), relayed
/// to the other (the target) as the gateway's own request in that dialog.
struct ReOffer {
    /// The origin is leg A (else the answered device, B).
    from_a: bool,
    /// The origin's server transaction.
    key: TxnKey,
    /// INVITE or UPDATE.
    method: Method,
    /// The origin's request (to build the answer from).
    req: Request,
    /// Our client transaction towards the target.
    tag: u32,
    /// Its CSeq number (for the ACK of a 2xx).
    seq: u32,
    /// The offer sent to the target; `None` for an offerless re-INVITE (the target's 2xx
    /// carries the offer, the origin's ACK the answer).
    offer: Option<Sdp>,
    /// The origin's SDP address, applied to the relay once the target answered.
    origin_addr: Option<SocketAddr>,
    /// The origin's offer as restricted, before the gateway added codecs (see
    /// [`codecs::answer_back`]).
    origin: Option<Sdp>,
    /// After the 2xx went to the origin: waiting for its ACK.
    answered: Option<Answered>,
}

/// A blind transfer in progress (RFC 3515): the transferor's leg (X) is being replaced by a new
/// INVITE to the Refer-To's devices; the transferee (the other leg, Y) keeps its dialog and is
/// re-INVITEd once the target answered, so its media follows (and a held transferee resumes).
struct Transfer {
    /// The transferor is leg A (else the answered device).
    x_is_a: bool,
    /// The transferor hung up after its REFER was accepted (phones often do at once).
    x_gone: bool,
    /// One INVITE per device of the target.
    forks: Vec<Fork>,
    /// The offer sent to the target: the transferee's media, at the relay's transferor side.
    offer: Sdp,
    /// The target's AoR and To value.
    party: String,
    to: String,
    /// When the target's devices have rung long enough.
    deadline: Instant,
}

/// The transferee on its way into a conference room: its dialog is the room's until the
/// room's [`RoomOutcome`] (the call sends nothing in it meanwhile).
struct Moving {
    /// The transferor is leg A (else the answered device).
    x_is_a: bool,
    /// The transferor hung up (or the call was hung up) meanwhile.
    x_gone: bool,
    /// The transferor REFERred in this call (it hears the outcome by NOTIFY); else the move
    /// is the consultation half of an attended transfer bridged in a room.
    referred: bool,
}

/// A re-INVITE the gateway itself sent (to a transferee, with the new party's media).
struct OwnOffer {
    /// Sent to leg A (else B).
    to_a: bool,
    tag: u32,
    seq: u32,
    offer: Sdp,
    /// The 2xx came and was ACKed (a retransmitted 2xx is ACKed again).
    acked: bool,
}

/// A phone whose INVITE with Replaces came without an offer (RFC 3891 with RFC 3264 §4): its
/// 200 carried the gateway's offer, and it takes leg A's (`a`) or B's place only once its ACK
/// brings a usable answer.
struct Joining {
    /// It takes leg A's place (else B's).
    a: bool,
    /// The phone as a device of this call, its dialog made.
    phone: Fork,
    /// The sender as the gateway asserts it.
    party: String,
    /// The offer in its 200, as neutral SDP (no SDES).
    offer: Sdp,
}

/// The 2xx of a relayed re-INVITE, retransmitted until the origin's ACK (§13.3.1.4).
struct Answered {
    /// The origin's INVITE CSeq, which its ACK repeats.
    cseq: u32,
    resp: Response,
    /// Offerless: the offer put in the 2xx, which the ACK answers.
    offer_to_origin: Option<Sdp>,
    /// Next retransmission, its interval and when to give up (UDP only).
    next: Option<(Instant, Duration, Instant)>,
}

/// One call.
pub struct Call {
    setup: Setup,
    a_tag: String,
    a_contact: String,
    a_dialog: Option<Dialog>,
    /// The SDP sent to B (the caller's offer, restricted, with the codecs the gateway adds, and
    /// rewritten).
    b_offer: Option<Sdp>,
    /// The caller's offer as restricted, before the gateway added codecs: what its answer is
    /// made from when the callee picks a codec the caller lacks.
    a_origin: Option<Sdp>,
    /// B's answer as it came (what B receives: the offer a transfer of A's side makes).
    b_answer: Option<Sdp>,
    /// The caller's INVITE had no offer (RFC 3261 §13.2.1): the answering device's 2xx
    /// carries the offer, the caller's ACK the answer.
    offerless: bool,
    /// Offerless: the offer in the 200 to the caller, which its ACK answers.
    a_offer: Option<Sdp>,
    /// Offerless: the ACK to the answering device, held until it can carry the caller's answer.
    b_ack: Option<(Remote, Request)>,
    /// The blind transfer in progress.
    transfer: Option<Transfer>,
    /// The transferee being moved into a conference room.
    moving: Option<Moving>,
    /// The gateway's own re-INVITE in progress.
    own_offer: Option<OwnOffer>,
    /// The 2xx to a phone that replaced a leg (RFC 3891), retransmitted until its ACK.
    replacement: Option<(TxnKey, Answered)>,
    /// The offerless replacing phone waiting for its ACK's answer.
    joining: Option<Joining>,
    /// Dialogs of transferors that left leg A (a crossing BYE still gets its 200).
    former: Vec<Dialog>,
    /// The 200 to the caller, kept for retransmission until the ACK.
    a_ok: Option<Response>,
    a_ok_next: Option<(Instant, Duration, Instant)>,
    b_from_tag: String,
    forks: Vec<Fork>,
    winner: Option<usize>,
    /// Tags of BYEs this call sent and still waits for.
    pending_byes: Vec<u32>,
    early_media_from: Option<usize>,
    /// The re-INVITE or UPDATE being relayed (one at a time, RFC 3261 §14).
    reoffer: Option<ReOffer>,
    /// INFOs relayed to the other leg: our tag, the origin's transaction and request.
    infos: Vec<(u32, TxnKey, Request)>,
    /// The telephone-event legs A and B negotiated (see [`MediaChange::Dtmf`]).
    telephone_events: (TelephoneEvent, TelephoneEvent),
    /// Tags of the INFOs the gateway sent for digits read from RFC 4733 events.
    dtmf_infos: Vec<u32>,
    /// The negotiated session interval (RFC 4028) and when the session expires without a
    /// refresh; `None` when neither phone asked for session timers.
    session: Option<(Duration, Instant)>,
    /// RFC 3326 Reason on the BYEs the gateway sends, when it has one.
    bye_reason: Option<&'static str>,
    /// Why the call ends, once something ended it.
    end_reason: Option<EndReason>,
    phase: Phase,
    ring_deadline: Option<Instant>,
    linger_deadline: Option<Instant>,
    next_tag: u32,
    out: VecDeque<Output>,
    /// SDES of the relay's sides facing A and B (RFC 4568).
    sdes_a: Sdes,
    sdes_b: Sdes,
    /// Reliable provisionals towards a caller that requires them (RFC 3262).
    rel1xx: Option<Rel1xx>,
    /// The keys last given to the relay (A, B).
    srtp_sent: (Option<SrtpKeys>, Option<SrtpKeys>),
    rng: Box<dyn RngCore + Send>,
}

/// A party as the gateway names it (`"Name" <sip:user@domain>`) as an AoR (`sip:user@domain`);
/// the value itself when it is no name-addr.
pub(crate) fn party_aor(party: &str) -> String {
    csps_sip::headers::NameAddr::parse(party)
        .map(|n| n.uri.aor())
        .unwrap_or_else(|_| party.to_owned())
}

/// The answer to a relayed request, for its origin: the status and reason, and a body when the
/// other side sent one.
fn relayed_response(origin: &Request, resp: &Response) -> Response {
    let mut r = origin.response(resp.status, &resp.reason);
    if let Some(ct) = resp.headers.get("Content-Type")
        && !resp.body.is_empty()
    {
        r.headers.push("Content-Type", ct);
        r.body = resp.body.clone();
    }
    r
}

impl Call {
    /// A new call; `start` sends the INVITEs.
    pub fn new(setup: Setup, mut rng: Box<dyn RngCore + Send>) -> Call {
        let a_tag = hex_token(&mut *rng);
        let b_from_tag = hex_token(&mut *rng);
        let a_contact = contact_for(setup.from.transport, setup.local, setup.a_sbc.as_ref());
        let sdes_a = Sdes::new(&mut *rng);
        let sdes_b = Sdes::new(&mut *rng);
        Call {
            setup,
            a_tag,
            a_contact,
            a_dialog: None,
            b_offer: None,
            a_origin: None,
            b_answer: None,
            offerless: false,
            a_offer: None,
            b_ack: None,
            transfer: None,
            moving: None,
            own_offer: None,
            replacement: None,
            joining: None,
            former: Vec::new(),
            a_ok: None,
            a_ok_next: None,
            b_from_tag,
            forks: Vec::new(),
            winner: None,
            pending_byes: Vec::new(),
            early_media_from: None,
            reoffer: None,
            infos: Vec::new(),
            telephone_events: (None, None),
            dtmf_infos: Vec::new(),
            session: None,
            bye_reason: None,
            end_reason: None,
            phase: Phase::Ringing,
            ring_deadline: None,
            linger_deadline: None,
            next_tag: 1,
            out: VecDeque::new(),
            sdes_a,
            sdes_b,
            rel1xx: None,
            srtp_sent: (None, None),
            rng,
        }
    }

    /// The Call-IDs of both sides (for the driver's routing table).
    pub fn call_ids(&self) -> (&str, &str) {
        (
            self.setup.invite.call_id().unwrap_or(""),
            &self.setup.b_call_id,
        )
    }

    fn tag(&mut self) -> u32 {
        let t = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        t
    }

    /// A response to the caller's INVITE (with the gateway's To tag and Contact).
    fn a_response(&self, status: u16, reason: &str) -> Response {
        let inv = &self.setup.invite;
        let mut r = inv.response(status, reason);
        if status != 100
            && let Some(to) = inv.headers.get("To")
        {
            r.headers.set("To", format!("{to};tag={}", self.a_tag));
        }
        if (101..300).contains(&status) {
            r.headers.push("Contact", self.a_contact.clone());
        }
        r
    }

    /// Notes why the call ends, unless an earlier cause already did.
    fn ending(&mut self, why: EndReason) {
        self.end_reason.get_or_insert(why);
    }

    /// Why the call ended (or is ending); `None` while it goes on.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end_reason
    }

    fn reject(&mut self, status: u16, warning: Option<&str>) {
        self.ending(EndReason::Rejected);
        let mut r = self.a_response(status, csps_sip::message::reason_phrase(status));
        if let Some(w) = warning {
            r.headers.push(
                "Warning",
                csps_sip::validate::warning_value(&self.setup.agent, w),
            );
        }
        self.out.push_back(Output::Respond {
            key: self.setup.key,
            resp: r,
        });
        self.end_or_linger();
    }

    /// Feeds one input at `now`; then drain [`Call::poll_output`].
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Response { tag, resp } => self.on_response(now, tag, resp),
            Input::Refer {
                key, req, target, ..
            } => self.on_refer(now, key, req, *target),
            Input::Replace(r) => self.on_replace(now, *r),
            Input::ReferToRoom { key, req, room, .. } => self.on_refer_to_room(key, req, room),
            Input::PullToRoom { room, keep } => self.on_pull_to_room(room, &keep),
            Input::RoomOutcome(o) => self.on_room_outcome(now, o),
            Input::Timeout { tag } => {
                if let Some(i) = self.transfer_fork(tag) {
                    self.transfer_fork_failed(now, i, 408);
                } else if self.own_offer.as_ref().is_some_and(|o| o.tag == tag) {
                    tracing::info!("the transferee did not answer the gateway's re-INVITE");
                    self.own_offer = None;
                } else if let Some(i) = self.forks.iter().position(|f| f.tag == tag) {
                    self.fork_failed(now, i, 408);
                } else if self.reoffer.as_ref().is_some_and(|r| r.tag == tag) {
                    self.reoffer_failed(408, "Request Timeout");
                } else if let Some(k) = self.infos.iter().position(|(t, ..)| *t == tag) {
                    let (_, key, req) = self.infos.remove(k);
                    self.out.push_back(Output::Respond {
                        key,
                        resp: req.response(408, "Request Timeout"),
                    });
                } else if let Some(k) = self.dtmf_infos.iter().position(|t| *t == tag) {
                    self.dtmf_infos.remove(k);
                    tracing::info!("a DTMF INFO got no answer");
                } else {
                    self.bye_done(tag);
                }
            }
            Input::Request { key, from, req } => self.on_request(now, key, from, req),
            Input::Ack(req) if self.replacement_acked(&req) => {
                if let Some(j) = self.joining.take() {
                    self.joined(now, &req, j);
                }
            }
            Input::Ack(req) => {
                if self.phase == Phase::Answered
                    && self.a_dialog.as_ref().is_some_and(|d| d.matches(&req))
                {
                    self.a_ok = None;
                    self.a_ok_next = None;
                    self.phase = Phase::Confirmed;
                    if let Some(offer) = self.a_offer.take() {
                        self.answer_in_ack(now, &req, &offer);
                    }
                } else {
                    self.on_reoffer_ack(req);
                }
            }
            Input::Cancel(req) => {
                // Only the caller's CANCEL ends a ringing call (a replacing phone's INVITE was
                // answered at once; its CANCEL has nothing left to cancel).
                if self.phase == Phase::Ringing && req.call_id() == self.setup.invite.call_id() {
                    self.ending(EndReason::Cancelled);
                    let r = self.a_response(487, "Request Terminated");
                    self.out.push_back(Output::Respond {
                        key: self.setup.key,
                        resp: r,
                    });
                    let reason = req
                        .headers
                        .get("Reason")
                        .is_some_and(|r| r.contains("cause=200"))
                        .then_some(COMPLETED_ELSEWHERE);
                    self.cancel_forks(now, reason);
                    self.end_or_linger_at(now);
                }
            }
            Input::Dtmf { from_a, digit } => self.digit_as_info(from_a, digit),
            Input::Hangup => {
                if matches!(
                    self.phase,
                    Phase::Ringing | Phase::Answered | Phase::Confirmed
                ) {
                    self.ending(EndReason::AdminHangUp);
                }
                self.hang_up(now, Some(503));
            }
        }
    }

    fn on_response(&mut self, now: Instant, tag: u32, resp: Response) {
        if let Some(i) = self.transfer_fork(tag) {
            self.on_transfer_response(now, i, resp);
            return;
        }
        if self.own_offer.as_ref().is_some_and(|o| o.tag == tag) {
            self.on_own_offer_response(resp);
            return;
        }
        if self.reoffer.as_ref().is_some_and(|r| r.tag == tag) {
            self.on_reoffer_response(now, resp);
            return;
        }
        if let Some(k) = self.dtmf_infos.iter().position(|t| *t == tag) {
            if resp.status >= 200 {
                self.dtmf_infos.remove(k);
                if resp.status >= 300 {
                    tracing::info!(status = resp.status, "a DTMF INFO was refused");
                }
            }
            return;
        }
        if let Some(k) = self.infos.iter().position(|(t, ..)| *t == tag) {
            if resp.status >= 200 {
                let (_, key, req) = self.infos.remove(k);
                self.out.push_back(Output::Respond {
                    key,
                    resp: relayed_response(&req, &resp),
                });
            }
            return;
        }
        let Some(i) = self.forks.iter().position(|f| f.tag == tag) else {
            // A BYE's or CANCEL's answer.
            if resp.status >= 200 {
                self.bye_done(tag);
            }
            return;
        };
        let status = resp.status;
        if status < 200 {
            self.on_provisional(now, i, resp);
        } else if status < 300 {
            self.on_answer(now, i, resp);
        } else {
            self.fork_failed(now, i, status);
        }
    }

    /// The answer `status` to an in-dialog request, with the standard reason phrase and the
    /// gateway's Warning when there is one.
    fn refusal(&self, req: &Request, status: u16, warning: Option<&str>) -> Response {
        let mut r = req.response(status, csps_sip::message::reason_phrase(status));
        if let Some(w) = warning {
            r.headers.push(
                "Warning",
                csps_sip::validate::warning_value(&self.setup.agent, w),
            );
        }
        r
    }

    /// Leg A's (`a`) or B's party as an AoR (`sip:user@domain`; a phone's own user's even on
    /// a call to Teams).
    fn party_aor(&self, a: bool) -> String {
        match (a, &self.setup.caller_party) {
            (true, Some(aor)) => aor.clone(),
            (true, None) => party_aor(&self.setup.caller),
            (false, _) => party_aor(&self.setup.callee),
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.out.is_empty() {
            // Keys go to the relay after the round's messages, before any packet is read.
            self.flush_srtp();
        }
        let out = self.out.pop_front();
        if let (Some(Output::Respond { key, resp }), Some(rel)) = (&out, self.rel1xx.as_mut())
            && *key == self.setup.key
            && resp.status >= 300
            && resp.cseq().is_some_and(|c| c.method == Method::Invite)
        {
            // A refusal ends the INVITE transaction: no provisional is retransmitted after it.
            rel.finished();
        }
        out
    }

    /// Where leg A's device signals from (the caller's, or whoever took its place since).
    pub fn caller_signalling(&self) -> SocketAddr {
        self.setup.from.addr
    }

    /// True once answered and not yet over.
    pub fn is_answered(&self) -> bool {
        matches!(self.phase, Phase::Answered | Phase::Confirmed)
    }
}

#[cfg(test)]
pub(super) mod tests;
