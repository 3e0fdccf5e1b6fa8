//! The sans-IO call: a back-to-back user agent between the caller's leg (A, the phone's INVITE
//! server transaction and then its dialog) and the callee's forks (B, one client INVITE per
//! registered device). Events come in with the time ([`Input`]); SIP messages to send, media
//! changes and the end of the call leave as [`Output`]; [`Call::poll_timeout`] says when to call
//! back. Nothing here reads a clock, a socket or a global RNG.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use csps_sip::dialog::{self, Dialog};
use csps_sip::replaces::Replaces;
use csps_sip::sdp::{self, Sdp};
use csps_sip::transaction::TxnKey;
use csps_sip::{Headers, Method, Remote, Request, Response, SipHeaders, Transport, Uri};
use rand::RngCore;

use super::codecs;
use super::rel1xx::{self, NoPrack, Rel1xx};
use super::sdes::{LegSrtp, Sdes, SrtpPolicy};
use crate::media::dtmf::{self, Digit};
use crate::media::srtp::SrtpKeys;
use crate::media::transcode::LegFormat;

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

/// What a Replaces names in a call (see [`Call::named_by`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    /// No dialog of this call (or the caller's early dialog, which the gateway did not start).
    Nothing,
    /// A dialog that ended (or is ending).
    Ended,
    /// Leg A's confirmed dialog (`true`) or the answered device's.
    Confirmed(bool),
    /// The early dialog of fork `i`, still ringing.
    Early(usize),
}

/// The domain of an AoR (`sip:user@domain`).
fn domain_of(aor: &str) -> String {
    aor.rsplit('@').next().unwrap_or("").to_ascii_lowercase()
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

fn hex_token(rng: &mut dyn RngCore) -> String {
    format!("{:016x}", rng.next_u64())
}

fn via(t: &Target, rng: &mut dyn RngCore) -> String {
    via_for(t.to.transport, t.local, t.sbc.as_ref(), rng)
}

fn via_for(
    transport: Transport,
    local: SocketAddr,
    sbc: Option<&Sbc>,
    rng: &mut dyn RngCore,
) -> String {
    match sbc {
        Some(s) => format!(
            "SIP/2.0/TLS {}:{};branch=z9hG4bK{}",
            s.fqdn,
            s.port,
            hex_token(rng)
        ),
        None => format!(
            "SIP/2.0/{} {local};branch=z9hG4bK{};rport",
            transport.via_token(),
            hex_token(rng)
        ),
    }
}

fn contact_for(transport: Transport, local: SocketAddr, sbc: Option<&Sbc>) -> String {
    match (sbc, transport) {
        (Some(s), _) => format!("<sip:{}@{}:{};transport=tls>", s.user, s.fqdn, s.port),
        (None, Transport::Udp) => format!("<sip:csps@{local}>"),
        (None, t) => format!("<sip:csps@{local};transport={}>", t.as_str().to_lowercase()),
    }
}

/// The methods a leg is told it may use: the trunk's list (with REFER) towards Teams.
fn allow_for(sbc: Option<&Sbc>) -> &'static str {
    if sbc.is_some() {
        crate::trunk::ALLOW
    } else {
        super::ALLOW_IN_DIALOG
    }
}

/// A party as the gateway names it (`"Name" <sip:user@domain>`) as an AoR (`sip:user@domain`);
/// the value itself when it is no name-addr.
pub(crate) fn party_aor(party: &str) -> String {
    csps_sip::headers::NameAddr::parse(party)
        .map(|n| n.uri.aor())
        .unwrap_or_else(|_| party.to_owned())
}

/// The ACK for a 2xx to fork `f`'s INVITE, and whether it was the first 2xx (which makes the
/// fork's dialog); every 2xx, retransmissions too, is ACKed with a new branch (§13.2.2.4).
/// `None` when the 2xx cannot make a dialog.
fn ack_answer(
    f: &mut Fork,
    resp: &Response,
    rng: &mut dyn RngCore,
) -> Option<(bool, Remote, Request)> {
    let first = f.dialog.is_none();
    if first {
        f.dialog = Dialog::uac(&f.invite, resp);
    }
    let d = f.dialog.as_ref()?;
    let v = via(&f.target, rng);
    Some((first, f.target.to, d.ack(1, &v)))
}

/// Marks fork `f` cancelled (with an RFC 3326 `reason`) and returns its CANCEL when it may be
/// sent now; §9.1: no CANCEL before a provisional, it is sent when one arrives.
fn cancel_fork(f: &mut Fork, reason: Option<&'static str>) -> Option<(Remote, Request)> {
    match f.state {
        ForkState::Proceeding => {
            f.cancel = Some(reason.unwrap_or(""));
            Some((f.target.to, dialog::cancel(&f.invite, reason)))
        }
        ForkState::Calling => {
            f.cancel = Some(reason.unwrap_or(""));
            None
        }
        _ => None,
    }
}

/// When every fork has a final refusal: the one to pass on ([`best_final`]).
fn all_refused(forks: &[Fork]) -> Option<u16> {
    let mut statuses = Vec::with_capacity(forks.len());
    for f in forks {
        match f.state {
            ForkState::Done(s) => statuses.push(s),
            _ => return None,
        }
    }
    Some(best_final(statuses.into_iter()))
}

/// A BYE in fork `f`'s dialog (with an RFC 3326 `reason`); `None` before it has a dialog.
fn fork_bye(
    f: &mut Fork,
    reason: Option<&str>,
    rng: &mut dyn RngCore,
) -> Option<(Remote, Request)> {
    let v = via(&f.target, rng);
    let d = f.dialog.as_mut()?;
    let mut req = d.request(Method::Bye, &v);
    if let Some(r) = reason {
        req.headers.push("Reason", r);
    }
    Some((f.target.to, req))
}

/// A dialog-creating INVITE to `target`: the gateway's Via, Contact and Allow for it, `from`
/// (with `from_tag`) asserted as the caller (whatever a phone sent is never copied, RFC 3325),
/// `to`, and the SDP offer `body`.
pub(crate) fn new_invite(
    target: &Target,
    from: &str,
    from_tag: &str,
    to: &str,
    call_id: &str,
    body: Bytes,
    rng: &mut dyn RngCore,
) -> Request {
    let mut h = Headers::new();
    h.push("Via", via(target, rng));
    h.push("Max-Forwards", "70");
    h.push("From", format!("{from};tag={from_tag}"));
    h.push("To", to.to_owned());
    h.push("Call-ID", call_id.to_owned());
    h.push("CSeq", "1 INVITE");
    h.push(
        "Contact",
        contact_for(target.to.transport, target.local, target.sbc.as_ref()),
    );
    h.push("P-Asserted-Identity", from.to_owned());
    h.push("Allow", allow_for(target.sbc.as_ref()));
    if target.sbc.is_none() {
        // A phone may take this call over with an INVITE with Replaces (RFC 3891).
        h.push("Supported", "replaces");
    }
    if !body.is_empty() {
        h.push("Content-Type", "application/sdp");
    }
    Request {
        method: Method::Invite,
        uri: target.uri.clone(),
        headers: h,
        body,
    }
}

fn is_sdp(headers: &Headers, body: &Bytes) -> bool {
    !body.is_empty()
        && headers
            .get("Content-Type")
            .is_none_or(|c| c.trim().to_ascii_lowercase().starts_with("application/sdp"))
}

/// The answer the caller gets when no device answered (RFC 3261 §16.7 step 6, as phones expect:
/// busy wins over the rest, 6xx over everything, unreachable devices read as 480).
fn best_final(statuses: impl Iterator<Item = u16>) -> u16 {
    let mut best: Option<u16> = None;
    let rank = |s: u16| match s {
        600..=699 => 0,
        486 => 1,
        480 | 408 | 500..=599 => 4,
        487 => 5,
        400..=499 => 2,
        _ => 6,
    };
    for s in statuses {
        if best.is_none_or(|b| rank(s) < rank(b)) {
            best = Some(s);
        }
    }
    best.filter(|s| !matches!(s, 408 | 480 | 500..=599))
        .unwrap_or(480)
}

/// `Session-Expires` (RFC 4028 §4): the interval in seconds and the `refresher` parameter.
fn session_expires(h: &Headers) -> Option<(u32, Option<String>)> {
    let v = h.get("Session-Expires")?;
    let mut parts = v.split(';');
    let secs = parts.next()?.trim().parse().ok()?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("refresher")
            .then(|| v.trim().to_ascii_lowercase())
    });
    Some((secs, refresher))
}

/// True when `h` lists the `timer` option tag in Supported (or its compact form `k`).
fn supports_timer(h: &Headers) -> bool {
    h.values("Supported")
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("timer"))
}

/// Direct Routing expects session timers: a new leg to Teams whose other side asked none
/// offers ours, and Teams refreshes (the gateway relays refreshes).
fn teams_timer(h: &mut Headers) {
    h.push(
        "Session-Expires",
        format!("{TEAMS_SESSION_EXPIRES};refresher=uas"),
    );
    h.push("Min-SE", MIN_SE.to_string());
    h.push("Supported", "timer");
}

/// Session-timer headers copied from one leg's message to the other's (refreshes and their
/// answers pass through unchanged, so the phones keep negotiating with each other).
fn copy_timer_headers(from: &Headers, to: &mut Headers) {
    for name in ["Session-Expires", "Min-SE"] {
        if let Some(v) = from.get(name) {
            to.set(name, v.to_owned());
        }
    }
    if supports_timer(from) {
        to.push("Supported", "timer");
    }
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

    /// Checks the caller's offer and rings every target.
    pub fn start(&mut self, now: Instant) {
        let invite = &self.setup.invite;
        if !invite.body.is_empty() && !is_sdp(&invite.headers, &invite.body) {
            let mut r = self.a_response(415, "Unsupported Media Type");
            r.headers.push("Accept", "application/sdp");
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: r,
            });
            self.ending(EndReason::Rejected);
            self.end_or_linger();
            return;
        }
        if rel1xx::requires(&invite.headers, "100rel") {
            let cseq = invite.cseq().map_or(1, |c| c.seq);
            self.rel1xx = Some(Rel1xx::new(cseq, self.rng.next_u32() >> 1));
        }
        self.offerless = invite.body.is_empty();
        if let Some((se, _)) = session_expires(&invite.headers)
            && se < MIN_SE
            && supports_timer(&invite.headers)
        {
            // RFC 4028 §8.1: too short an interval from a UAC that knows timers.
            let mut r = self.a_response(422, "Session Interval Too Small");
            r.headers.push("Min-SE", MIN_SE.to_string());
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: r,
            });
            self.ending(EndReason::Rejected);
            self.end_or_linger();
            return;
        }
        if self.offerless {
            self.respond_trying();
        } else {
            let mut offer = match Sdp::parse(&invite.body) {
                Ok(s) => s,
                Err(e) => {
                    self.reject(400, Some(&format!("bad SDP: {e}")));
                    return;
                }
            };
            if let Err(e) = self.take_sdes(true, self.srtp_rule(true), &mut offer, true) {
                self.reject(e.status(), Some(&e.to_string()));
                return;
            }
            let a_sdp_addr = offer.audio_index().and_then(|i| offer.rtp_addr(i));
            let idx = match self.offer_onwards(true, &mut offer) {
                Ok((i, origin)) => {
                    self.a_origin = Some(origin);
                    i
                }
                Err(e) => {
                    self.reject(e.status(), Some(&e.to_string()));
                    return;
                }
            };
            self.respond_trying();
            self.out.push_back(Output::Media(MediaChange::A(
                a_sdp_addr,
                self.setup.from.addr.ip(),
            )));
            sdp::rewrite_address(&mut offer, idx, self.setup.relay_b);
            self.b_offer = Some(offer);
        }
        for target in self.setup.targets.clone() {
            let tag = self.tag();
            // Each device is offered SRTP by its own rule (its transport).
            let body = match &self.b_offer {
                Some(o) => {
                    let o = self.offer_for(target.sbc.is_none(), o);
                    self.offer_body(false, self.target_rule(&target), &o)
                }
                None => Bytes::new(),
            };
            let mut req = new_invite(
                &target,
                &self.setup.caller,
                &self.b_from_tag,
                &self.setup.callee,
                &self.setup.b_call_id,
                body,
                &mut *self.rng,
            );
            let h = &mut req.headers;
            let caller_timer = session_expires(&self.setup.invite.headers).is_some();
            if target.sbc.is_some() && !caller_timer {
                teams_timer(h);
            }
            if let Some((se, _)) = session_expires(&self.setup.invite.headers) {
                // The caller asked for session timers: the callee negotiates them with it
                // through the gateway (an interval below ours is raised, §7.4).
                h.push("Session-Expires", se.max(MIN_SE).to_string());
                let min = self
                    .setup
                    .invite
                    .headers
                    .get("Min-SE")
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .unwrap_or(MIN_SE)
                    .max(MIN_SE);
                h.push("Min-SE", min.to_string());
            }
            if supports_timer(&self.setup.invite.headers) {
                h.push("Supported", "timer");
            }
            self.out.push_back(Output::Send {
                tag,
                to: target.to,
                req: req.clone(),
            });
            self.forks.push(Fork {
                tag,
                target,
                invite: req,
                state: ForkState::Calling,
                cancel: None,
                dialog: None,
                early_tags: Vec::new(),
            });
        }
        self.ring_deadline = Some(now + NO_ANSWER);
    }

    /// 100 at once (RFC 3261 §16.2 as a proxy would): the answer depends on other phones, and
    /// the caller should stop retransmitting now rather than after the 200 ms timer.
    fn respond_trying(&mut self) {
        let trying = self.a_response(100, "Trying");
        self.out.push_back(Output::Respond {
            key: self.setup.key,
            resp: trying,
        });
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

    /// Ends the call from the gateway's side: BYE both confirmed dialogs, or answer a ringing
    /// caller with `ringing_status` and cancel the forks.
    fn hang_up(&mut self, now: Instant, ringing_status: Option<u16>) {
        match self.phase {
            Phase::Ringing => {
                let s = ringing_status.unwrap_or(480);
                let r = self.a_response(s, csps_sip::message::reason_phrase(s));
                self.out.push_back(Output::Respond {
                    key: self.setup.key,
                    resp: r,
                });
                self.cancel_forks(now, None);
                self.end_or_linger_at(now);
            }
            Phase::Answered | Phase::Confirmed => {
                self.abandon_transfer();
                self.release_b_ack();
                self.bye_a();
                self.bye_b();
                self.end_or_linger_at(now);
            }
            Phase::Ending | Phase::Ended => {}
        }
    }

    fn bye_a(&mut self) {
        if self.held_by_room(true) {
            return;
        }
        let tag = self.tag();
        let v = via_for(
            self.setup.from.transport,
            self.setup.local,
            self.setup.a_sbc.as_ref(),
            &mut *self.rng,
        );
        if let Some(d) = self.a_dialog.as_mut() {
            let mut req = d.request(Method::Bye, &v);
            if let Some(r) = self.bye_reason {
                req.headers.push("Reason", r);
            }
            self.pending_byes.push(tag);
            self.out.push_back(Output::Send {
                tag,
                to: self.setup.from,
                req,
            });
        }
    }

    fn bye_b(&mut self) {
        if self.held_by_room(false) {
            return;
        }
        if let Some(w) = self.winner {
            self.bye_fork(w);
        }
    }

    fn bye_fork(&mut self, i: usize) {
        if let Some((to, req)) = fork_bye(&mut self.forks[i], self.bye_reason, &mut *self.rng) {
            let tag = self.tag();
            self.pending_byes.push(tag);
            self.out.push_back(Output::Send { tag, to, req });
        }
    }

    fn bye_done(&mut self, tag: u32) {
        self.pending_byes.retain(|t| *t != tag);
        if self.phase == Phase::Ending && self.settled() {
            self.finish();
        }
    }

    /// True when nothing is outstanding: no BYE unanswered, no fork still ringing, no leg
    /// on its way into a room.
    fn settled(&self) -> bool {
        self.pending_byes.is_empty()
            && self.moving.is_none()
            && self.joining.is_none()
            && self
                .forks
                .iter()
                .all(|f| !matches!(f.state, ForkState::Calling | ForkState::Proceeding))
    }

    fn finish(&mut self) {
        if let Some(j) = self.joining.take() {
            // Still no ACK from an offerless replacing phone: its dialog ends with the call.
            self.bye_joining(j.phone);
        }
        if self.phase != Phase::Ended {
            self.phase = Phase::Ended;
            self.out.push_back(Output::Ended);
        }
    }

    fn end_or_linger(&mut self) {
        self.phase = Phase::Ending;
        if self.settled() {
            self.finish();
        }
    }

    fn end_or_linger_at(&mut self, now: Instant) {
        self.linger_deadline = Some(now + LINGER);
        self.end_or_linger();
    }

    fn cancel_forks(&mut self, now: Instant, reason: Option<&'static str>) {
        let _ = now;
        for i in 0..self.forks.len() {
            if Some(i) == self.winner {
                continue;
            }
            if let Some((to, req)) = cancel_fork(&mut self.forks[i], reason) {
                let tag = self.tag();
                self.out.push_back(Output::Send { tag, to, req });
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

    fn on_provisional(&mut self, now: Instant, i: usize, resp: Response) {
        let f = &mut self.forks[i];
        if let Some(tag) = resp.to_tag()
            && !f.early_tags.contains(&tag)
        {
            f.early_tags.push(tag);
        }
        if f.state == ForkState::Calling {
            f.state = ForkState::Proceeding;
            if let Some(reason) = f.cancel {
                let reason = (!reason.is_empty()).then_some(reason);
                let req = dialog::cancel(&f.invite, reason);
                let to = f.target.to;
                let tag = self.tag();
                self.out.push_back(Output::Send { tag, to, req });
                return;
            }
        }
        if self.phase != Phase::Ringing || resp.status == 100 {
            return;
        }
        // Early media: the first device that sends SDP is heard until one answers.
        let early = if is_sdp(&resp.headers, &resp.body) && self.early_media_from.is_none() {
            self.rewritten_answer(i, &resp.body)
        } else {
            None
        };
        let mut r = self.a_response(resp.status, &resp.reason);
        if let Some(body) = early {
            self.early_media_from = Some(i);
            r.headers.push("Content-Type", "application/sdp");
            r.body = body;
        }
        let r = match self.rel1xx.as_mut() {
            Some(rel) => rel.provisional(now, r),
            None => Some(r),
        };
        if let Some(resp) = r {
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp,
            });
        }
    }

    /// The caller's PRACK (RFC 3262) in its early or confirmed dialog: 200 and the next
    /// reliable provisional or the held 2xx; 481 when nothing of ours awaits it.
    fn on_prack(&mut self, now: Instant, key: TxnKey, req: &Request) {
        let inv = &self.setup.invite;
        let ours = req.call_id() == inv.call_id()
            && req.from_tag() == inv.from_tag()
            && req.to_tag().as_deref() == Some(self.a_tag.as_str());
        let (resp, next) = match self.rel1xx.as_mut() {
            Some(rel) if ours => rel.prack(now, req),
            _ => (req.response(481, "Call/Transaction Does Not Exist"), None),
        };
        self.out.push_back(Output::Respond { key, resp });
        if let Some(next) = next {
            if next.status >= 200 && !self.setup.from.transport.is_reliable() {
                // The held 2xx goes out now and is retransmitted until the ACK.
                self.a_ok_next = Some((now + T1, T1, now + LINGER));
            }
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: next,
            });
        }
    }

    /// No PRACK came for a reliable provisional within 64·T1: the caller gets a 5xx (RFC 3262
    /// §3), the answered device (if one answered meanwhile) a BYE.
    fn no_prack(&mut self, now: Instant) {
        tracing::info!("the caller never acknowledged a reliable provisional (PRACK)");
        self.ending(EndReason::Rejected);
        match self.phase {
            Phase::Ringing => self.hang_up(now, Some(500)),
            Phase::Answered if self.a_ok_next.is_none() => {
                // The 2xx was held for the PRACK and never sent.
                self.a_ok = None;
                self.a_dialog = None;
                let r = self.a_response(500, "Server Internal Error");
                self.out.push_back(Output::Respond {
                    key: self.setup.key,
                    resp: r,
                });
                self.bye_b();
                self.end_or_linger_at(now);
            }
            _ => {}
        }
    }

    /// The device's answer, checked against our offer, with the relay's A-side address, and the
    /// relay pointed at the device.
    fn rewritten_answer(&mut self, i: usize, body: &Bytes) -> Option<Bytes> {
        let offer = self.b_offer.as_ref()?;
        let mut answer = Sdp::parse(body).ok()?;
        let idx = sdp::check_answer(offer, &answer).ok()?;
        let rule = self.target_rule(&self.forks[i].target);
        if let Err(e) = self.take_sdes(false, rule, &mut answer, false) {
            tracing::info!("the callee's answer: {e}");
            return None;
        }
        self.b_answer = Some(answer.clone());
        let b_events = answer.media.get(idx).and_then(codecs::telephone_event);
        let transcode = match self.a_origin.as_ref() {
            Some(origin) => match codecs::answer_back(origin, &mut answer, idx) {
                Ok(t) => t,
                Err(e) => {
                    tracing::info!("the callee's answer: {e}");
                    return None;
                }
            },
            None => None,
        };
        let addr = answer.rtp_addr(idx);
        self.out.push_back(Output::Media(MediaChange::B(
            addr,
            self.forks[i].target.to.addr.ip(),
        )));
        self.out
            .push_back(Output::Media(MediaChange::Transcode(transcode)));
        let (a_audio, b_audio) = codecs::audio_clocks(&answer, idx, transcode);
        self.out
            .push_back(Output::Media(MediaChange::Audio(a_audio, b_audio)));
        let a_events = answer.media.get(idx).and_then(codecs::telephone_event);
        self.set_telephone_events(a_events, b_events);
        sdp::rewrite_address(&mut answer, idx, self.setup.relay_a);
        Some(self.answer_body(true, &answer))
    }

    fn on_answer(&mut self, now: Instant, i: usize, resp: Response) {
        let winning = self.winner.is_none() && self.phase == Phase::Ringing;
        // Offerless: the winner's ACK must carry the caller's answer, so it waits for the
        // caller's ACK (a retransmitted 2xx meanwhile is not ACKed without it).
        let hold = self.offerless
            && ((winning && self.forks[i].dialog.is_none())
                || (self.winner == Some(i) && self.b_ack.is_some()));
        let f = &mut self.forks[i];
        let Some((first, to, ack)) = ack_answer(f, &resp, &mut *self.rng) else {
            return;
        };
        if !hold {
            self.out.push_back(Output::Stateless { to, req: ack });
        } else if first {
            self.b_ack = Some((to, ack));
        }
        if !first {
            return;
        }
        f.state = ForkState::Answered;
        if self.winner.is_some() || self.phase != Phase::Ringing {
            // Answered too late (another device won, or the caller left): hang it up.
            self.bye_fork(i);
            self.end_check();
            return;
        }
        let body = if self.offerless {
            self.offer_for_caller(i, &resp)
        } else {
            is_sdp(&resp.headers, &resp.body)
                .then(|| self.rewritten_answer(i, &resp.body))
                .flatten()
        };
        let Some(body) = body else {
            // No usable answer (or offer): the call cannot carry audio.
            self.ending(EndReason::Rejected);
            self.winner = Some(i);
            self.release_b_ack();
            self.bye_b();
            let mut r = self.a_response(488, "Not Acceptable Here");
            let why = if self.offerless {
                "the callee answered without a usable SDP offer"
            } else {
                "the callee answered without a usable SDP answer"
            };
            r.headers.push(
                "Warning",
                csps_sip::validate::warning_value(&self.setup.agent, why),
            );
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: r,
            });
            self.cancel_forks(now, Some(COMPLETED_ELSEWHERE));
            self.end_or_linger_at(now);
            return;
        };
        self.answer_caller(now, i, body, &resp);
    }

    /// Device `i` (fork or replacing phone) answered with `b_ok`: the caller gets the 200 with
    /// `body`, the other devices a CANCEL.
    fn answer_caller(&mut self, now: Instant, i: usize, body: Bytes, b_ok: &Response) {
        self.winner = Some(i);
        let mut ok = self.a_response(200, "OK");
        ok.headers
            .push("Allow", allow_for(self.setup.a_sbc.as_ref()));
        if self.setup.a_sbc.is_none() {
            ok.headers.push("Supported", "replaces");
        }
        self.start_session_timer(now, b_ok, &mut ok);
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.a_dialog = Dialog::uas(&self.setup.invite, &self.a_tag, &self.a_contact);
        // RFC 3262 §3: held while a reliable provisional with SDP awaits its PRACK.
        let send_now = match self.rel1xx.as_mut() {
            Some(rel) => rel.final_ok(ok.clone()).is_some(),
            None => true,
        };
        if send_now {
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: ok.clone(),
            });
        }
        if !self.setup.from.transport.is_reliable() {
            self.a_ok = Some(ok);
            if send_now {
                self.a_ok_next = Some((now + T1, T1, now + LINGER));
            }
        }
        self.phase = Phase::Answered;
        self.ring_deadline = None;
        self.out.push_back(Output::Answered);
        self.cancel_forks(now, Some(COMPLETED_ELSEWHERE));
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

    /// Offerless: the answering device `i`'s offer in its 2xx, restricted to what the gateway
    /// relays and pointed at the relay's A side, for the 200 to the caller.
    fn offer_for_caller(&mut self, i: usize, resp: &Response) -> Option<Bytes> {
        if !is_sdp(&resp.headers, &resp.body) {
            return None;
        }
        let mut offer = Sdp::parse(&resp.body).ok()?;
        let rule = self.target_rule(&self.forks[i].target);
        self.take_sdes(false, rule, &mut offer, true).ok()?;
        let addr = offer.audio_index().and_then(|x| offer.rtp_addr(x));
        let idx = sdp::restrict_offer(&mut offer, sdp::SUPPORTED).ok()?;
        // What B can receive: the offer a transfer of A's side makes.
        self.b_answer = Some(offer.clone());
        // Codecs not chosen here: DTMF passes through as it is.
        self.telephone_events = (None, None);
        self.out.push_back(Output::Media(MediaChange::B(
            addr,
            self.forks[i].target.to.addr.ip(),
        )));
        sdp::rewrite_address(&mut offer, idx, self.setup.relay_a);
        let body = self.offer_body(true, self.srtp_rule(true), &offer);
        self.a_offer = Some(offer);
        Some(body)
    }

    /// Offerless: the caller's ACK carries its answer, which goes on in the ACK held for the
    /// answering device; an ACK without a usable answer ends the call (§13.2.2.4: ACK, then
    /// BYE).
    fn answer_in_ack(&mut self, now: Instant, ack: &Request, offer: &Sdp) {
        let answer = self
            .answer_to(true, self.srtp_rule(true), offer, ack)
            .map(|(mut a, idx)| {
                let addr = a.rtp_addr(idx);
                sdp::rewrite_address(&mut a, idx, self.setup.relay_b);
                (addr, a)
            });
        let Some((addr, answer)) = answer else {
            tracing::info!("the caller's ACK carries no usable answer to the callee's offer");
            self.ending(EndReason::Rejected);
            self.hang_up(now, None);
            return;
        };
        self.telephone_events = (None, None);
        self.out.push_back(Output::Media(MediaChange::A(
            addr,
            self.setup.from.addr.ip(),
        )));
        let body = self.answer_body(false, &answer);
        // What A can receive, facing B: the offer a transfer of B's side makes.
        self.b_offer = Some(answer);
        if let Some((to, mut req)) = self.b_ack.take() {
            req.headers.push("Content-Type", "application/sdp");
            req.body = body;
            self.out.push_back(Output::Stateless { to, req });
        }
    }

    /// The answer in `ack` (an ACK to a 2xx that carried `offer`) from leg A's side (`a`) or
    /// B's, checked against the offer, its SDES taken under `rule` (the relay's keys for that
    /// side), and its audio section; `None` when the ACK has no usable answer.
    fn answer_to(
        &mut self,
        a: bool,
        rule: LegSrtp,
        offer: &Sdp,
        ack: &Request,
    ) -> Option<(Sdp, usize)> {
        if !is_sdp(&ack.headers, &ack.body) {
            return None;
        }
        let mut answer = Sdp::parse(&ack.body).ok()?;
        let idx = sdp::check_answer(offer, &answer).ok()?;
        self.take_sdes(a, rule, &mut answer, false).ok()?;
        Some((answer, idx))
    }

    /// Sends the held ACK to the answering device as it is (the call is being torn down).
    fn release_b_ack(&mut self) {
        if let Some((to, req)) = self.b_ack.take() {
            self.out.push_back(Output::Stateless { to, req });
        }
    }

    /// RFC 4028 §9 for the 2xx to the caller: the callee's negotiated interval and refresher
    /// when it sent one, else (a caller that supports timers and asked for them) the caller's
    /// interval with the caller as refresher; the gateway then times the session.
    fn start_session_timer(&mut self, now: Instant, b_ok: &Response, a_ok: &mut Response) {
        let inv = &self.setup.invite.headers;
        let negotiated = match session_expires(&b_ok.headers) {
            Some((se, refresher)) => Some((se.max(MIN_SE), refresher.unwrap_or("uas".into()))),
            None if supports_timer(inv) => {
                session_expires(inv).map(|(se, _)| (se.max(MIN_SE), "uac".to_owned()))
            }
            None => None,
        };
        let Some((se, refresher)) = negotiated else {
            return;
        };
        a_ok.headers
            .push("Session-Expires", format!("{se};refresher={refresher}"));
        if supports_timer(inv) {
            a_ok.headers.push("Require", "timer");
        }
        let interval = Duration::from_secs(u64::from(se));
        self.session = Some((interval, now + interval));
    }

    /// A session refresh went through (a relayed re-INVITE/UPDATE answered 2xx, or an UPDATE
    /// without offer): the session lives another interval, the one in the 2xx when it names one.
    fn refreshed(&mut self, now: Instant, ok: Option<&Response>) {
        if let Some((interval, deadline)) = self.session.as_mut() {
            if let Some((se, _)) = ok.and_then(|r| session_expires(&r.headers)) {
                *interval = Duration::from_secs(u64::from(se.max(MIN_SE)));
            }
            *deadline = now + *interval;
        }
    }

    fn end_check(&mut self) {
        if self.phase == Phase::Ending && self.settled() {
            self.finish();
        }
    }

    fn fork_failed(&mut self, now: Instant, i: usize, status: u16) {
        let f = &mut self.forks[i];
        if matches!(f.state, ForkState::Answered | ForkState::Done(_)) {
            return;
        }
        f.state = ForkState::Done(status);
        if self.phase == Phase::Ringing
            && let Some(s) = all_refused(&self.forks)
        {
            let r = self.a_response(s, csps_sip::message::reason_phrase(s));
            self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp: r,
            });
            self.ending(EndReason::CalleeRefused);
            self.end_or_linger_at(now);
            return;
        }
        self.end_check();
    }

    /// Which leg a request inside the call comes from: leg A (`true`) or the fork whose dialog
    /// it names; `None` after answering it (481 outside the call's dialogs, 500 for a CSeq out
    /// of order, 200 for the BYE of a transferor that already left).
    fn leg_of(&mut self, key: TxnKey, req: &Request) -> Option<(bool, Option<usize>)> {
        let from_a = self.a_dialog.as_ref().is_some_and(|d| d.matches(req));
        let fork = self
            .forks
            .iter()
            .position(|f| f.dialog.as_ref().is_some_and(|d| d.matches(req)));
        if !from_a && fork.is_none() {
            let r = if req.method == Method::Bye && self.former.iter().any(|d| d.matches(req)) {
                req.response(200, "OK")
            } else {
                req.response(481, "Call/Transaction Does Not Exist")
            };
            self.out.push_back(Output::Respond { key, resp: r });
            return None;
        }
        let seq_ok = if from_a {
            self.a_dialog
                .as_mut()
                .is_some_and(|d| d.accept_remote_seq(req))
        } else {
            fork.and_then(|i| self.forks[i].dialog.as_mut())
                .is_some_and(|d| d.accept_remote_seq(req))
        };
        if !seq_ok {
            let r = req.response(500, "Server Internal Error");
            self.out.push_back(Output::Respond { key, resp: r });
            return None;
        }
        Some((from_a, fork))
    }

    fn on_request(&mut self, now: Instant, key: TxnKey, _from: Remote, req: Request) {
        if req.method == Method::Prack {
            return self.on_prack(now, key, &req);
        }
        let Some((from_a, fork)) = self.leg_of(key, &req) else {
            return;
        };
        match req.method {
            Method::Bye => {
                self.out.push_back(Output::Respond {
                    key,
                    resp: req.response(200, "OK"),
                });
                if self.transferor_left(from_a, fork) {
                    return;
                }
                if matches!(self.phase, Phase::Answered | Phase::Confirmed)
                    && (from_a || fork == self.winner)
                {
                    self.abandon_transfer();
                    self.release_b_ack();
                }
                if matches!(self.phase, Phase::Answered | Phase::Confirmed) {
                    if from_a {
                        self.bye_b();
                    } else if fork == self.winner {
                        self.bye_a();
                    } else if let Some(i) = fork {
                        // A late fork that we are already hanging up.
                        let _ = i;
                    }
                    if from_a || fork == self.winner {
                        self.ending(if from_a {
                            EndReason::CallerHungUp
                        } else {
                            EndReason::CalleeHungUp
                        });
                        self.a_ok = None;
                        self.a_ok_next = None;
                        self.end_or_linger_at(now);
                    }
                }
            }
            Method::Options => {
                self.out.push_back(Output::Respond {
                    key,
                    resp: req.response(200, "OK"),
                });
            }
            Method::Invite | Method::Update | Method::Info
                if !from_a && (fork != self.winner || self.winner.is_none()) =>
            {
                // A device that lost the race (being hung up) has no session to modify.
                let r = req.response(481, "Call/Transaction Does Not Exist");
                self.out.push_back(Output::Respond { key, resp: r });
            }
            Method::Invite | Method::Update | Method::Info if self.moving.is_some() => {
                // The other party is being moved into a room: nothing to modify or relay to.
                let r = req.response(491, "Request Pending");
                self.out.push_back(Output::Respond { key, resp: r });
            }
            Method::Invite | Method::Update => self.on_reoffer(now, key, from_a, req),
            Method::Info => self.on_info(key, from_a, req),
            _ => {
                let mut r = req.response(501, "Not Implemented");
                r.headers.push("Allow", super::ALLOW_IN_DIALOG);
                self.out.push_back(Output::Respond { key, resp: r });
            }
        }
    }

    /// Builds a request in the dialog of leg A (`to_a`) or of the answered device, sends it, and
    /// returns its tag and CSeq number; `None` when that dialog does not exist.
    fn send_in_dialog(
        &mut self,
        to_a: bool,
        method: Method,
        content_type: Option<&str>,
        body: Bytes,
        timer_headers: Option<&Headers>,
        extra: &[(&str, &str)],
    ) -> Option<(u32, u32)> {
        if self.held_by_room(to_a) {
            return None;
        }
        let tag = self.tag();
        let allow = if to_a {
            allow_for(self.setup.a_sbc.as_ref())
        } else {
            allow_for(self.winner.and_then(|w| self.forks[w].target.sbc.as_ref()))
        };
        let (via, to, d) = if to_a {
            let v = via_for(
                self.setup.from.transport,
                self.setup.local,
                self.setup.a_sbc.as_ref(),
                &mut *self.rng,
            );
            (v, self.setup.from, self.a_dialog.as_mut()?)
        } else {
            let w = self.winner?;
            let v = via(&self.forks[w].target, &mut *self.rng);
            let f = &mut self.forks[w];
            (v, f.target.to, f.dialog.as_mut()?)
        };
        let mut req = d.request(method, &via);
        let seq = d.local_seq;
        if matches!(req.method, Method::Invite | Method::Update) {
            req.headers.push("Allow", allow);
        }
        if let Some(h) = timer_headers {
            copy_timer_headers(h, &mut req.headers);
        }
        for (name, value) in extra {
            req.headers.push(name, *value);
        }
        if let Some(ct) = content_type.filter(|_| !body.is_empty()) {
            req.headers.push("Content-Type", ct);
        }
        req.body = body;
        self.out.push_back(Output::Send { tag, to, req });
        Some((tag, seq))
    }

    /// The ACK for a 2xx to our re-INVITE with CSeq `seq`, in leg A's (`to_a`) or B's dialog.
    fn ack_in_dialog(&mut self, to_a: bool, seq: u32, body: Option<Bytes>) {
        if self.held_by_room(to_a) {
            return;
        }
        let (via, to, d) = if to_a {
            let v = via_for(
                self.setup.from.transport,
                self.setup.local,
                self.setup.a_sbc.as_ref(),
                &mut *self.rng,
            );
            (v, self.setup.from, self.a_dialog.as_ref())
        } else {
            let Some(w) = self.winner else { return };
            let v = via(&self.forks[w].target, &mut *self.rng);
            let f = &self.forks[w];
            (v, f.target.to, f.dialog.as_ref())
        };
        let Some(d) = d else { return };
        let mut ack = d.ack(seq, &via);
        if let Some(b) = body {
            ack.headers.push("Content-Type", "application/sdp");
            ack.body = b;
        }
        self.out.push_back(Output::Stateless { to, req: ack });
    }

    /// The relay change for leg A (`a`) or the answered device.
    fn media_for(&mut self, a: bool, addr: Option<SocketAddr>) {
        let change = if a {
            MediaChange::A(addr, self.setup.from.addr.ip())
        } else {
            let Some(w) = self.winner else { return };
            MediaChange::B(addr, self.forks[w].target.to.addr.ip())
        };
        self.out.push_back(Output::Media(change));
    }

    /// The SRTP rule of leg A (`a`) or of the answered device.
    fn srtp_rule(&self, a: bool) -> LegSrtp {
        if a {
            self.setup
                .srtp
                .leg(self.setup.from.transport, self.setup.a_sbc.is_some())
        } else {
            self.winner
                .map_or(LegSrtp::Off, |w| self.target_rule(&self.forks[w].target))
        }
    }

    /// The SRTP rule of a device to ring.
    fn target_rule(&self, t: &Target) -> LegSrtp {
        self.setup.srtp.leg(t.to.transport, t.sbc.is_some())
    }

    fn sdes_mut(&mut self, a: bool) -> &mut Sdes {
        if a {
            &mut self.sdes_a
        } else {
            &mut self.sdes_b
        }
    }

    /// A description from leg A (`a`) or B, an offer (`offer`) or an answer: the SDES line
    /// taken (or a 488) and, for an answer, the relay's keys for that side; `sdp` is left
    /// neutral for the other leg.
    fn take_sdes(
        &mut self,
        a: bool,
        rule: LegSrtp,
        sdp: &mut Sdp,
        offer: bool,
    ) -> Result<(), sdp::OfferError> {
        let Some(m) = sdp.audio_index().and_then(|i| sdp.media.get_mut(i)) else {
            // No audio: restrict_offer or check_answer says so.
            return Ok(());
        };
        let sdes = self.sdes_mut(a);
        if offer {
            sdes.take_offer(rule, m)
        } else {
            sdes.take_answer(rule, m)
        }
    }

    /// The neutral `offer` as the gateway offers it to leg A (`a`) or B under `rule`.
    /// Prepares the offer of leg A (`from_a`) or the answered device for the other leg: only
    /// the codecs the gateway knows (G.711 alone from a phone under `Use8KHz`), then the
    /// transcodable ones it lacks added. Returns the audio section's index and the offer as it
    /// was before the additions, which its answer is made from ([`codecs::answer_back`]).
    fn offer_onwards(
        &self,
        from_a: bool,
        offer: &mut Sdp,
    ) -> Result<(usize, Sdp), sdp::OfferError> {
        let idx = sdp::restrict_offer(offer, sdp::SUPPORTED)?;
        if self.setup.narrowband && self.is_phone(from_a) {
            codecs::narrowband(offer, idx)?;
        }
        let origin = offer.clone();
        codecs::augment(offer, idx);
        Ok((idx, origin))
    }

    /// The offer for a leg: under `Use8KHz` a phone leg is offered G.711 only (the gateway
    /// added it to every offer, so some is there).
    fn offer_for(&self, phone: bool, offer: &Sdp) -> Sdp {
        let mut o = offer.clone();
        if self.setup.narrowband
            && phone
            && let Some(i) = o.audio_index()
            && codecs::narrowband(&mut o, i).is_err()
        {
            // No G.711 in it: the phone refuses what it cannot take, as without the setting.
            return offer.clone();
        }
        o
    }

    /// How the gateway names itself on leg A (`a`) or the answered device when that leg is
    /// the Teams trunk.
    fn sbc_of(&self, a: bool) -> Option<&Sbc> {
        if a {
            self.setup.a_sbc.as_ref()
        } else {
            self.winner
                .and_then(|w| self.forks.get(w))
                .and_then(|f| f.target.sbc.as_ref())
        }
    }

    /// True when leg A (`a`) or the answered device is a phone (not the Teams trunk).
    fn is_phone(&self, a: bool) -> bool {
        self.sbc_of(a).is_none()
    }

    fn offer_body(&self, a: bool, rule: LegSrtp, offer: &Sdp) -> Bytes {
        let mut o = offer.clone();
        let sdes = if a { &self.sdes_a } else { &self.sdes_b };
        if let Some(m) = o.audio_index().and_then(|i| o.media.get_mut(i)) {
            sdes.give_offer(rule, m);
        }
        Bytes::from(o.to_bytes())
    }

    /// The neutral `answer` as the gateway answers leg A's (`a`) or B's last offer with it.
    fn answer_body(&mut self, a: bool, answer: &Sdp) -> Bytes {
        let mut o = answer.clone();
        if let Some(m) = o.audio_index().and_then(|i| o.media.get_mut(i)) {
            self.sdes_mut(a).give_answer(m);
        }
        Bytes::from(o.to_bytes())
    }

    /// Tells the relay about SDES keys that changed since the last call.
    fn flush_srtp(&mut self) {
        for a in [true, false] {
            let now = if a { &self.sdes_a } else { &self.sdes_b }.keys();
            let sent = if a {
                &mut self.srtp_sent.0
            } else {
                &mut self.srtp_sent.1
            };
            // Runs after every round of the call task, packets included: compare, clone only
            // on a change.
            if sent.as_ref() != now {
                let now = now.cloned();
                let fresh = sent.is_none() && now.is_some();
                sent.clone_from(&now);
                self.out.push_back(Output::Srtp { a, keys: now });
                let transport = if a {
                    Some(self.setup.from.transport)
                } else {
                    self.winner.map(|w| self.forks[w].target.to.transport)
                };
                if fresh && transport.is_some_and(|t| t != Transport::Tls) {
                    tracing::warn!(
                        leg = if a { "A" } else { "B" },
                        "SRTP keys crossed unencrypted signalling (Data.SipConfig.SrtpOverPlainTransport)"
                    );
                }
            }
        }
    }

    /// Whether leg A (`a`) or B speaks SRTP now.
    pub fn srtp(&self, a: bool) -> bool {
        if a { &self.sdes_a } else { &self.sdes_b }.keys().is_some()
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

    /// The early dialog a call pickup can name (see [`Call::named_by`]): the first ringing
    /// phone fork with a tagged provisional, as (Call-ID, the device's tag, the gateway's tag).
    pub fn early_dialog(&self) -> Option<(String, String, String)> {
        if self.phase != Phase::Ringing {
            return None;
        }
        self.forks.iter().find_map(|f| {
            let ringing =
                f.state == ForkState::Proceeding && f.cancel.is_none() && f.target.sbc.is_none();
            let device = f.early_tags.first().filter(|_| ringing)?;
            let gateway = f.invite.from_hdr()?.tag()?.to_owned();
            Some((f.invite.call_id()?.to_owned(), device.clone(), gateway))
        })
    }

    /// The call's confirmed legs (A first) as their devices hold the dialogs; empty before the
    /// answer. Teams legs are left out: the trunk is not a device a Replaces could reach.
    pub fn dialogs(&self) -> Vec<LegDialog> {
        let mut legs = Vec::with_capacity(2);
        if let Some(d) = &self.a_dialog
            && self.setup.a_sbc.is_none()
        {
            legs.push(LegDialog {
                call_id: d.call_id.clone(),
                gateway_tag: d.local_tag.clone(),
                device_tag: d.remote_tag.clone(),
                target: Target {
                    to: self.setup.from,
                    uri: d.remote_target.clone(),
                    local: self.setup.local,
                    sbc: None,
                },
                party: self.setup.caller.clone(),
            });
        }
        if let Some(f) = self.winner.and_then(|w| self.forks.get(w))
            && let Some(d) = &f.dialog
            && f.target.sbc.is_none()
        {
            legs.push(LegDialog {
                call_id: d.call_id.clone(),
                gateway_tag: d.local_tag.clone(),
                device_tag: d.remote_tag.clone(),
                target: Target {
                    uri: d.remote_target.clone(),
                    ..f.target.clone()
                },
                party: self.setup.callee.clone(),
            });
        }
        legs
    }

    /// The relay's address facing leg A (`a`) or B.
    fn relay_facing(&self, a: bool) -> SocketAddr {
        if a {
            self.setup.relay_a
        } else {
            self.setup.relay_b
        }
    }

    /// Music on hold, for a re-offer from leg A (`from_a`) whose audio is `offer.media[idx]`:
    /// a hold (`sendonly`, `inactive`) that says `inactive` goes on as `sendonly`, since the
    /// gateway will send the held leg music; anything else ends the music to the other leg.
    fn hold_offer(&mut self, from_a: bool, offer: &mut Sdp, idx: usize) {
        if !self.setup.music_on_hold {
            return;
        }
        let session = offer.session_direction();
        let Some(m) = offer.media.get_mut(idx) else {
            return;
        };
        match m.direction(session) {
            sdp::Direction::Inactive => m.set_direction(sdp::Direction::SendOnly),
            sdp::Direction::SendOnly => {}
            _ => self.music_off(!from_a),
        }
    }

    /// Stops the music to leg A (`a`) or B (when music on hold is on).
    fn music_off(&mut self, a: bool) {
        if self.setup.music_on_hold {
            self.out.push_back(Output::MusicOnHold { a, format: None });
        }
    }

    /// With music on hold on, whether the re-offer `req` holds the other leg: `Some(true)` for
    /// `inactive` (the answer must say `inactive` back), `Some(false)` for `sendonly`.
    fn music_on_hold_for(&self, req: &Request) -> Option<bool> {
        if !self.setup.music_on_hold {
            return None;
        }
        let offer = Sdp::parse(&req.body).ok()?;
        match offer.audio()?.direction(offer.session_direction()) {
            sdp::Direction::Inactive => Some(true),
            sdp::Direction::SendOnly => Some(false),
            _ => None,
        }
    }

    /// The held leg A (`a`) or B answered a hold with `answer`: the music starts in its first
    /// audio format if it receives at all; an answer to an `inactive` hold goes back
    /// `inactive` (RFC 3264 §6.1), though the held leg answered the `sendonly` it was sent.
    fn held_answer(&mut self, a: bool, answer: &mut Sdp, idx: usize, inactive: bool) {
        let session = answer.session_direction();
        let Some(m) = answer.media.get_mut(idx) else {
            return;
        };
        let receives = matches!(
            m.direction(session),
            sdp::Direction::RecvOnly | sdp::Direction::SendRecv
        );
        let format = receives
            .then(|| crate::media::moh::format_for(m.codecs()))
            .flatten();
        if inactive {
            m.set_direction(sdp::Direction::Inactive);
        }
        self.out.push_back(Output::MusicOnHold { a, format });
    }

    /// A re-INVITE or UPDATE from one leg (hold, resume, a new address, a session refresh):
    /// relayed to the other leg with the relay's address in its SDP; that leg's answer comes
    /// back the same way (RFC 3264 §8). Direction attributes pass through unchanged, so a
    /// phone's `sendonly` reaches the other phone, which answers `recvonly`.
    fn on_reoffer(&mut self, now: Instant, key: TxnKey, from_a: bool, req: Request) {
        let respond = |this: &mut Call, status: u16, warning: Option<&str>| {
            let mut r = this.refusal(&req, status, warning);
            if status == 500 {
                // §14.2: the origin's earlier request is still being answered.
                r.headers.push("Retry-After", "1");
            }
            this.out.push_back(Output::Respond { key, resp: r });
        };
        if let Some(p) = &self.reoffer {
            // §14.1: glare when our own request to this leg is pending; §14.2: 500 with
            // Retry-After when this leg's previous one is still in progress.
            let status = if p.from_a == from_a { 500 } else { 491 };
            respond(self, status, None);
            return;
        }
        if self.own_offer.as_ref().is_some_and(|o| !o.acked) || self.joining.is_some() {
            // The gateway's own re-INVITE to this call is pending (§14.1), or a phone is about
            // to take a leg's place.
            respond(self, 491, None);
            return;
        }
        if self.phase != Phase::Confirmed {
            // The initial INVITE's ACK is still outstanding: the session is not settled yet.
            respond(self, 491, None);
            return;
        }
        let has_body = !req.body.is_empty();
        if has_body && !is_sdp(&req.headers, &req.body) {
            let mut r = req.response(415, "Unsupported Media Type");
            r.headers.push("Accept", "application/sdp");
            self.out.push_back(Output::Respond { key, resp: r });
            return;
        }
        if !has_body && req.method == Method::Update {
            // An UPDATE without an offer only refreshes the session (RFC 3311 §5.2, RFC 4028).
            let mut r = req.response(200, "OK");
            r.headers.push("Contact", self.contact_towards(from_a));
            if let Some((interval, _)) = self.session {
                let secs = session_expires(&req.headers)
                    .map(|(se, _)| se.max(MIN_SE))
                    .unwrap_or(interval.as_secs() as u32);
                r.headers
                    .push("Session-Expires", format!("{secs};refresher=uac"));
                r.headers.push("Require", "timer");
                self.session = Some((
                    Duration::from_secs(u64::from(secs)),
                    now + Duration::from_secs(u64::from(secs)),
                ));
            }
            self.out.push_back(Output::Respond { key, resp: r });
            return;
        }
        let (offer, origin_addr, body, origin) = if has_body {
            let mut offer = match Sdp::parse(&req.body) {
                Ok(s) => s,
                Err(e) => {
                    respond(self, 400, Some(&format!("bad SDP: {e}")));
                    return;
                }
            };
            if let Err(e) = self.take_sdes(from_a, self.srtp_rule(from_a), &mut offer, true) {
                respond(self, e.status(), Some(&e.to_string()));
                return;
            }
            let origin_addr = offer.audio_index().and_then(|i| offer.rtp_addr(i));
            let (idx, origin) = match self.offer_onwards(from_a, &mut offer) {
                Ok(x) => x,
                Err(e) => {
                    respond(self, e.status(), Some(&e.to_string()));
                    return;
                }
            };
            sdp::rewrite_address(&mut offer, idx, self.relay_facing(!from_a));
            self.hold_offer(from_a, &mut offer, idx);
            let offer = self.offer_for(self.is_phone(!from_a), &offer);
            let body = self.offer_body(!from_a, self.srtp_rule(!from_a), &offer);
            (Some(offer), origin_addr, body, Some(origin))
        } else {
            self.music_off(!from_a);
            (None, None, Bytes::new(), None)
        };
        let method = req.method.clone();
        let Some((tag, seq)) = self.send_in_dialog(
            !from_a,
            method.clone(),
            Some("application/sdp"),
            body,
            Some(&req.headers),
            &[],
        ) else {
            respond(self, 481, None);
            return;
        };
        self.reoffer = Some(ReOffer {
            from_a,
            key,
            method,
            req,
            tag,
            seq,
            offer,
            origin_addr,
            origin,
            answered: None,
        });
    }

    /// Our Contact in the dialog with leg A (`a`) or B.
    fn contact_towards(&self, a: bool) -> String {
        if a {
            self.a_contact.clone()
        } else {
            self.winner
                .map(|w| {
                    contact_for(
                        self.forks[w].target.to.transport,
                        self.forks[w].target.local,
                        self.forks[w].target.sbc.as_ref(),
                    )
                })
                .unwrap_or_default()
        }
    }

    /// The relayed re-INVITE/UPDATE failed (non-2xx, timeout): the origin gets `status`, and the
    /// session stays as it was (§14.1).
    fn reoffer_failed(&mut self, status: u16, reason: &str) {
        let Some(p) = self.reoffer.take() else { return };
        let mut r = p.req.response(status, reason);
        if status == 491 {
            // The target saw glare too; the origin retries after its own random wait (§14.1).
            r.headers.push("Retry-After", "1");
        }
        self.out.push_back(Output::Respond {
            key: p.key,
            resp: r,
        });
    }

    fn on_reoffer_response(&mut self, now: Instant, resp: Response) {
        let Some(p) = self.reoffer.as_ref() else {
            return;
        };
        let (from_a, is_invite, seq) = (p.from_a, p.method == Method::Invite, p.seq);
        if resp.status < 200 {
            return;
        }
        if resp.status >= 300 {
            self.reoffer_failed(resp.status, &resp.reason);
            return;
        }
        if is_invite && p.answered.is_some() {
            // A retransmitted 2xx: our ACK got lost, send it again (for an offerless one the
            // ACK waits for the origin's, which carries the answer).
            if p.offer.is_some() {
                self.ack_in_dialog(!from_a, seq, None);
            }
            return;
        }
        let body_ok = is_sdp(&resp.headers, &resp.body);
        let Some(p) = self.reoffer.as_ref() else {
            return;
        };
        let sent = p.offer.clone();
        let origin_holds = self.music_on_hold_for(&p.req);
        let origin = p.origin.clone();
        let result: Result<(Bytes, Option<Sdp>), String> = match sent.as_ref() {
            // The target's answer to the relayed offer.
            Some(offer) if body_ok => Sdp::parse(&resp.body)
                .map_err(|e| format!("bad SDP answer: {e}"))
                .and_then(|mut answer| {
                    let idx = sdp::check_answer(offer, &answer).map_err(|e| e.to_string())?;
                    self.take_sdes(!from_a, self.srtp_rule(!from_a), &mut answer, false)
                        .map_err(|e| e.to_string())?;
                    if let Some(inactive) = origin_holds {
                        self.held_answer(!from_a, &mut answer, idx, inactive);
                    }
                    let target_events = answer.media.get(idx).and_then(codecs::telephone_event);
                    let transcode = match origin.as_ref() {
                        Some(o) => codecs::answer_back(o, &mut answer, idx)
                            .map_err(|e| e.to_string())?
                            // (origin's, target's) → (A's, B's).
                            .map(|(near, far)| if from_a { (near, far) } else { (far, near) }),
                        None => None,
                    };
                    let target_addr = answer.rtp_addr(idx);
                    sdp::rewrite_address(
                        &mut answer,
                        idx,
                        if from_a {
                            self.setup.relay_a
                        } else {
                            self.setup.relay_b
                        },
                    );
                    self.out.push_back(Output::Media(if from_a {
                        match self.winner {
                            Some(w) => {
                                MediaChange::B(target_addr, self.forks[w].target.to.addr.ip())
                            }
                            None => return Err("no answered device".into()),
                        }
                    } else {
                        MediaChange::A(target_addr, self.setup.from.addr.ip())
                    }));
                    self.out
                        .push_back(Output::Media(MediaChange::Transcode(transcode)));
                    let (a_audio, b_audio) = codecs::audio_clocks(&answer, idx, transcode);
                    self.out
                        .push_back(Output::Media(MediaChange::Audio(a_audio, b_audio)));
                    let origin_events = answer.media.get(idx).and_then(codecs::telephone_event);
                    if from_a {
                        self.set_telephone_events(origin_events, target_events);
                    } else {
                        self.set_telephone_events(target_events, origin_events);
                    }
                    Ok((self.answer_body(from_a, &answer), None))
                }),
            Some(_) => Err("the answer carries no SDP".into()),
            // Offerless re-INVITE: the target's 2xx carries the offer for the origin.
            None if body_ok && is_invite => Sdp::parse(&resp.body)
                .map_err(|e| format!("bad SDP offer: {e}"))
                .and_then(|mut offer| {
                    self.take_sdes(!from_a, self.srtp_rule(!from_a), &mut offer, true)
                        .map_err(|e| e.to_string())?;
                    let target_addr = offer.audio_index().and_then(|i| offer.rtp_addr(i));
                    let idx = sdp::restrict_offer(&mut offer, sdp::SUPPORTED)
                        .map_err(|e| e.to_string())?;
                    self.telephone_events = (None, None);
                    self.out.push_back(Output::Media(if from_a {
                        match self.winner {
                            Some(w) => {
                                MediaChange::B(target_addr, self.forks[w].target.to.addr.ip())
                            }
                            None => return Err("no answered device".into()),
                        }
                    } else {
                        MediaChange::A(target_addr, self.setup.from.addr.ip())
                    }));
                    sdp::rewrite_address(
                        &mut offer,
                        idx,
                        if from_a {
                            self.setup.relay_a
                        } else {
                            self.setup.relay_b
                        },
                    );
                    Ok((
                        self.offer_body(from_a, self.srtp_rule(from_a), &offer),
                        Some(offer),
                    ))
                }),
            None => Err("the 2xx to an offerless re-INVITE carries no offer".into()),
        };
        let (body, offer_to_origin) = match result {
            Ok(x) => x,
            Err(why) => {
                // The target took a session description the origin cannot be given: the
                // target's transaction is completed, the origin learns why and keeps its
                // session (§14.1).
                tracing::info!("re-offer failed: {why}");
                if is_invite {
                    self.ack_in_dialog(!from_a, seq, None);
                }
                let Some(p) = self.reoffer.take() else { return };
                let mut r = p.req.response(488, "Not Acceptable Here");
                r.headers.push(
                    "Warning",
                    csps_sip::validate::warning_value(&self.setup.agent, &why),
                );
                self.out.push_back(Output::Respond {
                    key: p.key,
                    resp: r,
                });
                return;
            }
        };
        let Some(p) = self.reoffer.as_ref() else {
            return;
        };
        let origin_addr = p.origin_addr;
        let mut ok = p.req.response(200, "OK");
        ok.headers.push("Contact", self.contact_towards(from_a));
        ok.headers.push("Allow", super::ALLOW_IN_DIALOG);
        copy_timer_headers(&resp.headers, &mut ok.headers);
        if resp
            .headers
            .get("Require")
            .is_some_and(|r| r.contains("timer"))
        {
            ok.headers.push("Require", "timer");
        }
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        let key = p.key;
        let cseq = p.req.cseq().map(|c| c.seq).unwrap_or(0);
        self.refreshed(now, Some(&resp));
        if origin_addr.is_some() {
            self.media_for(from_a, origin_addr);
        }
        self.out.push_back(Output::Respond {
            key,
            resp: ok.clone(),
        });
        if !is_invite {
            self.reoffer = None;
            return;
        }
        let offerless = offer_to_origin.is_some();
        if !offerless {
            // With an offer relayed, the target's 2xx is ACKed at once.
            self.ack_in_dialog(!from_a, seq, None);
        }
        let reliable = if from_a {
            self.setup.from.transport.is_reliable()
        } else {
            self.winner
                .is_some_and(|w| self.forks[w].target.to.transport.is_reliable())
        };
        if let Some(p) = self.reoffer.as_mut() {
            p.answered = Some(Answered {
                cseq,
                resp: ok,
                offer_to_origin,
                next: (!reliable).then_some((now + T1, T1, now + LINGER)),
            });
        }
    }

    /// The origin's ACK to the 2xx of a relayed re-INVITE; for an offerless one it carries the
    /// answer, which goes on in the ACK to the target.
    fn on_reoffer_ack(&mut self, ack: Request) {
        let Some(p) = self.reoffer.as_ref() else {
            return;
        };
        let Some(a) = p.answered.as_ref() else { return };
        let in_dialog = if p.from_a {
            self.a_dialog.as_ref().is_some_and(|d| d.matches(&ack))
        } else {
            self.winner
                .and_then(|w| self.forks[w].dialog.as_ref())
                .is_some_and(|d| d.matches(&ack))
        };
        if !in_dialog || ack.cseq().map(|c| c.seq) != Some(a.cseq) {
            return;
        }
        let Some(p) = self.reoffer.take() else { return };
        let Some(a) = p.answered else { return };
        let Some(offer) = a.offer_to_origin else {
            return;
        };
        let answer = self
            .answer_to(p.from_a, self.srtp_rule(p.from_a), &offer, &ack)
            .map(|(mut answer, idx)| {
                let addr = answer.rtp_addr(idx);
                self.telephone_events = (None, None);
                self.media_for(p.from_a, addr);
                sdp::rewrite_address(&mut answer, idx, self.relay_facing(!p.from_a));
                self.answer_body(!p.from_a, &answer)
            });
        if answer.is_none() {
            tracing::info!("the ACK to an offerless re-INVITE carries no usable answer");
        }
        self.ack_in_dialog(!p.from_a, p.seq, answer);
    }

    /// Records the telephone-event each leg negotiated and tells the relay.
    fn set_telephone_events(&mut self, a: TelephoneEvent, b: TelephoneEvent) {
        self.telephone_events = (a, b);
        self.out.push_back(Output::Media(MediaChange::Dtmf(a, b)));
    }

    /// An INFO from leg A (`from_a`) or B. DTMF from a leg without telephone-event to a leg
    /// with it is interworked: answered here (200, or 400 for a body naming no digit) and
    /// played to the other leg as RFC 4733 events. Anything else is relayed.
    fn on_info(&mut self, key: TxnKey, from_a: bool, req: Request) {
        let (own, other) = if from_a {
            self.telephone_events
        } else {
            (self.telephone_events.1, self.telephone_events.0)
        };
        let ct = req.headers.get("Content-Type").unwrap_or("");
        if own.is_some() || other.is_none() || !dtmf::is_dtmf_type(ct) {
            return self.relay_info(key, from_a, req);
        }
        let resp = match dtmf::parse_info(ct, &req.body) {
            Ok(digit) => {
                self.out.push_back(Output::Dtmf {
                    to_a: !from_a,
                    digit,
                });
                req.response(200, "OK")
            }
            Err(e) => self.refusal(&req, e.status(), Some(&e.to_string())),
        };
        self.out.push_back(Output::Respond { key, resp });
    }

    /// A digit read from leg A's (`from_a`) or B's RFC 4733 events, sent to the other leg as
    /// an INFO `application/dtmf-relay` when that leg has no telephone-event.
    fn digit_as_info(&mut self, from_a: bool, digit: Digit) {
        let other = if from_a {
            self.telephone_events.1
        } else {
            self.telephone_events.0
        };
        if other.is_some() || !matches!(self.phase, Phase::Answered | Phase::Confirmed) {
            return;
        }
        let body = Bytes::from(dtmf::relay_body(digit));
        if let Some((tag, _)) = self.send_in_dialog(
            !from_a,
            Method::Info,
            Some("application/dtmf-relay"),
            body,
            None,
            &[],
        ) {
            self.dtmf_infos.push(tag);
        }
    }

    /// An INFO (DTMF by `application/dtmf-relay` or `application/dtmf`, or anything else a phone
    /// sends) passed to the other leg as is; its answer comes back to the sender.
    fn relay_info(&mut self, key: TxnKey, from_a: bool, req: Request) {
        let ct = req.headers.get("Content-Type").map(str::to_owned);
        match self.send_in_dialog(
            !from_a,
            Method::Info,
            ct.as_deref(),
            req.body.clone(),
            None,
            &[],
        ) {
            Some((tag, _)) => self.infos.push((tag, key, req)),
            None => {
                let r = req.response(481, "Call/Transaction Does Not Exist");
                self.out.push_back(Output::Respond { key, resp: r });
            }
        }
    }

    /// A REFER from leg A or the answered device (X): 202, a NOTIFY with `100 Trying`, and an
    /// INVITE to every device of the Refer-To's user offering the other leg's (Y's) media; the
    /// answer replaces X (RFC 3515, RFC 5589 §6). Attended transfer is the same with one
    /// device, the other party of X's consultation call, whose INVITE carries a Replaces of
    /// its dialog in that call (RFC 3891, RFC 5589 §7): it answers and hangs up the consultation
    /// dialog itself. Refusals: 400 without a usable Refer-To, 501 for a Replaces naming a
    /// Teams leg, 491 while the session is being set up, modified or transferred;
    /// an unknown or unreachable target gets 202 and a NOTIFY with the final status, and both
    /// parties keep their call.
    fn on_refer(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        target: Result<TransferTarget, ReferRefusal>,
    ) {
        let Some(from_a) = self.referrer(key, &req) else {
            return;
        };
        let respond = |this: &mut Call, status: u16, warning: Option<&str>| {
            let resp = this.refusal(&req, status, warning);
            this.out.push_back(Output::Respond { key, resp });
        };
        let target = match target {
            Ok(t)
                if t.referrer
                    .as_ref()
                    .is_some_and(|r| *r != self.party_aor(from_a)) =>
            {
                return respond(self, 403, Some("the Replaces names another party's dialog"));
            }
            Ok(t) => t,
            Err(ReferRefusal::Bad(why)) => return respond(self, 400, Some(&why)),
            Err(ReferRefusal::Unsupported(why)) => return respond(self, 501, Some(&why)),
            Err(ReferRefusal::Failed(status)) => {
                respond(self, 202, None);
                self.notify_transferor(from_a, 100);
                self.notify_transferor(from_a, status);
                return;
            }
        };
        let Some(offer) = self.offer_in_place_of(from_a) else {
            return respond(self, 491, None);
        };
        respond(self, 202, None);
        self.notify_transferor(from_a, 100);
        // The new leg is presented as the transferee, referred by the transferor, both as the
        // gateway asserts them (never the Referred-By a phone wrote).
        let (mut transferee, mut transferor) = if from_a {
            (self.setup.callee.clone(), self.setup.caller.clone())
        } else {
            (self.setup.caller.clone(), self.setup.callee.clone())
        };
        // A transfer by Teams goes back through the trunk: the transferee is who Teams knew on
        // the transferor's leg (the user's number at the gateway's FQDN), and Teams' own
        // Referred-By (its x-m/x-t/x-ti/x-tt name the referring Teams user) goes with it.
        if let Some(a) = &target.asserted {
            transferee.clone_from(a);
            transferor.clone_from(a);
        }
        let teams = self.sbc_of(from_a).cloned();
        if let Some(s) = &teams {
            transferee = format!("<sip:{}@{};user=phone>", s.user, s.fqdn);
            if let Some(by) = req.headers.get("Referred-By") {
                transferor = by.to_owned();
            }
        }
        let from_tag = hex_token(&mut *self.rng);
        let replaces = target.replaces.as_ref().map(ToString::to_string);
        let mut forks = Vec::new();
        for mut t in target.targets {
            let tag = self.tag();
            if let (Some(own), Some(s)) = (t.sbc.as_mut(), &teams) {
                own.user.clone_from(&s.user);
            }
            // The target's device takes the transferor's side of the relay, and its keys.
            let body = self.offer_body(from_a, self.target_rule(&t), &offer);
            let mut req = new_invite(
                &t,
                &transferee,
                &from_tag,
                &target.to,
                &target.call_id,
                body,
                &mut *self.rng,
            );
            if t.sbc.is_some() {
                teams_timer(&mut req.headers);
            }
            req.headers.push("Referred-By", transferor.clone());
            if let Some(r) = &replaces {
                // A device that cannot replace must refuse (420), not ring a second call.
                req.headers.push("Replaces", r.as_str());
                req.headers.push("Require", "replaces");
            }
            self.out.push_back(Output::Send {
                tag,
                to: t.to,
                req: req.clone(),
            });
            forks.push(Fork {
                tag,
                target: t,
                invite: req,
                state: ForkState::Calling,
                cancel: None,
                dialog: None,
                early_tags: Vec::new(),
            });
        }
        self.transfer = Some(Transfer {
            x_is_a: from_a,
            x_gone: false,
            forks,
            offer,
            party: target.party,
            to: target.to,
            deadline: now + NO_ANSWER,
        });
    }

    /// The neutral offer to a device that is to take leg A's (`x_is_a`) or B's place (a
    /// transfer's target, an offerless replacing phone): what the other party receives (B's
    /// answer, or A's offer without the codecs the gateway added: the other party is
    /// re-INVITEd in the codec the device picks), at the relay's side facing that leg,
    /// `sendrecv` (a party held before is resumed with the new one); `None` before the session
    /// has that media.
    fn offer_in_place_of(&self, x_is_a: bool) -> Option<Sdp> {
        let mut offer = if x_is_a {
            self.b_answer.clone()
        } else {
            self.a_origin.clone().or_else(|| self.b_offer.clone())
        }?;
        if let Some(i) = offer.audio_index() {
            sdp::rewrite_address(&mut offer, i, self.relay_facing(x_is_a));
        }
        if let Some(m) = offer.audio_index().and_then(|i| offer.media.get_mut(i)) {
            m.set_direction(sdp::Direction::SendRecv);
        }
        Some(offer)
    }

    /// Which leg a REFER comes from (A: `true`), when it may transfer now; `None` after
    /// answering 481 (not a leg of the call, or a device that lost the race) or 491 (the
    /// session is being set up, modified, transferred or moved into a room).
    fn referrer(&mut self, key: TxnKey, req: &Request) -> Option<bool> {
        let (from_a, fork) = self.leg_of(key, req)?;
        let status = if !from_a && (fork != self.winner || self.winner.is_none()) {
            481
        } else if self.session_changing() {
            491
        } else {
            return Some(from_a);
        };
        let resp = self.refusal(req, status, None);
        self.out.push_back(Output::Respond { key, resp });
        None
    }

    /// True while the session is not settled: the first ACK is pending, or a re-offer, a
    /// transfer, a move into a room, the gateway's own re-INVITE or an offerless replacement
    /// is in progress (a REFER or a Replaces then gets 491).
    fn session_changing(&self) -> bool {
        self.phase != Phase::Confirmed
            || self.transfer.is_some()
            || self.moving.is_some()
            || self.reoffer.is_some()
            || self.own_offer.as_ref().is_some_and(|o| !o.acked)
            || self.joining.is_some()
    }

    /// A REFER whose Refer-To is a conference room of this gateway (RFC 4579: a phone's
    /// network conference asks the other party to join, or a user transfers a caller into a
    /// meeting room): 202 and NOTIFY `100`, then the other party (Y) is handed to the room,
    /// which re-INVITEs Y in its dialog with the room's media; the final NOTIFY is the room's
    /// outcome ([`Call::on_room_outcome`]). Refusals as for a transfer; a Teams trunk leg cannot
    /// be moved into a room (the room speaks to phones only): NOTIFY `501`, both keep the call.
    fn on_refer_to_room(&mut self, key: TxnKey, req: Request, room: RoomRef) {
        let Some(from_a) = self.referrer(key, &req) else {
            return;
        };
        let y_is_a = !from_a;
        let resp = self.refusal(&req, 202, None);
        self.out.push_back(Output::Respond { key, resp });
        self.notify_transferor(from_a, 100);
        if self.sbc_of(y_is_a).is_some() {
            tracing::info!(room = %room.name, "a Teams party cannot be moved into a conference room");
            return self.notify_transferor(from_a, 501);
        }
        let leg = if y_is_a {
            self.a_dialog
                .clone()
                .map(|d| (d, self.setup.from, self.setup.local))
        } else {
            self.winner
                .and_then(|w| self.forks.get(w))
                .and_then(|f| Some((f.dialog.clone()?, f.target.to, f.target.local)))
        };
        let Some((dialog, to, local)) = leg else {
            return self.notify_transferor(from_a, 481);
        };
        tracing::info!(room = %room.name, leg = if y_is_a { "A" } else { "B" }, "moving the other party into a conference room");
        self.moving = Some(Moving {
            x_is_a: from_a,
            x_gone: false,
        });
        let party = self.party_aor(y_is_a);
        self.out.push_back(Output::ToRoom(Box::new(Handover {
            room,
            dialog,
            to,
            local,
            party,
        })));
    }

    /// True while leg A's (`a`) or B's dialog is the room's (its device is being moved there).
    fn held_by_room(&self, a: bool) -> bool {
        self.moving.as_ref().is_some_and(|m| m.x_is_a != a)
    }

    /// The room's word on the transferee (Y). Joined: the transferor gets NOTIFY `200` and a
    /// BYE, and the call ends (Y's dialog is the room's). Failed: Y's dialog is the call's
    /// again; the transferor gets the status and both keep the call, unless the transferor
    /// left meanwhile (Y is hung up) or Y's dialog ended (the transferor is hung up).
    fn on_room_outcome(&mut self, now: Instant, outcome: RoomOutcome) {
        let Some(m) = self.moving.take() else {
            return;
        };
        let (x_is_a, y_is_a) = (m.x_is_a, !m.x_is_a);
        // The transferor is still in the call (not gone, not hung up by the gateway).
        let x_here = !m.x_gone && self.phase == Phase::Confirmed;
        let (status, y_gone) = match outcome {
            RoomOutcome::Joined => (200, true),
            RoomOutcome::Failed {
                status,
                local_seq,
                gone,
            } => {
                let d = if y_is_a {
                    self.a_dialog.as_mut()
                } else {
                    self.winner
                        .and_then(|w| self.forks.get_mut(w))
                        .and_then(|f| f.dialog.as_mut())
                };
                if let Some(d) = d {
                    d.local_seq = d.local_seq.max(local_seq);
                }
                (status, gone)
            }
        };
        if x_here {
            self.notify_transferor(x_is_a, status);
        }
        tracing::info!(status, "the move into the conference room ended");
        if y_gone {
            // Y's dialog is the room's (or over): the call forgets it and ends with X; the
            // relay no longer plays music to Y's media address, which the room's mix now uses.
            self.music_off(y_is_a);
            if y_is_a {
                self.a_dialog = None;
            } else {
                self.winner = None;
            }
            self.ending(match outcome {
                RoomOutcome::Joined => EndReason::MovedToConference,
                _ if y_is_a => EndReason::CallerHungUp,
                _ => EndReason::CalleeHungUp,
            });
        } else if x_here {
            return;
        } else {
            self.ending(EndReason::TransferFailed);
        }
        if self.phase == Phase::Confirmed {
            self.hang_up(now, None);
        } else {
            // Hung up while Y was moving: what was left to BYE is Y.
            if !y_gone {
                if y_is_a {
                    self.bye_a();
                } else {
                    self.bye_b();
                }
            }
            self.end_or_linger_at(now);
        }
    }

    /// NOTIFY the transferor (leg A or B) of the transfer's progress: `status` as a sipfrag
    /// status line (RFC 3515 §2.4.5); a final one ends the implicit subscription.
    fn notify_transferor(&mut self, to_a: bool, status: u16) {
        let body = format!(
            "SIP/2.0 {status} {}\r\n",
            csps_sip::message::reason_phrase(status)
        );
        let state = if status >= 200 {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        self.send_in_dialog(
            to_a,
            Method::Notify,
            Some("message/sipfrag;version=2.0"),
            Bytes::from(body),
            None,
            &[("Event", "refer"), ("Subscription-State", state)],
        );
    }

    /// The transfer fork that sent request `tag`.
    fn transfer_fork(&self, tag: u32) -> Option<usize> {
        self.transfer
            .as_ref()
            .and_then(|t| t.forks.iter().position(|f| f.tag == tag))
    }

    /// A BYE from the transferor while its transfer (or the transferee's move into a room)
    /// goes on: it continues without it (RFC 5589 §6: many phones hang up as soon as the
    /// REFER is accepted). True when it was.
    fn transferor_left(&mut self, from_a: bool, fork: Option<usize>) -> bool {
        let x = match (self.transfer.as_mut(), self.moving.as_mut()) {
            (Some(t), _) => (t.x_is_a, &mut t.x_gone),
            (None, Some(m)) => (m.x_is_a, &mut m.x_gone),
            (None, None) => return false,
        };
        let (x_is_a, x_gone) = x;
        if x_is_a != from_a || (!from_a && fork != self.winner) || *x_gone {
            return false;
        }
        *x_gone = true;
        if from_a {
            self.former.extend(self.a_dialog.take());
        } else {
            // The old device's fork stays (its retransmitted BYE still matches) but no longer
            // carries the call.
            self.winner = None;
        }
        true
    }

    /// Ends a transfer in progress (the call is ending): its forks join the call's losing ones,
    /// which are cancelled, or hung up should they answer.
    fn abandon_transfer(&mut self) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        self.retire_forks(t.forks);
    }

    /// Transfer forks that did not win: CANCEL the ringing ones (or once they ring), and keep
    /// them with the call's forks so a late answer is hung up and the call ends only when they
    /// are settled.
    fn retire_forks(&mut self, forks: Vec<Fork>) {
        for mut f in forks {
            if let Some((to, req)) = cancel_fork(&mut f, Some(COMPLETED_ELSEWHERE)) {
                let tag = self.tag();
                self.out.push_back(Output::Send { tag, to, req });
            }
            self.forks.push(f);
        }
    }

    fn on_transfer_response(&mut self, now: Instant, i: usize, resp: Response) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let status = resp.status;
        if status < 200 {
            let f = &mut t.forks[i];
            if f.state == ForkState::Calling {
                f.state = ForkState::Proceeding;
            }
            return;
        }
        if status >= 300 {
            self.transfer_fork_failed(now, i, status);
            return;
        }
        let f = &mut t.forks[i];
        let Some((first, to, ack)) = ack_answer(f, &resp, &mut *self.rng) else {
            return;
        };
        self.out.push_back(Output::Stateless { to, req: ack });
        if !first {
            return;
        }
        f.state = ForkState::Answered;
        let rule = self
            .setup
            .srtp
            .leg(f.target.to.transport, f.target.sbc.is_some());
        let sdes = if t.x_is_a {
            &mut self.sdes_a
        } else {
            &mut self.sdes_b
        };
        let answer = is_sdp(&resp.headers, &resp.body)
            .then(|| Sdp::parse(&resp.body).ok())
            .flatten()
            .and_then(|a| sdp::check_answer(&t.offer, &a).ok().map(|idx| (a, idx)))
            .and_then(|(mut a, idx)| {
                let m = a.media.get_mut(idx)?;
                sdes.take_answer(rule, m).ok()?;
                Some((a, idx))
            });
        let Some((answer, idx)) = answer else {
            // No usable answer: this device cannot carry the call.
            tracing::info!("transfer target answered without a usable SDP answer");
            if let Some((to, req)) = fork_bye(&mut t.forks[i], None, &mut *self.rng) {
                let tag = self.tag();
                self.out.push_back(Output::Send { tag, to, req });
            }
            self.transfer_fork_failed(now, i, 488);
            return;
        };
        self.complete_transfer(i, answer, idx);
    }

    fn transfer_fork_failed(&mut self, now: Instant, i: usize, status: u16) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let f = &mut t.forks[i];
        if !matches!(f.state, ForkState::Done(_)) {
            f.state = ForkState::Done(status);
        }
        if let Some(s) = all_refused(&t.forks) {
            self.fail_transfer(now, s);
        }
    }

    /// The transfer failed with `status`: the transferor learns it and keeps its call; when
    /// the transferor already left, the transferee is hung up.
    fn fail_transfer(&mut self, now: Instant, status: u16) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        let (x_is_a, x_gone) = (t.x_is_a, t.x_gone);
        self.retire_forks(t.forks);
        if x_gone {
            self.ending(EndReason::TransferFailed);
            self.hang_up(now, None);
        } else {
            self.notify_transferor(x_is_a, status);
        }
    }

    /// The target's device `i` answered: it takes the transferor's place. The transferor gets
    /// the final NOTIFY and a BYE, the other devices a CANCEL, the relay's transferor side now
    /// faces the target, and the transferee is re-INVITEd with the target's media.
    fn complete_transfer(&mut self, i: usize, answer: Sdp, idx: usize) {
        let Some(mut t) = self.transfer.take() else {
            return;
        };
        let x_is_a = t.x_is_a;
        if !t.x_gone {
            self.notify_transferor(x_is_a, 200);
        }
        let new = t.forks.remove(i);
        let others = std::mem::take(&mut t.forks);
        let leave = (!t.x_gone).then_some(None);
        self.take_place(x_is_a, new, t.to, t.party, (answer, idx), leave, others);
    }

    /// `new` (a device that answered, or a phone whose INVITE replaced a leg) takes the place
    /// of leg A (`x_is_a`) or B, named `to` (party `party`) from now on: the old device gets a
    /// BYE (with its RFC 3326 reason) unless `leave` is `None` (it left already), the relay's
    /// side faces `new` at its media (`answer`, audio section `idx`), `others` are cancelled,
    /// and the other leg is re-INVITEd with the new media (sendrecv: a held party resumes).
    #[allow(clippy::too_many_arguments)]
    fn take_place(
        &mut self,
        x_is_a: bool,
        new: Fork,
        to: String,
        party: String,
        (answer, idx): (Sdp, usize),
        leave: Option<Option<&'static str>>,
        others: Vec<Fork>,
    ) {
        if let Some(reason) = leave {
            let kept = self.bye_reason;
            self.bye_reason = reason.or(kept);
            if x_is_a {
                self.bye_a();
            } else {
                self.bye_b();
            }
            self.bye_reason = kept;
        }
        let teams = new.target.sbc.is_some();
        let ip = new.target.to.addr.ip();
        let target_addr = answer.rtp_addr(idx);
        if x_is_a {
            self.former.extend(self.a_dialog.take());
            self.a_dialog = new.dialog;
            self.setup.from = new.target.to;
            self.setup.local = new.target.local;
            self.a_contact = contact_for(
                new.target.to.transport,
                new.target.local,
                new.target.sbc.as_ref(),
            );
            self.setup.a_sbc = new.target.sbc;
            self.setup.caller = to;
            self.setup.caller_party = None;
            self.telephone_events = (None, None);
            self.out
                .push_back(Output::Media(MediaChange::A(target_addr, ip)));
        } else {
            self.forks.push(new);
            self.winner = Some(self.forks.len() - 1);
            self.setup.callee = to;
            self.b_answer = Some(answer.clone());
            self.telephone_events = (None, None);
            self.out
                .push_back(Output::Media(MediaChange::B(target_addr, ip)));
        }
        self.retire_forks(others);
        // The other party gets the new media as a new offer (sendrecv: a held party resumes),
        // at the relay's side facing it.
        let to_a = !x_is_a;
        let mut offer = answer;
        sdp::rewrite_address(&mut offer, idx, self.relay_facing(to_a));
        if let Some(m) = offer.media.get_mut(idx) {
            m.set_direction(sdp::Direction::SendRecv);
        }
        let body = self.offer_body(to_a, self.srtp_rule(to_a), &offer);
        if let Some((tag, seq)) = self.send_in_dialog(
            to_a,
            Method::Invite,
            Some("application/sdp"),
            body,
            None,
            &[],
        ) {
            self.own_offer = Some(OwnOffer {
                to_a,
                tag,
                seq,
                offer,
                acked: false,
            });
        }
        self.out.push_back(Output::Transferred {
            a: x_is_a,
            party,
            teams,
        });
    }

    /// Which of this call's dialogs `r` names, as the gateway holds them (RFC 3891 §3: the
    /// `to-tag` is compared with the gateway's tag, the `from-tag` with the device's).
    fn named_by(&self, r: &Replaces) -> Named {
        let ours = |d: &Dialog| {
            d.call_id == r.call_id && d.local_tag == r.to_tag && d.remote_tag == r.from_tag
        };
        let ended = matches!(self.phase, Phase::Ending | Phase::Ended);
        if self.a_dialog.as_ref().is_some_and(ours) {
            return if ended {
                Named::Ended
            } else {
                Named::Confirmed(true)
            };
        }
        if let Some(i) = self
            .forks
            .iter()
            .position(|f| f.dialog.as_ref().is_some_and(ours))
        {
            return if ended || Some(i) != self.winner {
                Named::Ended
            } else {
                Named::Confirmed(false)
            };
        }
        // While ringing, the tags in either order: a busy-lamp field shows the device's view of
        // the dialog (RFC 4235 local-tag and remote-tag), and phones differ in which one they
        // send as `to-tag` (both are random; they cannot be mistaken for each other). Once
        // answered, RFC 3891's order only, as for the confirmed dialogs above.
        let swapped_too = self.phase == Phase::Ringing;
        let early = self.forks.iter().position(|f| {
            let gateway = f.invite.from_tag();
            let tagged = |ours: &str, device: &String| {
                gateway.as_deref() == Some(ours) && f.early_tags.contains(device)
            };
            f.invite.call_id() == Some(r.call_id.as_str())
                && (tagged(&r.to_tag, &r.from_tag)
                    || (swapped_too && tagged(&r.from_tag, &r.to_tag)))
        });
        if let Some(i) = early {
            let f = &self.forks[i];
            return if self.phase == Phase::Ringing
                && f.state == ForkState::Proceeding
                && f.cancel.is_none()
            {
                Named::Early(i)
            } else {
                Named::Ended
            };
        }
        if self.former.iter().any(ours) {
            return Named::Ended;
        }
        // Nothing, or the caller's own early dialog, which the gateway did not initiate: 481
        // either way (§3).
        Named::Nothing
    }

    /// An INVITE with Replaces naming one of this call's dialogs (RFC 3891 §3). A phone's
    /// confirmed leg is taken over by another device of the same user (200, the replaced
    /// device gets a BYE with `Reason`, the other party a re-INVITE with the new media); a
    /// device's early dialog (the call ringing there) is picked up by any user of the called
    /// user's domain (200 to the phone, CANCEL to the ringing devices, 200 to the caller).
    /// Refusals: 481 for no such dialog, 603 for one that ended, 486 for `early-only` on a
    /// confirmed dialog, 403 for a sender the rule does not allow (and for the dialog with the
    /// Teams trunk, whose party is no phone's user), 491 while the session changes.
    fn on_replace(&mut self, now: Instant, rep: Replacement) {
        let named = self.named_by(&rep.replaces);
        let refuse = |this: &mut Call, status: u16, why: &str| {
            tracing::info!(status, "INVITE with Replaces refused: {why}");
            let mut r = this.refusal(&rep.req, status, Some(why));
            if let Some(to) = rep.req.headers.get("To") {
                r.headers
                    .set("To", format!("{to};tag={}", hex_token(&mut *this.rng)));
            }
            this.out.push_back(Output::Respond {
                key: rep.key,
                resp: r,
            });
        };
        let sender = party_aor(&rep.party);
        match named {
            Named::Nothing => refuse(self, 481, "the Replaces names no dialog of this call"),
            Named::Ended => refuse(self, 603, "the dialog the Replaces names has ended"),
            // RFC 3891 §3 lets only the party being replaced (or one authenticated as it)
            // replace a dialog, and the party of the gateway's dialog with the trunk is the
            // Teams user: no phone is. (A phone takes over a call with Teams by naming its own
            // user's dialog with the gateway, the call's other leg.)
            Named::Confirmed(a) if self.sbc_of(a).is_some() => refuse(
                self,
                403,
                "the dialog with the Teams trunk is the Teams party's; name the phone's dialog",
            ),
            Named::Confirmed(_) if rep.replaces.early_only => {
                refuse(self, 486, "early-only, and the dialog is confirmed")
            }
            Named::Confirmed(a) if !sender.eq_ignore_ascii_case(&self.party_aor(a)) => refuse(
                self,
                403,
                "only the user of the replaced phone may take over an answered call",
            ),
            Named::Confirmed(_) if self.session_changing() => {
                refuse(self, 491, "the session is being changed")
            }
            Named::Confirmed(a) => {
                if let Err((status, why)) = self.take_over(now, &rep, a) {
                    refuse(self, status, &why);
                }
            }
            Named::Early(i) if self.forks[i].target.sbc.is_some() => {
                refuse(self, 403, "a call ringing at Teams is not picked up here")
            }
            Named::Early(_) if domain_of(&sender) != domain_of(&self.party_aor(false)) => refuse(
                self,
                403,
                "a call is picked up only by users of the called user's domain",
            ),
            Named::Early(_) if self.joining.is_some() => {
                refuse(self, 491, "another phone is picking the call up")
            }
            Named::Early(_) => {
                if let Err((status, why)) = self.pick_up(now, &rep) {
                    refuse(self, status, &why);
                }
            }
        }
    }

    /// The replacing phone's offer answered by the gateway, for the leg A (`a`) or B it takes:
    /// its SDP as answered (its own address, one codec, `prefer`red when it has one of them;
    /// SDES taken into that side), the audio section and the format it will use.
    fn replacing_answer(
        &mut self,
        a: bool,
        rep: &Replacement,
        prefer: &[sdp::Codec],
    ) -> Result<(Sdp, usize, LegFormat), (u16, String)> {
        let req = &rep.req;
        if req.body.is_empty() {
            return Err((
                488,
                "an INVITE with Replaces needs an SDP offer here".into(),
            ));
        }
        if !is_sdp(&req.headers, &req.body) {
            return Err((415, "the body is not SDP".into()));
        }
        let mut offer = Sdp::parse(&req.body).map_err(|e| (400, format!("bad SDP: {e}")))?;
        let fail = |e: sdp::OfferError| (e.status(), e.to_string());
        let narrowband = self.setup.narrowband;
        let answer_to = |o: &mut Sdp| -> Result<(Sdp, usize, LegFormat), (u16, String)> {
            let idx = sdp::restrict_offer(o, sdp::SUPPORTED).map_err(fail)?;
            if narrowband {
                codecs::narrowband(o, idx).map_err(fail)?;
            }
            let (answer, format) = codecs::answer_one(o, idx, prefer).map_err(fail)?;
            Ok((answer, idx, format))
        };
        // Checked before the SDES is taken: a refusal leaves the leg's keys as they were.
        answer_to(&mut offer.clone())?;
        let rule = self.setup.srtp.leg(rep.from.transport, false);
        self.take_sdes(a, rule, &mut offer, true).map_err(fail)?;
        answer_to(&mut offer)
    }

    /// Answers the replacing phone 200 with `answer` (at the relay's side facing it, leg A
    /// `a` or B) and returns the phone as a device of this call, its dialog made.
    fn accept_replacing(
        &mut self,
        now: Instant,
        rep: &Replacement,
        a: bool,
        (answer, idx): (&Sdp, usize),
    ) -> Result<Fork, (u16, String)> {
        let mut to_phone = answer.clone();
        sdp::rewrite_address(&mut to_phone, idx, self.relay_facing(a));
        let body = self.answer_body(a, &to_phone);
        self.ok_to_replacing(now, rep, body)
    }

    /// Answers the replacing phone 200 with the SDP `body` (the gateway's answer, or its offer
    /// to an offerless INVITE), repeated until the ACK, and returns the phone as a device of
    /// this call, its dialog made.
    fn ok_to_replacing(
        &mut self,
        now: Instant,
        rep: &Replacement,
        body: Bytes,
    ) -> Result<Fork, (u16, String)> {
        let tag = hex_token(&mut *self.rng);
        let contact = contact_for(rep.from.transport, rep.local, None);
        let dialog = Dialog::uas(&rep.req, &tag, &contact).ok_or((
            400,
            "no Contact or From tag to make a dialog with".to_owned(),
        ))?;
        let mut ok = rep.req.response(200, "OK");
        if let Some(to) = rep.req.headers.get("To") {
            ok.headers.set("To", format!("{to};tag={tag}"));
        }
        ok.headers.push("Contact", contact);
        ok.headers.push("Allow", super::ALLOW_IN_DIALOG);
        ok.headers.push("Supported", "replaces");
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = body;
        self.out.push_back(Output::Respond {
            key: rep.key,
            resp: ok.clone(),
        });
        let next = (!rep.from.transport.is_reliable()).then_some((now + T1, T1, now + LINGER));
        let cseq = rep.req.cseq().map_or(0, |c| c.seq);
        self.replacement = Some((
            rep.key,
            Answered {
                cseq,
                resp: ok,
                offer_to_origin: None,
                next,
            },
        ));
        Ok(Fork {
            tag: self.tag(),
            target: Target {
                to: rep.from,
                uri: dialog.remote_target.clone(),
                local: rep.local,
                sbc: None,
            },
            invite: rep.req.clone(),
            state: ForkState::Answered,
            cancel: None,
            dialog: Some(dialog),
            early_tags: Vec::new(),
        })
    }

    /// A confirmed leg (A when `a`) taken over: the phone is answered in the codec the other
    /// party uses when it can, and takes the leg's place as a transfer's target does
    /// ([`Call::take_place`]): the old device gets a BYE with [`REPLACED`], the other party a
    /// re-INVITE with the phone's media.
    fn take_over(&mut self, now: Instant, rep: &Replacement, a: bool) -> Result<(), (u16, String)> {
        if rep.req.body.is_empty() {
            let offer = self
                .offer_in_place_of(a)
                .ok_or((491, "the session has no media to offer yet".to_owned()))?;
            return self.join_offerless(now, rep, a, offer);
        }
        let other = if a { &self.b_answer } else { &self.a_origin };
        let prefer = other.as_ref().map(codecs::audio_codecs).unwrap_or_default();
        let (answer, idx, _) = self.replacing_answer(a, rep, &prefer)?;
        let phone = self.accept_replacing(now, rep, a, (&answer, idx))?;
        tracing::info!(
            leg = if a { "A" } else { "B" },
            "a phone took over a leg (Replaces)"
        );
        let party = party_aor(&rep.party);
        self.take_place(
            a,
            phone,
            rep.party.clone(),
            party,
            (answer, idx),
            Some(Some(REPLACED)),
            Vec::new(),
        );
        Ok(())
    }

    /// An offerless INVITE with Replaces (RFC 3264 §4: the 2xx carries the offer, the ACK the
    /// answer) of a confirmed leg (A when `a`) or of a ringing device: the phone gets 200 with
    /// the neutral `offer` (a transfer's target's, [`Call::offer_in_place_of`], or the ringing
    /// devices') and takes the leg's place only once its ACK answers ([`Call::joined`]); until
    /// then the session stays as it is (491 to changes).
    fn join_offerless(
        &mut self,
        now: Instant,
        rep: &Replacement,
        a: bool,
        offer: Sdp,
    ) -> Result<(), (u16, String)> {
        let offer = self.offer_for(true, &offer);
        let rule = self.setup.srtp.leg(rep.from.transport, false);
        let body = self.offer_body(a, rule, &offer);
        let phone = self.ok_to_replacing(now, rep, body)?;
        tracing::info!(
            leg = if a { "A" } else { "B" },
            "an offerless INVITE with Replaces: offered in the 200, waiting for the ACK"
        );
        self.joining = Some(Joining {
            a,
            phone,
            party: rep.party.clone(),
            offer,
        });
        Ok(())
    }

    /// The offerless replacing phone's ACK (`j` its state). With a usable answer the phone
    /// takes the leg's place as with an offer (the old device gets a BYE with [`REPLACED`],
    /// the other party a re-INVITE). Without one, or when the call ended meanwhile, the new
    /// dialog gets a BYE (RFC 3261 §13.2.2.4 and RFC 3264 §4: a 2xx whose offer cannot be
    /// answered is ACKed, then ended) and the old one goes on untouched. Why the old dialog
    /// waits for the ACK: RFC 3891 §3 has the replaced dialog ended because a new one took its
    /// place, and an offerless new dialog has no session before the ACK's answer; ending the
    /// old one at the 200 would leave the other party with nobody should that answer fail.
    fn joined(&mut self, now: Instant, ack: &Request, j: Joining) {
        if self.phase == Phase::Ringing {
            return self.picked_up(now, ack, j);
        }
        let rule = self.setup.srtp.leg(j.phone.target.to.transport, false);
        let answer = (self.phase == Phase::Confirmed)
            .then(|| self.answer_to(j.a, rule, &j.offer, ack))
            .flatten();
        let Some(answer) = answer else {
            tracing::info!(
                "the replacing phone's ACK carries no usable answer (or the call ended): BYE"
            );
            self.bye_joining(j.phone);
            self.end_check();
            return;
        };
        tracing::info!(
            leg = if j.a { "A" } else { "B" },
            "a phone took over a leg (offerless Replaces)"
        );
        let party = party_aor(&j.party);
        self.take_place(
            j.a,
            j.phone,
            j.party,
            party,
            answer,
            Some(Some(REPLACED)),
            Vec::new(),
        );
    }

    /// The ACK of an offerless phone picking up the ringing call: its answer to the ringing
    /// devices' offer makes it the answering device, as if it had answered that offer (the
    /// relay transcodes what the caller lacks; the caller gets the 200, the devices a CANCEL).
    /// Without a usable answer its dialog gets a BYE and the devices ring on.
    fn picked_up(&mut self, now: Instant, ack: &Request, j: Joining) {
        self.forks.push(j.phone);
        let i = self.forks.len() - 1;
        let body = is_sdp(&ack.headers, &ack.body)
            .then(|| self.rewritten_answer(i, &ack.body))
            .flatten();
        let Some(body) = body else {
            tracing::info!("the picking-up phone's ACK carries no usable answer: BYE");
            if let Some(phone) = self.forks.pop() {
                self.bye_joining(phone);
            }
            return;
        };
        tracing::info!("a phone picked up the ringing call (offerless Replaces)");
        self.setup.callee.clone_from(&j.party);
        self.out.push_back(Output::Transferred {
            a: false,
            party: party_aor(&j.party),
            teams: false,
        });
        let b_ok = self.forks[i].invite.response(200, "OK");
        self.answer_caller(now, i, body, &b_ok);
    }

    /// Ends an offerless replacing phone's dialog with a BYE (a crossing BYE from it still
    /// gets its 200).
    fn bye_joining(&mut self, mut phone: Fork) {
        let reason = "SIP;cause=488;text=\"No usable SDP answer\"";
        if let Some((to, req)) = fork_bye(&mut phone, Some(reason), &mut *self.rng) {
            let tag = self.tag();
            self.pending_byes.push(tag);
            self.out.push_back(Output::Send { tag, to, req });
        }
        self.former.extend(phone.dialog);
    }

    /// Call pickup: the phone answers the ringing call in the devices' place. It is answered
    /// in a codec the caller offered when it has one, the caller in the phone's (the relay
    /// transcodes when they differ), the ringing devices are cancelled ("Call completed
    /// elsewhere").
    fn pick_up(&mut self, now: Instant, rep: &Replacement) -> Result<(), (u16, String)> {
        if rep.req.body.is_empty() {
            // The ringing devices' offer: the relay transcodes what the phone picks from it.
            let offer = self.b_offer.clone().ok_or((
                488,
                "neither the caller nor the phone offered SDP".to_owned(),
            ))?;
            return self.join_offerless(now, rep, false, offer);
        }
        let Some(origin) = self.a_origin.clone() else {
            return Err((488, "the caller's INVITE had no offer to answer".into()));
        };
        let prefer = codecs::audio_codecs(&origin);
        let a_idx = origin.audio_index().ok_or((488, "no audio".to_owned()))?;
        let (answer, idx, phone_format) = self.replacing_answer(false, rep, &prefer)?;
        let (mut to_caller, caller_format) =
            codecs::answer_one(&origin, a_idx, &[phone_format.codec])
                .map_err(|e| (e.status(), e.to_string()))?;
        let phone = self.accept_replacing(now, rep, false, (&answer, idx))?;
        tracing::info!("a phone picked up the ringing call (Replaces)");
        let same = (caller_format.codec, caller_format.payload_type)
            == (phone_format.codec, phone_format.payload_type);
        self.out.push_back(Output::Media(MediaChange::B(
            answer.rtp_addr(idx),
            rep.from.addr.ip(),
        )));
        self.out.push_back(Output::Media(MediaChange::Transcode(
            (!same).then_some((caller_format, phone_format)),
        )));
        self.out.push_back(Output::Media(MediaChange::Audio(
            codecs::leg_clock(&caller_format),
            codecs::leg_clock(&phone_format),
        )));
        self.set_telephone_events(caller_format.telephone_event, phone_format.telephone_event);
        self.b_answer = Some(answer);
        self.forks.push(phone);
        self.setup.callee = rep.party.clone();
        self.out.push_back(Output::Transferred {
            a: false,
            party: party_aor(&rep.party),
            teams: false,
        });
        sdp::rewrite_address(&mut to_caller, a_idx, self.setup.relay_a);
        let body = self.answer_body(true, &to_caller);
        let b_ok = rep.req.response(200, "OK");
        self.answer_caller(now, self.forks.len() - 1, body, &b_ok);
        Ok(())
    }

    /// True when `ack` acknowledges the 2xx to a replacing phone (which stops its
    /// retransmission).
    fn replacement_acked(&mut self, ack: &Request) -> bool {
        let Some((_, a)) = &self.replacement else {
            return false;
        };
        let ours = ack.call_id() == a.resp.headers.get("Call-ID")
            && ack.cseq().map(|c| c.seq) == Some(a.cseq);
        if ours {
            self.replacement = None;
        }
        ours
    }

    /// The transferee's answer to the gateway's re-INVITE: ACK it and point the relay at the
    /// transferee's (possibly new) address. A refusal leaves the session as it was.
    fn on_own_offer_response(&mut self, resp: Response) {
        let Some(to_a) = self.own_offer.as_ref().map(|o| o.to_a) else {
            return;
        };
        let rule = self.srtp_rule(to_a);
        let Some(o) = self.own_offer.as_mut() else {
            return;
        };
        if resp.status < 200 {
            return;
        }
        let (to_a, seq) = (o.to_a, o.seq);
        if resp.status >= 300 {
            tracing::info!(
                status = resp.status,
                "the transferee refused the gateway's re-INVITE"
            );
            self.own_offer = None;
            return;
        }
        let first = !std::mem::replace(&mut o.acked, true);
        let addr = is_sdp(&resp.headers, &resp.body)
            .then(|| Sdp::parse(&resp.body).ok())
            .flatten()
            .and_then(|mut a| {
                let idx = sdp::check_answer(&o.offer, &a).ok()?;
                let sdes = if to_a {
                    &mut self.sdes_a
                } else {
                    &mut self.sdes_b
                };
                sdes.take_answer(rule, a.media.get_mut(idx)?).ok()?;
                Some(a.rtp_addr(idx))
            });
        // Every 2xx is ACKed (a retransmission means our ACK was lost).
        self.ack_in_dialog(to_a, seq, None);
        if !first {
            return;
        }
        match addr {
            Some(addr) => {
                self.telephone_events = (None, None);
                self.media_for(to_a, addr)
            }
            None => {
                tracing::info!("the transferee's answer to the gateway's re-INVITE is unusable")
            }
        }
    }

    /// Fires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.rel1xx.as_mut().map(|r| r.handle_timeout(now)) {
            Some(Ok(Some(resp))) => self.out.push_back(Output::Respond {
                key: self.setup.key,
                resp,
            }),
            Some(Err(NoPrack)) => self.no_prack(now),
            _ => {}
        }
        if let Some(d) = self.ring_deadline
            && d <= now
        {
            self.ring_deadline = None;
            if self.phase == Phase::Ringing {
                self.ending(EndReason::NoAnswer);
                self.hang_up(now, Some(480));
            }
        }
        if let Some((at, interval, give_up)) = self.a_ok_next
            && at <= now
        {
            if now >= give_up {
                // §13.3.1.4: no ACK within 64·T1: confirm and end the session.
                self.a_ok_next = None;
                self.a_ok = None;
                self.phase = Phase::Confirmed;
                self.ending(EndReason::NoAck);
                self.hang_up(now, None);
            } else if let Some(ok) = self.a_ok.clone() {
                self.out.push_back(Output::Respond {
                    key: self.setup.key,
                    resp: ok,
                });
                let next = (interval * 2).min(T2);
                self.a_ok_next = Some((now + next, next, give_up));
            }
        }
        if let Some(d) = self.linger_deadline
            && d <= now
            && self.phase == Phase::Ending
            && self.moving.is_none()
        {
            self.finish();
        }
        if let Some((key, a)) = self.replacement.as_mut()
            && let Some((at, interval, give_up)) = a.next
            && at <= now
        {
            if now >= give_up {
                // No ACK from the replacing phone: it keeps the call (as for a lost ACK of a
                // relayed re-INVITE), the retransmissions stop. An offerless one has no
                // media without the ACK's answer: its dialog is ended (§13.3.1.4).
                self.replacement = None;
                if let Some(j) = self.joining.take() {
                    self.bye_joining(j.phone);
                    self.end_check();
                }
            } else {
                let next = (interval * 2).min(T2);
                a.next = Some((now + next, next, give_up));
                let (key, resp) = (*key, a.resp.clone());
                self.out.push_back(Output::Respond { key, resp });
            }
        }
        if self.transfer.as_ref().is_some_and(|t| t.deadline <= now) {
            // The target's devices rang long enough: the transferor hears 480.
            self.fail_transfer(now, 480);
        }
        if let Some((_, deadline)) = self.session
            && deadline <= now
            && self.is_answered()
        {
            // RFC 4028 §10: nobody refreshed the session in time; it is over.
            tracing::info!("session timer expired: hanging up");
            self.session = None;
            self.bye_reason = Some(SESSION_EXPIRED);
            self.ending(EndReason::SessionExpired);
            self.hang_up(now, None);
        }
        let due = self
            .reoffer
            .as_ref()
            .and_then(|p| p.answered.as_ref())
            .and_then(|a| a.next)
            .filter(|n| n.0 <= now);
        if let Some((_, interval, give_up)) = due {
            if now >= give_up {
                // No ACK: the modification is over; the call goes on (§13.3.1.4 says end the
                // session, but a lost ACK to a hold should not cost the user the call).
                self.reoffer = None;
            } else if let Some(p) = self.reoffer.as_mut()
                && let Some(a) = p.answered.as_mut()
            {
                let next = (interval * 2).min(T2);
                a.next = Some((now + next, next, give_up));
                self.out.push_back(Output::Respond {
                    key: p.key,
                    resp: a.resp.clone(),
                });
            }
        }
    }

    /// When to call [`Call::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ring_deadline,
            self.a_ok_next.map(|x| x.0),
            self.linger_deadline.filter(|_| self.phase == Phase::Ending),
            self.reoffer
                .as_ref()
                .and_then(|p| p.answered.as_ref())
                .and_then(|a| a.next.map(|n| n.0)),
            self.session
                .filter(|_| self.is_answered())
                .map(|(_, deadline)| deadline),
            self.transfer.as_ref().map(|t| t.deadline),
            self.replacement
                .as_ref()
                .and_then(|(_, a)| a.next.map(|n| n.0)),
            self.rel1xx.as_ref().and_then(Rel1xx::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
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
pub(super) mod tests {
    use super::*;
    use crate::media::srtp::Suite;
    use csps_sip::Message;
    use rand::SeedableRng;

    fn remote(a: &str) -> Remote {
        Remote {
            transport: Transport::Udp,
            addr: a.parse().expect("addr"),
            flow: None,
        }
    }

    fn invite(body: &str) -> Request {
        invite_with(body, "")
    }

    /// The caller's INVITE with `extra` header lines (each ending in CRLF).
    fn invite_with(body: &str, extra: &str) -> Request {
        let s = format!(
            "INVITE sip:bob@csps.local SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKa\r\n{extra}\
             From: <sip:alice@csps.local>;tag=at\r\nTo: <sip:bob@csps.local>\r\nCall-ID: a-call\r\n\
             CSeq: 2 INVITE\r\nContact: <sip:alice@10.0.0.7>\r\nMax-Forwards: 70\r\n\
             P-Asserted-Identity: <sip:ceo@csps.local>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match csps_sip::parse(s.as_bytes()).expect("parses").message {
            Message::Request(r) => r,
            Message::Response(_) => panic!("request expected"),
        }
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 0 18 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
    const ANSWER: &str = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
        m=audio 5000 RTP/AVP 0\r\n";

    /// A call from alice to bob's two devices, started at `now`; the server transaction key is
    /// borrowed from a real transaction layer.
    fn call(body: &str, now: Instant) -> Call {
        call_with(body, "", now)
    }

    /// A call whose INVITE carries `extra` header lines.
    fn call_with(body: &str, extra: &str, now: Instant) -> Call {
        call_srtp(body, extra, now, SrtpPolicy::default())
    }

    /// A call under the SRTP policy `srtp`.
    fn call_srtp(body: &str, extra: &str, now: Instant, srtp: SrtpPolicy) -> Call {
        call_setup(body, extra, now, srtp, false)
    }

    /// A call under the SRTP policy `srtp` and `Use8KHz` (`narrowband`).
    fn call_setup(
        body: &str,
        extra: &str,
        now: Instant,
        srtp: SrtpPolicy,
        narrowband: bool,
    ) -> Call {
        started(setup(body, extra, srtp, narrowband), now)
    }

    /// The call `setup` describes, started at `now`.
    fn started(setup: Setup, now: Instant) -> Call {
        let mut c = Call::new(setup, Box::new(rand::rngs::StdRng::seed_from_u64(7)));
        c.start(now);
        c
    }

    /// What a call from alice to bob's two devices starts from.
    fn setup(body: &str, extra: &str, srtp: SrtpPolicy, narrowband: bool) -> Setup {
        let key = key_for(&invite_with(body, extra), "10.0.0.7:5060");
        let target = |a: &str| Target {
            to: remote(a),
            uri: Uri::parse(&format!("sip:bob@{a}")).expect("uri"),
            local: "192.0.2.1:5060".parse().expect("addr"),
            sbc: None,
        };
        Setup {
            key,
            from: remote("203.0.113.5:5060"),
            local: "192.0.2.1:5060".parse().expect("addr"),
            invite: invite_with(body, extra),
            caller: "\"Alice\" <sip:alice@csps.local>".into(),
            caller_party: None,
            callee: "<sip:bob@csps.local>".into(),
            targets: vec![target("192.0.2.9:5060"), target("192.0.2.10:5060")],
            b_call_id: "b-call".into(),
            relay_a: "192.0.2.1:20000".parse().expect("addr"),
            relay_b: "192.0.2.1:20002".parse().expect("addr"),
            agent: "test".into(),
            a_sbc: None,
            srtp,
            music_on_hold: false,
            narrowband,
        }
    }

    fn drain(c: &mut Call) -> Vec<Output> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn sent_invites(out: &[Output]) -> Vec<(u32, Request)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { tag, req, .. } if req.method == Method::Invite => {
                    Some((*tag, req.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn reply(req: &Request, status: u16, to_tag: &str, body: Option<&str>) -> Response {
        let mut r = req.response(status, "x");
        let to = req.headers.get("To").expect("To");
        r.headers.set("To", format!("{to};tag={to_tag}"));
        r.headers.push("Contact", "<sip:bob@192.0.2.9>");
        if let Some(b) = body {
            r.headers.push("Content-Type", "application/sdp");
            r.body = Bytes::from(b.to_owned());
        }
        r
    }

    /// Every device answers `status`.
    fn answer_all(c: &mut Call, invites: &[(u32, Request)], now: Instant, status: u16) {
        for (tag, inv) in invites {
            let resp = reply(inv, status, "t", None);
            c.handle(now, Input::Response { tag: *tag, resp });
        }
    }

    fn responses_to_a(out: &[Output]) -> Vec<&Response> {
        out.iter()
            .filter_map(|o| match o {
                Output::Respond { resp, .. } => Some(resp),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn forks_first_answer_wins_others_cancelled_with_reason() {
        let t0 = Instant::now();
        let mut c = call(OFFER, t0);
        let out = drain(&mut c);
        let invites = sent_invites(&out);
        assert_eq!(invites.len(), 2, "one INVITE per device");
        let (tag1, inv1) = invites[0].clone();
        let (tag2, inv2) = invites[1].clone();
        // The gateway's own identity, never the phone's; only supported codecs offered onwards,
        // the caller's first, then the ones the gateway transcodes to.
        let pai: Vec<_> = inv1.headers.get_all("P-Asserted-Identity").collect();
        assert_eq!(pai, ["\"Alice\" <sip:alice@csps.local>"]);
        let body = String::from_utf8_lossy(&inv1.body).into_owned();
        assert!(
            body.contains("m=audio 20002 RTP/AVP 0 101 9 111 8\r\n"),
            "{body}"
        );
        assert!(body.contains("c=IN IP4 192.0.2.1"), "{body}");

        c.handle(
            t0,
            Input::Response {
                tag: tag2,
                resp: reply(&inv2, 180, "d2", None),
            },
        );
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out)[0].status, 180);

        c.handle(
            t0,
            Input::Response {
                tag: tag1,
                resp: reply(&inv1, 200, "d1", Some(ANSWER)),
            },
        );
        let out = drain(&mut c);
        let ok = responses_to_a(&out)[0].clone();
        assert_eq!(ok.status, 200);
        let body = String::from_utf8_lossy(&ok.body).into_owned();
        assert!(body.contains("m=audio 20000 RTP/AVP 0"), "{body}");
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Stateless { req, .. } if req.method == Method::Ack))
        );
        assert!(out.iter().any(|o| matches!(o,
            Output::Media(MediaChange::B(Some(a), _)) if a.to_string() == "192.0.2.9:5000")));
        let cancel = out
            .iter()
            .find_map(|o| match o {
                Output::Send { req, to, .. } if req.method == Method::Cancel => Some((req, to)),
                _ => None,
            })
            .expect("the ringing fork is cancelled");
        assert_eq!(cancel.1.addr.to_string(), "192.0.2.10:5060");
        assert_eq!(cancel.0.headers.get("Reason"), Some(COMPLETED_ELSEWHERE));
    }

    #[test]
    fn all_busy_gives_486_and_no_answer_gives_480() {
        let t0 = Instant::now();
        let mut c = call(OFFER, t0);
        let invites = sent_invites(&drain(&mut c));
        answer_all(&mut c, &invites, t0, 486);
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out)[0].status, 486);
        assert!(out.iter().any(|o| matches!(o, Output::Ended)));

        let mut c = call(OFFER, t0);
        let invites = sent_invites(&drain(&mut c));
        answer_all(&mut c, &invites, t0, 180);
        drain(&mut c);
        let due = c.poll_timeout().expect("ring timer");
        assert_eq!(due, t0 + NO_ANSWER);
        c.handle_timeout(due);
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out)[0].status, 480);
        let cancels = out
            .iter()
            .filter(|o| matches!(o, Output::Send { req, .. } if req.method == Method::Cancel))
            .count();
        assert_eq!(cancels, 2);
        // Each CANCELled INVITE ends with 487; then the call is over.
        answer_all(&mut c, &invites, due, 487);
        assert!(drain(&mut c).iter().any(|o| matches!(o, Output::Ended)));
    }

    #[test]
    fn bad_or_unusable_offers_are_refused() {
        let t0 = Instant::now();
        let mut c = call("v=0\r\nthis is not sdp\r\n", t0);
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out)[0].status, 400);
        assert!(sent_invites(&out).is_empty());

        let g729 = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
            m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        let mut c = call(g729, t0);
        let out = drain(&mut c);
        let r = responses_to_a(&out)[0];
        assert_eq!(r.status, 488);
        let w = r.headers.get("Warning").expect("Warning");
        assert!(w.contains("PCMU/8000") && w.contains("opus/48000/2"), "{w}");
    }

    #[test]
    fn caller_cancel_gives_487_and_cancels_forks() {
        let t0 = Instant::now();
        let mut c = call(OFFER, t0);
        let invites = sent_invites(&drain(&mut c));
        c.handle(
            t0,
            Input::Response {
                tag: invites[0].0,
                resp: reply(&invites[0].1, 180, "r", None),
            },
        );
        drain(&mut c);
        let mut cancel = invite(OFFER);
        cancel.method = Method::Cancel;
        c.handle(t0, Input::Cancel(cancel));
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out)[0].status, 487);
        let n = out
            .iter()
            .filter(|o| matches!(o, Output::Send { req, .. } if req.method == Method::Cancel))
            .count();
        assert_eq!(n, 1, "only the fork that rang can be cancelled now");
        // The silent fork is cancelled as soon as it rings (§9.1).
        c.handle(
            t0,
            Input::Response {
                tag: invites[1].0,
                resp: reply(&invites[1].1, 180, "s", None),
            },
        );
        let out = drain(&mut c);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Send { req, .. } if req.method == Method::Cancel))
        );
    }

    /// A call answered by the first device and ACKed by the caller; returns the call, the To tag
    /// the caller got, and the INVITE the answering device received.
    fn confirmed(t0: Instant) -> (Call, String, Request) {
        let (c, a_tag, inv1, _) = confirmed_with(t0, "");
        (c, a_tag, inv1)
    }

    /// As [`confirmed`], the caller's INVITE with `extra` header lines; also returns the 200
    /// the caller got.
    fn confirmed_with(t0: Instant, extra: &str) -> (Call, String, Request, Response) {
        let (c, a_tag, inv1, ok, _) = answered_with(t0, extra, ANSWER);
        (c, a_tag, inv1, ok)
    }

    /// A call from alice (`OFFER`, `extra` header lines) that bob's first device answered with
    /// `answer` and alice ACKed; also the 200 she got and what the call did on the answer.
    fn answered_with(
        t0: Instant,
        extra: &str,
        answer: &str,
    ) -> (Call, String, Request, Response, Vec<Output>) {
        let mut c = call_with(OFFER, extra, t0);
        let (a_tag, inv1, ok, out) = answer_first(&mut c, t0, answer);
        (c, a_tag, inv1, ok, out)
    }

    /// The started call `c`'s first device answers with `answer` and alice ACKs: her dialog's
    /// gateway tag, the device's INVITE, the 200 she got and what the call did on the answer.
    fn answer_first(
        c: &mut Call,
        t0: Instant,
        answer: &str,
    ) -> (String, Request, Response, Vec<Output>) {
        let invites = sent_invites(&drain(c));
        let (tag1, inv1) = invites[0].clone();
        c.handle(
            t0,
            Input::Response {
                tag: tag1,
                resp: reply(&inv1, 200, "d1", Some(answer)),
            },
        );
        let out = drain(c);
        let ok = responses_to_a(&out)[0].clone();
        let a_tag = ok.to_tag().expect("To tag");
        c.handle(t0, Input::Ack(in_dialog_a("ACK", 2, &a_tag, None)));
        (a_tag, inv1, ok, out)
    }

    fn parse_req(s: &str) -> Request {
        match csps_sip::parse(s.as_bytes()).expect("parses").message {
            Message::Request(r) => r,
            Message::Response(_) => panic!("request expected"),
        }
    }

    fn with_body(head: String, body: Option<(&str, &str)>) -> Request {
        let (ct, b) = body.unwrap_or(("", ""));
        let ct = if ct.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {ct}\r\n")
        };
        parse_req(&format!("{head}{ct}Content-Length: {}\r\n\r\n{b}", b.len()))
    }

    /// A request from the caller inside its dialog with the gateway.
    fn in_dialog_a(method: &str, seq: u32, a_tag: &str, sdp: Option<&str>) -> Request {
        in_dialog_a_typed(method, seq, a_tag, sdp.map(|b| ("application/sdp", b)))
    }

    fn in_dialog_a_typed(
        method: &str,
        seq: u32,
        a_tag: &str,
        body: Option<(&str, &str)>,
    ) -> Request {
        with_body(
            format!(
                "{method} sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK{method}{seq}\r\n\
                 From: <sip:alice@csps.local>;tag=at\r\nTo: <sip:bob@csps.local>;tag={a_tag}\r\n\
                 Call-ID: a-call\r\nCSeq: {seq} {method}\r\nContact: <sip:alice@10.0.0.7>\r\nMax-Forwards: 70\r\n"
            ),
            body,
        )
    }

    /// A request from the answering device inside its dialog with the gateway.
    fn in_dialog_b(method: &str, seq: u32, inv1: &Request, sdp: Option<&str>) -> Request {
        let from_tag = inv1.from_tag().expect("From tag");
        with_body(
            format!(
                "{method} sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKb{method}{seq}\r\n\
                 From: <sip:bob@csps.local>;tag=d1\r\nTo: \"Alice\" <sip:alice@csps.local>;tag={from_tag}\r\n\
                 Call-ID: b-call\r\nCSeq: {seq} {method}\r\nContact: <sip:bob@192.0.2.9>\r\nMax-Forwards: 70\r\n"
            ),
            sdp.map(|b| ("application/sdp", b)),
        )
    }

    /// A server transaction key for a request (a real transaction layer's).
    pub(in crate::calls) fn key_for(req: &Request, from: &str) -> TxnKey {
        let mut txns = csps_sip::transaction::Transactions::new(Default::default());
        txns.handle_input(csps_sip::transaction::Input::Receive {
            now: Instant::now(),
            from: remote(from),
            msg: Message::Request(req.clone()),
        });
        loop {
            match txns.poll_output() {
                Some(csps_sip::transaction::Output::Event(
                    csps_sip::transaction::Event::Request { key, .. },
                )) => break key,
                Some(_) => {}
                None => panic!("no request event"),
            }
        }
    }

    fn request_in(c: &mut Call, now: Instant, req: Request, from: &str) -> Vec<Output> {
        let key = key_for(&req, from);
        c.handle(
            now,
            Input::Request {
                key,
                from: remote(from),
                req,
            },
        );
        drain(c)
    }

    fn sent(out: &[Output], method: Method) -> Option<(u32, Request, Remote)> {
        out.iter().find_map(|o| match o {
            Output::Send { tag, req, to } if req.method == method => Some((*tag, req.clone(), *to)),
            _ => None,
        })
    }

    /// The other phone answers our relayed request `req` (sent with `tag`) 200 with `sdp`.
    fn answer_with_sdp(c: &mut Call, now: Instant, tag: u32, req: &Request, sdp: &'static str) {
        let mut ok = req.response(200, "OK");
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = Bytes::from_static(sdp.as_bytes());
        c.handle(now, Input::Response { tag, resp: ok });
    }

    fn body(m: &Request) -> String {
        String::from_utf8_lossy(&m.body).into_owned()
    }

    const A_KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    const SRTP_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31|1:1\r\n";
    const B_KEY: &str = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpBQkNE";
    const SRTP_ANSWER: &str = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
        m=audio 5000 RTP/AVP 0\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpBQkNE\r\n";

    fn srtp_keys(out: &[Output], side_a: bool) -> Option<Option<SrtpKeys>> {
        out.iter().find_map(|o| match o {
            Output::Srtp { a, keys } if *a == side_a => Some(keys.clone()),
            _ => None,
        })
    }

    #[test]
    fn srtp_is_negotiated_with_each_leg_and_no_key_crosses_to_the_other() {
        use crate::config::SrtpMode;
        let t0 = Instant::now();
        let policy = SrtpPolicy {
            mode: SrtpMode::Supported,
            plain_keys: true,
        };
        let mut c = call_srtp(SRTP_OFFER, "", t0, policy);
        let invites = sent_invites(&drain(&mut c));
        let (tag1, inv1) = invites[0].clone();
        let offer = body(&inv1);
        // Best effort towards the device: RTP/AVP with a line per suite, the gateway's keys.
        assert!(offer.contains("m=audio 20002 RTP/AVP 0 101"), "{offer}");
        assert!(offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert!(offer.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"));
        assert!(!offer.contains(A_KEY), "the caller's key stays on its leg");
        c.handle(
            t0,
            Input::Response {
                tag: tag1,
                resp: reply(&inv1, 200, "d1", Some(SRTP_ANSWER)),
            },
        );
        let out = drain(&mut c);
        let ok = responses_to_a(&out)[0];
        let answer = String::from_utf8_lossy(&ok.body).into_owned();
        assert!(answer.contains("m=audio 20000 RTP/SAVP 0"), "{answer}");
        assert!(answer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert!(!answer.contains(B_KEY), "the device's key stays on its leg");
        assert!(!answer.contains("a=crypto:2"));
        let a = srtp_keys(&out, true).flatten().expect("A's keys");
        assert_eq!((a.suite, a.remote_mki), (Suite::AesCm128Sha1_80, 1));
        let b = srtp_keys(&out, false).flatten().expect("B's keys");
        assert_eq!(b.suite, Suite::AesCm128Sha1_32);
        assert_ne!(a.local, b.local, "one key per side");
        assert!(c.srtp(true) && c.srtp(false));
    }

    #[test]
    fn required_srtp_refuses_plain_offers_and_keys_over_plain_signalling() {
        use crate::config::SrtpMode;
        let t0 = Instant::now();
        let required = |plain_keys| SrtpPolicy {
            mode: SrtpMode::Required,
            plain_keys,
        };
        for (offer, policy) in [(OFFER, required(true)), (SRTP_OFFER, required(false))] {
            let mut c = call_srtp(offer, "", t0, policy);
            let out = drain(&mut c);
            assert!(sent_invites(&out).is_empty(), "nobody is rung");
            let last = responses_to_a(&out).last().map(|r| r.status);
            assert_eq!(last, Some(488), "{policy:?}");
        }
        // Required, keys allowed: the device is offered RTP/SAVP; a plain answer ends the call.
        let mut c = call_srtp(SRTP_OFFER, "", t0, required(true));
        let invites = sent_invites(&drain(&mut c));
        let (tag1, inv1) = invites[0].clone();
        assert!(body(&inv1).contains("RTP/SAVP 0 101"));
        c.handle(
            t0,
            Input::Response {
                tag: tag1,
                resp: reply(&inv1, 200, "d1", Some(ANSWER)),
            },
        );
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out).last().map(|r| r.status), Some(488));
    }

    #[test]
    fn the_teams_leg_is_srtp_even_with_srtp_disabled_and_a_plain_answer_ends_the_call() {
        let t0 = Instant::now();
        // A plain phone (Srtp=Disabled) calls out through the trunk.
        let mut s = setup(OFFER, "", SrtpPolicy::default(), false);
        s.targets.truncate(1);
        s.targets[0].to.transport = Transport::Tls;
        s.targets[0].sbc = Some(Sbc {
            fqdn: "sbc1.csps.test".into(),
            port: 5061,
            user: "+14255550100".into(),
        });
        for (answer, srtp) in [(SRTP_ANSWER, true), (ANSWER, false)] {
            let mut c = started(s.clone(), t0);
            let (tag, inv) = sent_invites(&drain(&mut c))[0].clone();
            let offer = body(&inv);
            assert!(offer.contains("m=audio 20002 RTP/SAVP "), "{offer}");
            assert!(offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
            c.handle(
                t0,
                Input::Response {
                    tag,
                    resp: reply(&inv, 200, "d1", Some(answer)),
                },
            );
            let out = drain(&mut c);
            let to_a = responses_to_a(&out);
            assert_eq!(c.srtp(false), srtp);
            assert!(!c.srtp(true), "the phone's leg keeps its own rule");
            if srtp {
                assert_eq!(to_a[0].status, 200);
                let a = String::from_utf8_lossy(&to_a[0].body).into_owned();
                assert!(a.contains("RTP/AVP") && !a.contains("a=crypto"), "{a}");
                continue;
            }
            // No usable a=crypto from Teams: BYE to Teams, 488 with a Warning to the phone.
            assert_eq!(to_a[0].status, 488);
            assert!(to_a[0].headers.get("Warning").is_some());
            assert!(
                out.iter()
                    .any(|o| matches!(o, Output::Send { req, .. } if req.method == Method::Bye))
            );
        }
    }

    /// What the relay was told about codecs, the last time in `out`.
    fn transcoding(out: &[Output]) -> Option<Option<(LegFormat, LegFormat)>> {
        out.iter().rev().find_map(|o| match o {
            Output::Media(MediaChange::Transcode(t)) => Some(*t),
            _ => None,
        })
    }

    const OPUS_ANSWER: &str = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
        m=audio 5000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n";
    const OPUS_HELD: &str = "v=0\r\no=- 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
        m=audio 5000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\n";

    #[test]
    fn an_answer_in_a_codec_the_caller_lacks_is_transcoded_and_stays_so_across_a_hold() {
        let t0 = Instant::now();
        let (mut c, a_tag, _, ok, out) = answered_with(t0, "", OPUS_ANSWER);
        let b = String::from_utf8_lossy(&ok.body).into_owned();
        // Alice offered PCMU and telephone-event; bob has no telephone-event, but she keeps
        // hers: the gateway interworks her events with SIP INFO.
        assert!(b.contains("m=audio 20000 RTP/AVP 0 101\r\n"), "{b}");
        assert!(!b.contains("opus") && !b.contains("fmtp"), "{b}");
        let pcmu = LegFormat {
            codec: sdp::Codec::Pcmu,
            payload_type: 0,
            telephone_event: Some((101, 8000)),
            max_average_bitrate: None,
        };
        let opus = LegFormat {
            codec: sdp::Codec::Opus,
            payload_type: 111,
            telephone_event: None,
            max_average_bitrate: None,
        };
        assert_eq!(transcoding(&out), Some(Some((pcmu, opus))));
        drain(&mut c);
        // Alice holds: bob is offered her codecs and the added ones again, keeps Opus, and
        // alice's answer stays PCMU, recvonly.
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
            "203.0.113.5:5060",
        );
        let (tag, reinv, _) = sent(&out, Method::Invite).expect("re-INVITE to bob");
        assert!(body(&reinv).contains("opus/48000/2"), "{}", body(&reinv));
        answer_with_sdp(&mut c, t0, tag, &reinv, OPUS_HELD);
        let out = drain(&mut c);
        let to_a = String::from_utf8_lossy(&responses_to_a(&out)[0].body).into_owned();
        assert!(
            to_a.contains("m=audio 20000 RTP/AVP 0 101\r\n") && to_a.contains("a=recvonly"),
            "{to_a}"
        );
        assert_eq!(transcoding(&out), Some(Some((pcmu, opus))));
    }

    #[test]
    fn an_answer_in_the_callers_codec_is_relayed_without_transcoding() {
        let (_, _, _, ok, out) = answered_with(Instant::now(), "", ANSWER);
        // Bob has no telephone-event; alice keeps hers (DTMF interworking).
        assert!(String::from_utf8_lossy(&ok.body).contains("RTP/AVP 0 101\r\n"));
        assert_eq!(transcoding(&out), Some(None));
    }

    const G722_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 9 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

    #[test]
    fn use_8khz_keeps_both_phone_legs_on_g711() {
        let t0 = Instant::now();
        let mut c = call_setup(G722_OFFER, "", t0, SrtpPolicy::default(), true);
        let invites = sent_invites(&drain(&mut c));
        let b = body(&invites[0].1);
        assert!(
            b.contains("m=audio 20002 RTP/AVP 0 101 8\r\n"),
            "bob is offered G.711 only: {b}"
        );
        // A caller with no G.711 at all is refused, listing what it may use.
        let only_g722 = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
            m=audio 4000 RTP/AVP 9\r\n";
        let mut c = call_setup(only_g722, "", t0, SrtpPolicy::default(), true);
        let out = drain(&mut c);
        let r = &responses_to_a(&out)[0];
        assert_eq!(r.status, 488);
        assert!(
            r.headers.get("Warning").is_some_and(|w| w.contains("PCMU")),
            "{r:?}"
        );
    }

    const HOLD: &str = "v=0\r\no=- 1 2 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";
    const HELD: &str = "v=0\r\no=- 5 6 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
        m=audio 5002 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n";

    const HELD_INACTIVE: &str = "v=0\r\no=- 5 6 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=inactive\r\n";

    #[test]
    fn hold_from_the_caller_is_relayed_and_answered_through_the_relay() {
        let t0 = Instant::now();
        let (mut c, a_tag, _) = confirmed(t0);
        drain(&mut c);
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
            "203.0.113.5:5060",
        );
        let (tag, reinv, to) = sent(&out, Method::Invite).expect("re-INVITE to bob");
        assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
        assert_eq!(reinv.headers.get("Call-ID"), Some("b-call"));
        assert_eq!(reinv.headers.get("CSeq"), Some("2 INVITE"));
        let b = body(&reinv);
        assert!(b.contains("a=sendonly"), "{b}");
        assert!(b.contains("m=audio 20002 RTP/AVP 0 101"), "{b}");
        assert!(!b.contains("10.0.0.7"), "{b}");
        assert!(responses_to_a(&out).is_empty(), "no answer before bob's");

        answer_with_sdp(&mut c, t0, tag, &reinv, HELD);
        let out = drain(&mut c);
        let to_a = responses_to_a(&out)[0].clone();
        assert_eq!(to_a.status, 200);
        assert_eq!(to_a.headers.get("CSeq"), Some("3 INVITE"));
        let b = String::from_utf8_lossy(&to_a.body).into_owned();
        assert!(
            b.contains("a=recvonly") && b.contains("m=audio 20000"),
            "{b}"
        );
        assert!(out.iter().any(|o| matches!(o,
            Output::Stateless { req, .. } if req.method == Method::Ack
                && req.headers.get("CSeq") == Some("2 ACK"))));
        assert!(out.iter().any(|o| matches!(o,
            Output::Media(MediaChange::B(Some(a), _)) if a.to_string() == "192.0.2.9:5002")));
        // Over UDP the 200 is repeated until alice's ACK.
        let due = c.poll_timeout().expect("2xx retransmission");
        c.handle_timeout(due);
        assert_eq!(responses_to_a(&drain(&mut c))[0].status, 200);
        c.handle(due, Input::Ack(in_dialog_a("ACK", 3, &a_tag, None)));
        assert_eq!(c.poll_timeout(), None, "ACKed: nothing more to repeat");
        // Resume works the same way afterwards.
        let out = request_in(
            &mut c,
            due,
            in_dialog_a("INVITE", 4, &a_tag, Some(OFFER)),
            "203.0.113.5:5060",
        );
        assert!(sent(&out, Method::Invite).is_some(), "resume relayed");
    }

    /// The music-on-hold outputs: which leg, and the format to play (`None`: stop).
    fn music(out: &[Output]) -> Vec<(bool, Option<sdp::Format>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::MusicOnHold { a, format } => Some((*a, *format)),
                _ => None,
            })
            .collect()
    }

    /// Music on hold: a caller's `inactive` hold reaches the callee as `sendonly` (the gateway
    /// will send it music), the callee's `recvonly` goes back as `inactive`, and the music starts
    /// in the callee's first codec; it stops as soon as the caller's resume comes in. Without
    /// music on hold the hold passes unchanged and nothing is played.
    #[test]
    fn music_on_hold_turns_an_inactive_hold_into_sendonly_and_plays_until_the_resume() {
        let t0 = Instant::now();
        let inactive = HOLD.replace("a=sendonly", "a=inactive");
        // Alice holds bob with `inactive`, music on hold on or off.
        let hold = |on: bool| {
            let (mut c, a_tag, _) = confirmed(t0);
            c.setup.music_on_hold = on;
            drain(&mut c);
            let out = request_in(
                &mut c,
                t0,
                in_dialog_a("INVITE", 3, &a_tag, Some(&inactive)),
                "203.0.113.5:5060",
            );
            (c, a_tag, out)
        };
        let (_, _, out) = hold(false);
        let (_, reinv, _) = sent(&out, Method::Invite).expect("hold relayed");
        assert!(body(&reinv).contains("a=inactive"), "off: unchanged");
        assert!(music(&out).is_empty());

        let (mut c, a_tag, out) = hold(true);
        let (tag, reinv, _) = sent(&out, Method::Invite).expect("hold relayed");
        let b = body(&reinv);
        assert!(b.contains("a=sendonly") && !b.contains("a=inactive"), "{b}");
        assert!(
            music(&out).is_empty(),
            "nothing before bob accepts the hold"
        );
        answer_with_sdp(&mut c, t0, tag, &reinv, HELD);
        let out = drain(&mut c);
        let to_a = String::from_utf8_lossy(&responses_to_a(&out)[0].body).into_owned();
        assert!(
            to_a.contains("a=inactive") && !to_a.contains("a=recvonly"),
            "{to_a}"
        );
        let started = music(&out);
        assert!(
            matches!(started[..], [(false, Some(f))] if f.pt == 0 && f.codec == sdp::Codec::Pcmu),
            "{started:?}"
        );
        c.handle(t0, Input::Ack(in_dialog_a("ACK", 3, &a_tag, None)));
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 4, &a_tag, Some(OFFER)),
            "203.0.113.5:5060",
        );
        assert!(sent(&out, Method::Invite).is_some(), "resume relayed");
        assert_eq!(music(&out), vec![(false, None)]);
    }

    /// The callee holds the caller: the music goes to leg A, in the caller's answer's codec,
    /// until the callee's resume; a held leg that answers `inactive` gets none.
    #[test]
    fn music_on_hold_for_a_caller_held_by_the_callee_and_none_for_a_leg_that_will_not_receive() {
        let t0 = Instant::now();
        let hold_by_bob = HOLD.replace("10.0.0.7", "192.0.2.9");
        for (alice_answers, expected) in [(HELD, Some(0)), (HELD_INACTIVE, None)] {
            let (mut c, _, inv1) = confirmed(t0);
            c.setup.music_on_hold = true;
            drain(&mut c);
            let out = request_in(
                &mut c,
                t0,
                in_dialog_b("INVITE", 1, &inv1, Some(&hold_by_bob)),
                "192.0.2.9:5060",
            );
            let (tag, reinv, _) = sent(&out, Method::Invite).expect("hold relayed to alice");
            assert!(body(&reinv).contains("a=sendonly"));
            answer_with_sdp(&mut c, t0, tag, &reinv, alice_answers);
            assert_eq!(
                music(&drain(&mut c))
                    .iter()
                    .map(|(a, f)| (*a, f.map(|f| f.pt)))
                    .collect::<Vec<_>>(),
                vec![(true, expected)]
            );
            c.handle(t0, Input::Ack(in_dialog_b("ACK", 1, &inv1, None)));
            let out = request_in(
                &mut c,
                t0,
                in_dialog_b("INVITE", 2, &inv1, Some(OFFER)),
                "192.0.2.9:5060",
            );
            assert_eq!(music(&out), vec![(true, None)], "bob resumes");
        }
    }

    #[test]
    fn glare_gets_491_and_a_second_request_from_the_same_side_500() {
        let t0 = Instant::now();
        let (mut c, a_tag, inv1) = confirmed(t0);
        drain(&mut c);
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
            "203.0.113.5:5060",
        );
        let (tag, reinv, _) = sent(&out, Method::Invite).expect("relayed");
        let out = request_in(
            &mut c,
            t0,
            in_dialog_b("INVITE", 1, &inv1, Some(ANSWER)),
            "192.0.2.9:5060",
        );
        assert_eq!(responses_to_a(&out)[0].status, 491, "glare on bob's leg");
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("UPDATE", 4, &a_tag, Some(HOLD)),
            "203.0.113.5:5060",
        );
        let r = responses_to_a(&out)[0];
        assert_eq!(r.status, 500);
        assert!(r.headers.get("Retry-After").is_some());
        // Bob saw glare too and says 491: alice gets it and the call stays as it was.
        c.handle(
            t0,
            Input::Response {
                tag,
                resp: reinv.response(491, "Request Pending"),
            },
        );
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out)[0].status, 491);
        assert!(!out.iter().any(|o| matches!(o, Output::Ended)));
        let out = request_in(
            &mut c,
            t0,
            in_dialog_b("INVITE", 2, &inv1, Some(ANSWER)),
            "192.0.2.9:5060",
        );
        assert!(
            sent(&out, Method::Invite).is_some(),
            "bob's retry goes through"
        );
    }

    #[test]
    fn offerless_reinvite_takes_the_offer_from_the_200_and_the_answer_from_the_ack() {
        let t0 = Instant::now();
        let (mut c, a_tag, inv1) = confirmed(t0);
        drain(&mut c);
        let out = request_in(
            &mut c,
            t0,
            in_dialog_b("INVITE", 1, &inv1, None),
            "192.0.2.9:5060",
        );
        let (tag, reinv, to) = sent(&out, Method::Invite).expect("offerless re-INVITE to alice");
        assert_eq!(to.addr.to_string(), "203.0.113.5:5060");
        assert!(reinv.body.is_empty());
        assert_eq!(
            reinv.headers.get("To"),
            Some("<sip:alice@csps.local>;tag=at")
        );
        assert!(
            reinv
                .headers
                .get("From")
                .is_some_and(|f| f.contains(&a_tag))
        );
        // Alice offers in her 200.
        answer_with_sdp(&mut c, t0, tag, &reinv, OFFER);
        let out = drain(&mut c);
        let to_b = responses_to_a(&out)[0].clone();
        assert_eq!(to_b.status, 200);
        let b = String::from_utf8_lossy(&to_b.body).into_owned();
        assert!(
            b.contains("m=audio 20002 RTP/AVP 0 101"),
            "offer via the relay: {b}"
        );
        assert!(
            !out.iter().any(|o| matches!(o, Output::Stateless { .. })),
            "alice's ACK waits for bob's answer"
        );
        // Bob answers in his ACK; it goes on to alice in hers.
        let ack = in_dialog_b("ACK", 1, &inv1, Some(ANSWER));
        c.handle(t0, Input::Ack(ack));
        let out = drain(&mut c);
        let ack = out
            .iter()
            .find_map(|o| match o {
                Output::Stateless { req, .. } if req.method == Method::Ack => Some(req.clone()),
                _ => None,
            })
            .expect("ACK to alice");
        assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
        assert!(
            body(&ack).contains("m=audio 20000 RTP/AVP 0"),
            "{}",
            body(&ack)
        );
        assert!(out.iter().any(|o| matches!(o,
            Output::Media(MediaChange::B(Some(a), _)) if a.to_string() == "192.0.2.9:5000")));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn bad_sdp_in_an_update_gets_400_and_the_call_goes_on() {
        let t0 = Instant::now();
        let (mut c, a_tag, _) = confirmed(t0);
        drain(&mut c);
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("UPDATE", 3, &a_tag, Some("v=0\r\nm=audio banana\r\n")),
            "203.0.113.5:5060",
        );
        let r = responses_to_a(&out)[0];
        assert_eq!(r.status, 400);
        assert!(r.headers.get("Warning").is_some_and(|w| w.contains("SDP")));
        assert!(sent(&out, Method::Update).is_none());
        let g729 = "v=0\r\no=- 1 3 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
            m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("UPDATE", 4, &a_tag, Some(g729)),
            "203.0.113.5:5060",
        );
        assert_eq!(responses_to_a(&out)[0].status, 488);
        // A good UPDATE still goes through, and its answer comes back.
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("UPDATE", 5, &a_tag, Some(HOLD)),
            "203.0.113.5:5060",
        );
        let (tag, upd, _) = sent(&out, Method::Update).expect("relayed");
        answer_with_sdp(&mut c, t0, tag, &upd, HELD);
        let out = drain(&mut c);
        let r = responses_to_a(&out)[0];
        assert_eq!((r.status, r.headers.get("CSeq")), (200, Some("5 UPDATE")));
        assert!(String::from_utf8_lossy(&r.body).contains("a=recvonly"));
        assert!(
            !out.iter().any(|o| matches!(o, Output::Stateless { .. })),
            "no ACK for UPDATE"
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn info_dtmf_is_relayed_and_its_answer_returned() {
        let t0 = Instant::now();
        let (mut c, a_tag, _) = confirmed(t0);
        drain(&mut c);
        let dtmf = "Signal=5\r\nDuration=160\r\n";
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a_typed("INFO", 3, &a_tag, Some(("application/dtmf-relay", dtmf))),
            "203.0.113.5:5060",
        );
        assert!(responses_to_a(&out).is_empty(), "answered once bob answers");
        let (tag, info, to) = sent(&out, Method::Info).expect("INFO to bob");
        assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
        assert_eq!(
            info.headers.get("Content-Type"),
            Some("application/dtmf-relay")
        );
        assert_eq!(body(&info), dtmf);
        c.handle(
            t0,
            Input::Response {
                tag,
                resp: info.response(200, "OK"),
            },
        );
        let out = drain(&mut c);
        let r = responses_to_a(&out)[0];
        assert_eq!((r.status, r.headers.get("CSeq")), (200, Some("3 INFO")));
        // No answer from bob: alice gets 408 and keeps her call.
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a_typed("INFO", 4, &a_tag, Some(("application/dtmf", "7"))),
            "203.0.113.5:5060",
        );
        let (tag, _, _) = sent(&out, Method::Info).expect("INFO to bob");
        c.handle(t0, Input::Timeout { tag });
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out)[0].status, 408);
        assert!(c.is_answered());
    }

    /// DTMF interworking: alice negotiated telephone-event, bob (no telephone-event) sends
    /// and receives DTMF by SIP INFO.
    #[test]
    fn dtmf_interworks_between_rfc_4733_and_sip_info() {
        let t0 = Instant::now();
        let (mut c, _, inv1, ok, out) = answered_with(t0, "", ANSWER);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Media(MediaChange::Dtmf(Some((101, 8000)), None))))
        );
        let sdp = String::from_utf8_lossy(&ok.body).into_owned();
        assert!(sdp.contains("a=rtpmap:101 telephone-event/8000"), "{sdp}");
        drain(&mut c);
        // Bob's INFO is answered here and played to alice as RFC 4733 events.
        let info_b = |seq: u32, ct: &str, b: &str| {
            let mut r = in_dialog_b("INFO", seq, &inv1, None);
            r.headers.push("Content-Type", ct);
            r.body = Bytes::from(b.to_owned());
            r
        };
        let out = request_in(
            &mut c,
            t0,
            info_b(2, "application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
            "192.0.2.9:5060",
        );
        assert!(sent(&out, Method::Info).is_none(), "not relayed");
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Respond { resp, .. } if resp.status == 200))
        );
        let digits: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Dtmf { to_a, digit } => Some((*to_a, digit.code)),
                _ => None,
            })
            .collect();
        assert_eq!(digits, [(true, 5)]);
        // A body naming no digit: 400 with the reason, the call goes on.
        let out = request_in(
            &mut c,
            t0,
            info_b(3, "application/dtmf", "Z"),
            "192.0.2.9:5060",
        );
        let r = out
            .iter()
            .find_map(|o| match o {
                Output::Respond { resp, .. } => Some(resp),
                _ => None,
            })
            .expect("answer");
        assert_eq!(r.status, 400);
        assert!(r.headers.get("Warning").is_some_and(|w| w.contains("DTMF")));
        assert!(!out.iter().any(|o| matches!(o, Output::Dtmf { .. })));
        // Alice's RFC 4733 digit goes to bob as INFO; its answer ends there.
        c.handle(
            t0,
            Input::Dtmf {
                from_a: true,
                digit: Digit {
                    code: 11,
                    duration: Duration::from_millis(200),
                },
            },
        );
        let out = drain(&mut c);
        let (tag, info, to) = sent(&out, Method::Info).expect("INFO to bob");
        assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
        assert_eq!(
            info.headers.get("Content-Type"),
            Some("application/dtmf-relay")
        );
        assert_eq!(body(&info), "Signal=#\r\nDuration=200\r\n");
        c.handle(
            t0,
            Input::Response {
                tag,
                resp: info.response(200, "OK"),
            },
        );
        assert!(drain(&mut c).is_empty());
        // Alice takes events herself: nothing goes to her by INFO.
        c.handle(
            t0,
            Input::Dtmf {
                from_a: false,
                digit: Digit {
                    code: 1,
                    duration: Duration::from_millis(100),
                },
            },
        );
        assert!(sent(&drain(&mut c), Method::Info).is_none());
        assert!(c.is_answered());
    }

    #[test]
    fn session_interval_below_min_se_gets_422() {
        let t0 = Instant::now();
        let mut c = call_with(OFFER, "Session-Expires: 30\r\nSupported: timer\r\n", t0);
        let out = drain(&mut c);
        let r = responses_to_a(&out)[0];
        assert_eq!(r.status, 422);
        assert_eq!(r.headers.get("Min-SE"), Some("90"));
        assert!(sent_invites(&out).is_empty());
        assert!(out.iter().any(|o| matches!(o, Output::Ended)));
    }

    #[test]
    fn session_timer_ends_an_unrefreshed_call_and_a_refresh_extends_it() {
        let t0 = Instant::now();
        // Bob knows nothing of timers: alice refreshes, the gateway times the session.
        let (mut c, a_tag, inv1, ok) = confirmed_with(
            t0,
            "Session-Expires: 120;refresher=uac\r\nSupported: timer\r\n",
        );
        assert_eq!(inv1.headers.get("Session-Expires"), Some("120"));
        assert_eq!(inv1.headers.get("Min-SE"), Some("90"));
        assert!(supports_timer(&inv1.headers));
        assert_eq!(ok.headers.get("Session-Expires"), Some("120;refresher=uac"));
        assert_eq!(ok.headers.get("Require"), Some("timer"));
        drain(&mut c);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(120)));
        // A refresh at 100 s (an UPDATE without offer) moves the end to 220 s.
        let t100 = t0 + Duration::from_secs(100);
        let out = request_in(
            &mut c,
            t100,
            in_dialog_a("UPDATE", 3, &a_tag, None),
            "203.0.113.5:5060",
        );
        let r = responses_to_a(&out)[0];
        assert_eq!(r.status, 200);
        assert!(
            r.headers
                .get("Session-Expires")
                .is_some_and(|v| v.starts_with("120"))
        );
        c.handle_timeout(t0 + Duration::from_secs(130));
        assert!(drain(&mut c).is_empty(), "refreshed: the call goes on");
        assert!(c.is_answered());
        // A relayed re-INVITE refreshes too.
        let t150 = t0 + Duration::from_secs(150);
        let out = request_in(
            &mut c,
            t150,
            in_dialog_a("INVITE", 4, &a_tag, Some(OFFER)),
            "203.0.113.5:5060",
        );
        let (tag, reinv, _) = sent(&out, Method::Invite).expect("relayed");
        answer_with_sdp(&mut c, t150, tag, &reinv, ANSWER);
        drain(&mut c);
        c.handle(t150, Input::Ack(in_dialog_a("ACK", 4, &a_tag, None)));
        let end = t150 + Duration::from_secs(120);
        assert_eq!(c.poll_timeout(), Some(end));
        // Nobody refreshes again: at the end both phones get a BYE saying why.
        c.handle_timeout(end);
        let out = drain(&mut c);
        let byes: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send { req, .. } if req.method == Method::Bye => Some(req),
                _ => None,
            })
            .collect();
        assert_eq!(byes.len(), 2, "{out:?}");
        assert!(
            byes.iter()
                .all(|b| b.headers.get("Reason") == Some(SESSION_EXPIRED))
        );
        assert!(!c.is_answered());
    }

    const CAROL_ANSWER: &str = "v=0\r\no=- 9 9 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
        m=audio 6000 RTP/AVP 0\r\n";

    /// Carol's one device, the target of the transfers below.
    fn carol() -> TransferTarget {
        TransferTarget {
            targets: vec![Target {
                to: remote("192.0.2.20:5060"),
                uri: Uri::parse("sip:carol@192.0.2.20:5060").expect("uri"),
                local: "192.0.2.1:5060".parse().expect("addr"),
                sbc: None,
            }],
            to: "<sip:carol@csps.local>".into(),
            party: "sip:carol@csps.local".into(),
            call_id: "t-call".into(),
            replaces: None,
            referrer: None,
            asserted: None,
        }
    }

    /// Feeds `req` (a REFER to carol, sent from `from`) with the switch's resolution.
    fn refer_in(
        c: &mut Call,
        now: Instant,
        mut req: Request,
        from: &str,
        target: Result<TransferTarget, ReferRefusal>,
    ) -> Vec<Output> {
        req.headers.push("Refer-To", "<sip:carol@csps.local>");
        let key = key_for(&req, from);
        c.handle(
            now,
            Input::Refer {
                key,
                from: remote(from),
                req,
                target: Box::new(target),
            },
        );
        drain(c)
    }

    /// The NOTIFYs in `out`: destination, Subscription-State and sipfrag body.
    fn notifies(out: &[Output]) -> Vec<(String, String, String)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { req, to, .. } if req.method == Method::Notify => {
                    assert_eq!(req.headers.get("Event"), Some("refer"));
                    assert_eq!(
                        req.headers.get("Content-Type"),
                        Some("message/sipfrag;version=2.0")
                    );
                    Some((
                        to.addr.to_string(),
                        req.headers
                            .get("Subscription-State")
                            .unwrap_or("")
                            .to_owned(),
                        body(req),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    /// A request from carol in the dialog the transfer INVITE `inv` created (To tag `c1`).
    fn from_carol(method: &str, seq: u32, inv: &Request) -> Request {
        let from_tag = inv.from_tag().expect("From tag");
        with_body(
            format!(
                "{method} sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.20:5060;branch=z9hG4bKc{method}{seq}\r\n\
                 From: <sip:carol@csps.local>;tag=c1\r\nTo: {};tag={from_tag}\r\n\
                 Call-ID: t-call\r\nCSeq: {seq} {method}\r\nContact: <sip:carol@192.0.2.20>\r\nMax-Forwards: 70\r\n",
                inv.headers
                    .get("From")
                    .and_then(|f| f.split(";tag=").next())
                    .unwrap_or("")
            ),
            None,
        )
    }

    /// RFC 3262 towards a caller that requires 100rel: the device's 180 goes out reliably, its
    /// 183 with early media waits for the 180's PRACK, the device's 200 waits for the 183's,
    /// and a PRACK naming nothing gets 481.
    #[test]
    fn reliable_provisionals_for_a_caller_that_requires_them() {
        let t0 = Instant::now();
        let mut c = call_with(OFFER, "Require: 100rel\r\nSupported: 100rel\r\n", t0);
        let invites = sent_invites(&drain(&mut c));
        let (tag1, inv1) = invites[0].clone();
        let owned = |out: Vec<Output>| -> Vec<Response> {
            responses_to_a(&out).into_iter().cloned().collect()
        };
        let to_a = |c: &mut Call, tag: u32, resp: Response| {
            c.handle(t0, Input::Response { tag, resp });
            owned(drain(c))
        };
        let ringing = to_a(&mut c, tag1, reply(&inv1, 180, "d1", None));
        assert_eq!(ringing.len(), 1, "{ringing:?}");
        assert_eq!(ringing[0].headers.get("Require"), Some("100rel"));
        let rseq: u32 = ringing[0]
            .headers
            .get("RSeq")
            .and_then(|v| v.parse().ok())
            .expect("RSeq");
        let a_tag = ringing[0].to_tag().expect("To tag");
        assert!(to_a(&mut c, tag1, reply(&inv1, 183, "d1", Some(ANSWER))).is_empty());
        // Unacknowledged: retransmitted at T1.
        assert!(c.poll_timeout().is_some_and(|t| t <= t0 + T1));
        c.handle_timeout(t0 + T1);
        assert_eq!(responses_to_a(&drain(&mut c))[0].status, 180);

        let prack = |c: &mut Call, seq: u32, rack: String| {
            let mut req = in_dialog_a("PRACK", seq, &a_tag, None);
            req.headers.push("RAck", rack);
            owned(request_in(c, t0, req, "10.0.0.7:5060"))
        };
        let wrong = prack(&mut c, 3, format!("{} 2 INVITE", rseq + 7));
        assert_eq!(wrong[0].status, 481);
        let out = prack(&mut c, 4, format!("{rseq} 2 INVITE"));
        assert_eq!(out.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 183]);
        assert_eq!(
            out[1].headers.get("RSeq"),
            Some((rseq + 1).to_string().as_str())
        );
        assert!(String::from_utf8_lossy(&out[1].body).contains("m=audio"));
        // The device answers: the 200 waits for the PRACK of the 183 that carried SDP.
        assert!(to_a(&mut c, tag1, reply(&inv1, 200, "d1", Some(ANSWER))).is_empty());
        let out = prack(&mut c, 5, format!("{} 2 INVITE", rseq + 1));
        assert_eq!(out.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200]);
        assert_eq!(out[1].headers.get("CSeq"), Some("2 INVITE"));
    }

    /// Attended transfer: the call's legs are published as their devices hold the dialogs, the
    /// INVITE to the consultation call's other party replaces its dialog and requires that it
    /// can, and only the party whose dialog the Replaces named may refer with it.
    #[test]
    fn attended_transfer_invites_with_replaces_and_only_for_the_named_party() {
        let t0 = Instant::now();
        let (mut c, _a_tag, inv1) = confirmed(t0);
        drain(&mut c);
        let legs = c.dialogs();
        assert_eq!(legs.len(), 2, "{legs:?}");
        assert_eq!(legs[1].call_id, "b-call");
        assert_eq!(legs[1].party, "<sip:bob@csps.local>");
        assert_eq!(legs[1].gateway_tag, inv1.from_tag().expect("tag"));
        assert_eq!(legs[0].target.to.addr.to_string(), "203.0.113.5:5060");

        let attended = |referrer: &str| {
            let mut t = carol();
            t.replaces = Some(Replaces {
                call_id: "consult".into(),
                to_tag: "carol-tag".into(),
                from_tag: "gw-tag".into(),
                early_only: false,
            });
            t.referrer = Some(referrer.into());
            Ok(t)
        };
        let out = refer_in(
            &mut c,
            t0,
            in_dialog_b("REFER", 1, &inv1, None),
            "192.0.2.9:5060",
            attended("sip:mallory@csps.local"),
        );
        assert_eq!(responses_to_a(&out)[0].status, 403);
        assert!(sent(&out, Method::Invite).is_none());

        let out = refer_in(
            &mut c,
            t0,
            in_dialog_b("REFER", 2, &inv1, None),
            "192.0.2.9:5060",
            attended("sip:bob@csps.local"),
        );
        assert_eq!(responses_to_a(&out)[0].status, 202);
        let (_, inv, to) = sent(&out, Method::Invite).expect("INVITE to carol");
        assert_eq!(to.addr.to_string(), "192.0.2.20:5060");
        assert_eq!(
            inv.headers.get("Replaces"),
            Some("consult;to-tag=carol-tag;from-tag=gw-tag")
        );
        assert_eq!(inv.headers.get("Require"), Some("replaces"));
        assert_eq!(inv.headers.get("Referred-By"), Some("<sip:bob@csps.local>"));
    }

    #[test]
    fn blind_transfer_by_the_callee_replaces_it_with_the_target() {
        let t0 = Instant::now();
        let (mut c, a_tag, inv1) = confirmed(t0);
        drain(&mut c);
        let out = refer_in(
            &mut c,
            t0,
            in_dialog_b("REFER", 1, &inv1, None),
            "192.0.2.9:5060",
            Ok(carol()),
        );
        assert_eq!(responses_to_a(&out)[0].status, 202);
        let n = notifies(&out);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].0, "192.0.2.9:5060");
        assert!(n[0].1.starts_with("active"), "{n:?}");
        assert_eq!(n[0].2, "SIP/2.0 100 Trying\r\n");
        let (tag, inv, to) = sent(&out, Method::Invite).expect("INVITE to carol");
        assert_eq!(to.addr.to_string(), "192.0.2.20:5060");
        assert_eq!(inv.headers.get("Call-ID"), Some("t-call"));
        assert_eq!(inv.headers.get("To"), Some("<sip:carol@csps.local>"));
        assert!(
            inv.headers
                .get("From")
                .is_some_and(|f| f.contains("sip:alice@"))
        );
        assert_eq!(inv.headers.get("Referred-By"), Some("<sip:bob@csps.local>"));
        let b = body(&inv);
        assert!(b.contains("m=audio 20002 RTP/AVP 0"), "{b}");
        assert!(b.contains("a=sendrecv"), "{b}");

        c.handle(
            t0,
            Input::Response {
                tag,
                resp: reply(&inv, 180, "c1", None),
            },
        );
        assert!(drain(&mut c).is_empty(), "ringing is not relayed to anyone");
        c.handle(
            t0,
            Input::Response {
                tag,
                resp: reply(&inv, 200, "c1", Some(CAROL_ANSWER)),
            },
        );
        let out = drain(&mut c);
        assert!(out.iter().any(|o| matches!(o,
            Output::Stateless { req, to } if req.method == Method::Ack
                && to.addr.to_string() == "192.0.2.20:5060")));
        let n = notifies(&out);
        assert_eq!(n.len(), 1);
        assert!(n[0].1.starts_with("terminated"), "{n:?}");
        assert_eq!(n[0].2, "SIP/2.0 200 OK\r\n");
        let (_, bye, to) = sent(&out, Method::Bye).expect("bob is hung up");
        assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
        assert_eq!(bye.headers.get("Call-ID"), Some("b-call"));
        assert!(out.iter().any(|o| matches!(o,
            Output::Media(MediaChange::B(Some(a), ip)) if a.to_string() == "192.0.2.20:6000"
                && ip.to_string() == "192.0.2.20")));
        assert!(out.iter().any(|o| matches!(o,
            Output::Transferred { a: false, party, teams: false } if party == "sip:carol@csps.local")));
        // Alice is re-INVITEd with carol's media at the relay, sendrecv.
        let (rtag, reinv, to) = sent(&out, Method::Invite).expect("re-INVITE to alice");
        assert_eq!(to.addr.to_string(), "203.0.113.5:5060");
        assert_eq!(reinv.headers.get("Call-ID"), Some("a-call"));
        let b = body(&reinv);
        assert!(
            b.contains("m=audio 20000 RTP/AVP 0") && b.contains("a=sendrecv"),
            "{b}"
        );
        answer_with_sdp(&mut c, t0, rtag, &reinv, OFFER);
        let out = drain(&mut c);
        assert!(out.iter().any(|o| matches!(o,
            Output::Stateless { req, .. } if req.method == Method::Ack
                && req.headers.get("Call-ID") == Some("a-call"))));
        assert!(out.iter().any(|o| matches!(o,
            Output::Media(MediaChange::A(Some(a), _)) if a.to_string() == "10.0.0.7:4000")));

        // Bob's own BYE crossing ours still gets its 200 and changes nothing.
        let out = request_in(
            &mut c,
            t0,
            in_dialog_b("BYE", 2, &inv1, None),
            "192.0.2.9:5060",
        );
        assert_eq!(responses_to_a(&out)[0].status, 200);
        assert!(sent(&out, Method::Bye).is_none());
        // Alice and carol talk; alice's hold goes to carol now.
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
            "203.0.113.5:5060",
        );
        let (_, hold, to) = sent(&out, Method::Invite).expect("hold relayed");
        assert_eq!(to.addr.to_string(), "192.0.2.20:5060");
        assert_eq!(hold.headers.get("Call-ID"), Some("t-call"));
        // Carol hangs up: alice gets the BYE.
        let out = request_in(&mut c, t0, from_carol("BYE", 1, &inv), "192.0.2.20:5060");
        assert_eq!(responses_to_a(&out)[0].status, 200);
        let (_, _, to) = sent(&out, Method::Bye).expect("alice is hung up");
        assert_eq!(to.addr.to_string(), "203.0.113.5:5060");
        assert_eq!(c.end_reason(), Some(EndReason::CalleeHungUp));
    }

    #[test]
    fn failed_transfer_notifies_the_status_and_both_keep_the_call() {
        let t0 = Instant::now();
        let (mut c, a_tag, inv1) = confirmed(t0);
        drain(&mut c);
        // An unknown target: 202, then the final status.
        let out = refer_in(
            &mut c,
            t0,
            in_dialog_b("REFER", 1, &inv1, None),
            "192.0.2.9:5060",
            Err(ReferRefusal::Failed(404)),
        );
        assert_eq!(responses_to_a(&out)[0].status, 202);
        let n = notifies(&out);
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!(n[1].2, "SIP/2.0 404 Not Found\r\n");
        assert!(n[1].1.starts_with("terminated"));
        assert!(sent(&out, Method::Invite).is_none());
        // A busy target: the transferor hears 486 and nothing else changes.
        let out = refer_in(
            &mut c,
            t0,
            in_dialog_b("REFER", 2, &inv1, None),
            "192.0.2.9:5060",
            Ok(carol()),
        );
        let (tag, inv, _) = sent(&out, Method::Invite).expect("INVITE to carol");
        c.handle(
            t0,
            Input::Response {
                tag,
                resp: reply(&inv, 486, "c1", None),
            },
        );
        let out = drain(&mut c);
        let n = notifies(&out);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].2, "SIP/2.0 486 Busy Here\r\n");
        assert!(sent(&out, Method::Bye).is_none());
        assert!(!out.iter().any(|o| matches!(o, Output::Transferred { .. })));
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
            "203.0.113.5:5060",
        );
        let (_, hold, _) = sent(&out, Method::Invite).expect("the call with bob goes on");
        assert_eq!(hold.headers.get("Call-ID"), Some("b-call"));
        // Unusable REFERs are refused outright.
        let out = refer_in(
            &mut c,
            t0,
            in_dialog_b("REFER", 3, &inv1, None),
            "192.0.2.9:5060",
            Err(ReferRefusal::Unsupported("attended".into())),
        );
        assert_eq!(responses_to_a(&out)[0].status, 491, "a hold is in progress");
    }

    /// Alice (leg A, gateway tag `a_tag`) REFERs her call to room `team` with CSeq `seq`.
    fn alice_refers_to_room(c: &mut Call, now: Instant, a_tag: &str, seq: u32) -> Vec<Output> {
        let alice = "203.0.113.5:5060";
        let req = in_dialog_a("REFER", seq, a_tag, None);
        let key = key_for(&req, alice);
        let room = RoomRef {
            name: "team".into(),
            host: "csps.local".into(),
        };
        c.handle(
            now,
            Input::ReferToRoom {
                key,
                from: remote(alice),
                req,
                room,
            },
        );
        drain(c)
    }

    /// Issue 4: a phone in a call with Teams REFERs the Teams leg to a room: 202, NOTIFY 100
    /// and 501 (the room speaks to phones only), nothing is handed over, and the call goes on
    /// (the phone's hold is relayed to Teams).
    #[test]
    fn a_teams_leg_is_not_moved_into_a_room() {
        let t0 = Instant::now();
        let mut s = setup(OFFER, "", SrtpPolicy::default(), false);
        s.targets = vec![Target {
            to: Remote {
                transport: Transport::Tls,
                ..remote("192.0.2.9:5061")
            },
            uri: Uri::parse("sip:+12065550123@sip.pstnhub.microsoft.com;user=phone").expect("uri"),
            local: "192.0.2.1:5061".parse().expect("addr"),
            sbc: Some(Sbc {
                fqdn: "sbc1.csps.test".into(),
                port: 5061,
                user: "+14255550100".into(),
            }),
        }];
        let mut c = started(s, t0);
        let (a_tag, ..) = answer_first(&mut c, t0, SRTP_ANSWER);
        drain(&mut c);
        let out = alice_refers_to_room(&mut c, t0, &a_tag, 3);
        assert_eq!(responses_to_a(&out)[0].status, 202);
        let n: Vec<_> = notifies(&out).into_iter().map(|n| n.2).collect();
        assert_eq!(
            n,
            ["SIP/2.0 100 Trying\r\n", "SIP/2.0 501 Not Implemented\r\n"]
        );
        assert!(!out.iter().any(|o| matches!(o, Output::ToRoom(_))));
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 4, &a_tag, Some(HOLD)),
            "203.0.113.5:5060",
        );
        assert!(
            sent(&out, Method::Invite).is_some(),
            "the hold goes to Teams"
        );
    }

    /// Issue 4: alice REFERs her call with bob to a conference room (the switch resolved the
    /// Refer-To): 202, NOTIFY 100, and bob's dialog is handed to the room; meanwhile nothing is
    /// sent in it (alice's hold gets 491). A failed move: the final NOTIFY is the room's status,
    /// bob's dialog comes back with the room's CSeq, and the call goes on (a second REFER hands
    /// it over again). A joined one: NOTIFY 200, a BYE to alice only, and once it is answered
    /// the call ends, moved into the conference.
    #[test]
    fn a_refer_to_a_room_hands_the_other_party_over_and_ends_once_it_joined() {
        let t0 = Instant::now();
        let (mut c, a_tag, _) = confirmed(t0);
        drain(&mut c);
        let alice = "203.0.113.5:5060";
        let refer_to_room = |c: &mut Call, seq| {
            let out = alice_refers_to_room(c, t0, &a_tag, seq);
            assert_eq!(responses_to_a(&out)[0].status, 202);
            let n = notifies(&out);
            assert_eq!(n.len(), 1, "{n:?}");
            assert_eq!(
                (n[0].0.as_str(), n[0].2.as_str()),
                (alice, "SIP/2.0 100 Trying\r\n")
            );
            out.into_iter()
                .find_map(|o| match o {
                    Output::ToRoom(h) => Some(h),
                    _ => None,
                })
                .expect("bob handed to the room")
        };
        let h = refer_to_room(&mut c, 3);
        assert_eq!(h.dialog.call_id, "b-call");
        assert_eq!(h.party, "sip:bob@csps.local");
        assert_eq!(h.to.addr.to_string(), "192.0.2.9:5060");
        assert_eq!(h.room.name, "team");
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("INVITE", 4, &a_tag, Some(HOLD)),
            alice,
        );
        assert_eq!(responses_to_a(&out)[0].status, 491);
        assert!(sent(&out, Method::Invite).is_none(), "nothing goes to bob");

        let seq = h.dialog.local_seq + 1;
        c.handle(
            t0,
            Input::RoomOutcome(RoomOutcome::Failed {
                status: 488,
                local_seq: seq,
                gone: false,
            }),
        );
        let out = drain(&mut c);
        let n = notifies(&out);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].2, "SIP/2.0 488 Not Acceptable Here\r\n");
        assert!(n[0].1.starts_with("terminated"));
        assert!(sent(&out, Method::Bye).is_none(), "both keep the call");
        assert!(c.is_answered());

        let h = refer_to_room(&mut c, 5);
        assert_eq!(h.dialog.local_seq, seq, "the room's CSeq is kept");
        c.handle(t0, Input::RoomOutcome(RoomOutcome::Joined));
        let out = drain(&mut c);
        let n = notifies(&out);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].2, "SIP/2.0 200 OK\r\n");
        let byes: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send { tag, to, req } if req.method == Method::Bye => {
                    Some((*tag, to.addr.to_string(), req.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(byes.len(), 1, "a BYE to alice only: {byes:?}");
        assert_eq!(byes[0].1, alice);
        assert!(!out.iter().any(|o| matches!(o, Output::Ended)));
        c.handle(
            t0,
            Input::Response {
                tag: byes[0].0,
                resp: reply(&byes[0].2, 200, &a_tag, None),
            },
        );
        // (bob's second device never answered the ringing: the call lingers for it.)
        c.handle_timeout(t0 + LINGER + Duration::from_secs(1));
        assert!(drain(&mut c).iter().any(|o| matches!(o, Output::Ended)));
        assert_eq!(c.end_reason(), Some(EndReason::MovedToConference));
    }

    /// Issue 5: Teams (the callee, through the trunk) transfers with a REFER the switch resolved
    /// to the trunk: the new INVITE names the transferee as Teams knew it (the caller's number
    /// at the FQDN, in Contact too), carries Teams' own Referred-By and the trunk's session
    /// timer, and offers SRTP; the NOTIFYs carry the FQDN Contact; the answer replaces Teams'
    /// leg, which gets a BYE.
    #[test]
    fn a_refer_from_teams_calls_the_target_through_the_trunk_as_the_transferee() {
        let t0 = Instant::now();
        let sbc = |user: &str| Sbc {
            fqdn: "sbc1.csps.test".into(),
            port: 5061,
            user: user.into(),
        };
        let trunk = |uri: &str, user: &str| Target {
            to: Remote {
                transport: Transport::Tls,
                ..remote("192.0.2.9:5061")
            },
            uri: Uri::parse(uri).expect("uri"),
            local: "192.0.2.1:5061".parse().expect("addr"),
            sbc: Some(sbc(user)),
        };
        let mut s = setup(OFFER, "", SrtpPolicy::default(), false);
        s.caller = "<sip:+14255550100@sbc1.csps.test;user=phone>".into();
        s.targets = vec![trunk(
            "sip:+12065550123@sip.pstnhub.microsoft.com;user=phone",
            "+14255550100",
        )];
        let mut c = started(s, t0);
        let (_, inv1, _, _) = answer_first(&mut c, t0, SRTP_ANSWER);
        drain(&mut c);

        // The null REFER's target: the proxy itself, its x-m kept.
        let null = "sip:sip.pstnhub.microsoft.com:5061;transport=tls;x-m=8:orgid:dfcba638";
        let target = TransferTarget {
            targets: vec![trunk(null, "csps")],
            to: format!("<{null}>"),
            party: "sip:sip.pstnhub.microsoft.com".into(),
            call_id: "t-call".into(),
            replaces: None,
            referrer: None,
            asserted: None,
        };
        let by = "<sip:sip.pstnhub.microsoft.com:5061;x-m=8:orgid:fa27;x-tt=aHR0cHM%3D>";
        let mut refer = in_dialog_b("REFER", 1, &inv1, None);
        refer.headers.push("Referred-By", by);
        let out = refer_in(&mut c, t0, refer, "192.0.2.9:5061", Ok(target));
        assert_eq!(responses_to_a(&out)[0].status, 202);
        let (tag, inv, to) = sent(&out, Method::Invite).expect("INVITE through the trunk");
        assert_eq!(to.transport, Transport::Tls);
        assert_eq!(inv.uri.to_string(), null);
        let asserted = "<sip:+14255550100@sbc1.csps.test;user=phone>";
        assert!(
            inv.headers
                .get("From")
                .is_some_and(|f| f.starts_with(asserted)),
            "{inv:?}"
        );
        assert_eq!(inv.headers.get("P-Asserted-Identity"), Some(asserted));
        assert_eq!(
            inv.headers.get("Contact"),
            Some("<sip:+14255550100@sbc1.csps.test:5061;transport=tls>")
        );
        assert_eq!(inv.headers.get("Referred-By"), Some(by));
        assert_eq!(
            inv.headers.get("Session-Expires"),
            Some("1800;refresher=uas")
        );
        assert!(body(&inv).contains("RTP/SAVP"), "{}", body(&inv));
        let notify = out
            .iter()
            .find_map(|o| match o {
                Output::Send { req, .. } if req.method == Method::Notify => Some(req),
                _ => None,
            })
            .expect("NOTIFY 100");
        assert!(
            notify
                .headers
                .get("Contact")
                .is_some_and(|c| c.contains("sbc1.csps.test")),
            "{notify:?}"
        );

        c.handle(
            t0,
            Input::Response {
                tag,
                resp: reply(&inv, 200, "t1", Some(SRTP_ANSWER)),
            },
        );
        let out = drain(&mut c);
        assert_eq!(notifies(&out)[0].2, "SIP/2.0 200 OK\r\n");
        let (_, bye, _) = sent(&out, Method::Bye).expect("Teams' old leg is hung up");
        assert_eq!(bye.headers.get("Call-ID"), Some("b-call"));
        assert!(out.iter().any(|o| matches!(o,
            Output::Transferred { a: false, party, teams: true }
                if party == "sip:sip.pstnhub.microsoft.com")));
        assert!(
            c.srtp(false),
            "the new Teams leg is SRTP with the keys of its answer"
        );
    }

    #[test]
    fn a_caller_that_hangs_up_after_its_refer_leaves_the_transfer_running() {
        let t0 = Instant::now();
        let (mut c, a_tag, inv1) = confirmed(t0);
        drain(&mut c);
        let out = refer_in(
            &mut c,
            t0,
            in_dialog_a("REFER", 3, &a_tag, None),
            "203.0.113.5:5060",
            Ok(carol()),
        );
        assert_eq!(responses_to_a(&out)[0].status, 202);
        assert_eq!(notifies(&out)[0].0, "203.0.113.5:5060");
        let (tag, inv, _) = sent(&out, Method::Invite).expect("INVITE to carol");
        // Carol is offered what bob receives, at the relay's side that faced alice.
        let b = body(&inv);
        assert!(b.contains("m=audio 20000 RTP/AVP 0"), "{b}");
        assert!(
            inv.headers
                .get("From")
                .is_some_and(|f| f.contains("sip:bob@"))
        );
        assert_eq!(
            inv.headers.get("Referred-By"),
            Some("\"Alice\" <sip:alice@csps.local>")
        );
        // Alice leaves at once: bob is not hung up.
        let out = request_in(
            &mut c,
            t0,
            in_dialog_a("BYE", 4, &a_tag, None),
            "203.0.113.5:5060",
        );
        assert_eq!(responses_to_a(&out)[0].status, 200);
        assert!(sent(&out, Method::Bye).is_none(), "{out:?}");
        c.handle(
            t0,
            Input::Response {
                tag,
                resp: reply(&inv, 200, "c1", Some(CAROL_ANSWER)),
            },
        );
        let out = drain(&mut c);
        assert!(notifies(&out).is_empty(), "alice is gone");
        assert!(sent(&out, Method::Bye).is_none());
        assert!(out.iter().any(|o| matches!(o,
            Output::Media(MediaChange::A(Some(a), _)) if a.to_string() == "192.0.2.20:6000")));
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Transferred { a: true, .. }))
        );
        let (_, reinv, to) = sent(&out, Method::Invite).expect("re-INVITE to bob");
        assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
        assert!(body(&reinv).contains("m=audio 20002"), "{}", body(&reinv));
        // Bob hangs up: carol (now leg A) gets the BYE.
        let out = request_in(
            &mut c,
            t0,
            in_dialog_b("BYE", 2, &inv1, None),
            "192.0.2.9:5060",
        );
        let (_, bye, to) = sent(&out, Method::Bye).expect("carol is hung up");
        assert_eq!(to.addr.to_string(), "192.0.2.20:5060");
        assert_eq!(bye.headers.get("Call-ID"), Some("t-call"));
    }

    #[test]
    fn a_failed_transfer_whose_transferor_left_hangs_up_the_transferee() {
        let t0 = Instant::now();
        let (mut c, a_tag, _) = confirmed(t0);
        drain(&mut c);
        let out = refer_in(
            &mut c,
            t0,
            in_dialog_a("REFER", 3, &a_tag, None),
            "203.0.113.5:5060",
            Ok(carol()),
        );
        let (tag, inv, _) = sent(&out, Method::Invite).expect("INVITE to carol");
        request_in(
            &mut c,
            t0,
            in_dialog_a("BYE", 4, &a_tag, None),
            "203.0.113.5:5060",
        );
        c.handle(
            t0,
            Input::Response {
                tag,
                resp: reply(&inv, 180, "c1", None),
            },
        );
        // Nobody answers in time.
        let due = c.poll_timeout().expect("the target's ring timer");
        assert_eq!(due, t0 + NO_ANSWER);
        c.handle_timeout(due);
        let out = drain(&mut c);
        assert!(
            sent(&out, Method::Cancel).is_some(),
            "carol's ringing is cancelled"
        );
        let (_, _, to) = sent(&out, Method::Bye).expect("bob is hung up");
        assert_eq!(to.addr.to_string(), "192.0.2.9:5060");
        assert_eq!(c.end_reason(), Some(EndReason::TransferFailed));
    }

    #[test]
    fn offerless_invite_takes_the_offer_from_the_answer_and_the_answer_from_the_ack() {
        let t0 = Instant::now();
        let mut c = call("", t0);
        let out = drain(&mut c);
        assert_eq!(responses_to_a(&out)[0].status, 100);
        let invites = sent_invites(&out);
        assert_eq!(invites.len(), 2);
        let (tag1, inv1) = invites[0].clone();
        assert!(inv1.body.is_empty() && inv1.headers.get("Content-Type").is_none());
        // Bob's device offers in its 200 (G.729 is not relayed and is dropped).
        let bob_offer = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
            m=audio 5000 RTP/AVP 18 0 101\r\na=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
        c.handle(
            t0,
            Input::Response {
                tag: tag1,
                resp: reply(&inv1, 200, "d1", Some(bob_offer)),
            },
        );
        let out = drain(&mut c);
        let ok = responses_to_a(&out)[0].clone();
        assert_eq!(ok.status, 200);
        let b = String::from_utf8_lossy(&ok.body).into_owned();
        assert!(b.contains("m=audio 20000 RTP/AVP 0 101"), "{b}");
        assert!(!b.contains("192.0.2.9"), "{b}");
        assert!(
            !out.iter().any(|o| matches!(o, Output::Stateless { .. })),
            "no ACK to bob before alice answers: {out:?}"
        );
        assert!(out.iter().any(|o| matches!(o,
            Output::Media(MediaChange::B(Some(a), _)) if a.to_string() == "192.0.2.9:5000")));
        // A retransmitted 200 from bob is not ACKed without the answer either.
        c.handle(
            t0,
            Input::Response {
                tag: tag1,
                resp: reply(&inv1, 200, "d1", Some(bob_offer)),
            },
        );
        assert!(
            !drain(&mut c)
                .iter()
                .any(|o| matches!(o, Output::Stateless { .. }))
        );
        let a_tag = ok.to_tag().expect("To tag");
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\n\
            m=audio 4000 RTP/AVP 0\r\n";
        c.handle(t0, Input::Ack(in_dialog_a("ACK", 2, &a_tag, Some(answer))));
        let out = drain(&mut c);
        let ack = out
            .iter()
            .find_map(|o| match o {
                Output::Stateless { req, to } if req.method == Method::Ack => Some((req, to)),
                _ => None,
            })
            .expect("bob's ACK");
        assert_eq!(ack.1.addr.to_string(), "192.0.2.9:5060");
        let b = body(ack.0);
        assert!(b.contains("m=audio 20002 RTP/AVP 0"), "{b}");
        assert!(out.iter().any(|o| matches!(o,
            Output::Media(MediaChange::A(Some(a), _)) if a.to_string() == "10.0.0.7:4000")));
        assert!(c.is_answered());
    }

    #[test]
    fn offerless_caller_whose_ack_has_no_answer_is_hung_up() {
        let t0 = Instant::now();
        let mut c = call("", t0);
        let invites = sent_invites(&drain(&mut c));
        let (tag1, inv1) = invites[0].clone();
        c.handle(
            t0,
            Input::Response {
                tag: tag1,
                resp: reply(&inv1, 200, "d1", Some(ANSWER)),
            },
        );
        let ok = responses_to_a(&drain(&mut c))[0].clone();
        let a_tag = ok.to_tag().expect("To tag");
        c.handle(t0, Input::Ack(in_dialog_a("ACK", 2, &a_tag, None)));
        let out = drain(&mut c);
        assert!(out.iter().any(|o| matches!(o,
            Output::Stateless { req, .. } if req.method == Method::Ack && req.body.is_empty())));
        let byes: Vec<String> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send { req, to, .. } if req.method == Method::Bye => {
                    Some(to.addr.to_string())
                }
                _ => None,
            })
            .collect();
        assert_eq!(byes, ["203.0.113.5:5060", "192.0.2.9:5060"]);
        assert_eq!(c.end_reason(), Some(EndReason::Rejected));
    }

    /// An INVITE with Replaces from `user`'s phone at 198.51.100.4 (PCMA and PCMU offered),
    /// as the switch hands it to the call.
    fn replacement(user: &str, replaces: &str, call_id: &str) -> Replacement {
        let sdp = "v=0\r\no=- 1 1 IN IP4 198.51.100.4\r\ns=-\r\nc=IN IP4 198.51.100.4\r\nt=0 0\r\n\
            m=audio 7000 RTP/AVP 8 0\r\n";
        replacement_with(user, replaces, call_id, sdp)
    }

    /// [`replacement`] with the body `sdp` (empty: an offerless INVITE).
    fn replacement_with(user: &str, replaces: &str, call_id: &str, sdp: &str) -> Replacement {
        let content_type = if sdp.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        let req = parse_req(&format!(
            "INVITE sip:bob@csps.local SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.4:5060;branch=z9hG4bK{call_id}\r\n\
             From: <sip:{user}@csps.local>;tag=new\r\nTo: <sip:bob@csps.local>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:{user}@198.51.100.4>\r\nMax-Forwards: 70\r\n\
             Replaces: {replaces}\r\n{content_type}Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ));
        Replacement {
            key: key_for(&req, "198.51.100.4:5060"),
            from: remote("198.51.100.4:5060"),
            local: "192.0.2.1:5060".parse().expect("addr"),
            replaces: Replaces::parse(replaces).expect("replaces"),
            req,
            party: format!("<sip:{user}@csps.local>"),
        }
    }

    /// The statuses of the answers in `out`.
    fn statuses(out: &[Output]) -> Vec<u16> {
        responses_to_a(out).iter().map(|r| r.status).collect()
    }

    /// RFC 3891 §3 on an answered call: the tags are matched as the gateway holds the dialog
    /// (the other way round: 481); `early-only` gets 486, another user 403. Bob's other phone
    /// is answered 200 in the codec alice uses, the first phone gets a BYE with the reason,
    /// alice a re-INVITE with the new phone's media; a second Replaces of the old dialog: 603.
    #[test]
    fn a_replacing_invite_takes_over_the_answered_device_and_refusals_leave_the_call() {
        let t0 = Instant::now();
        let (mut c, _, inv1) = confirmed(t0);
        drain(&mut c);
        let gw = inv1.from_tag().expect("tag");
        let named = format!("b-call;to-tag={gw};from-tag=d1");
        for (user, value, status) in [
            ("bob", format!("b-call;to-tag=d1;from-tag={gw}"), 481),
            ("bob", format!("{named};early-only"), 486),
            ("carol", named.clone(), 403),
        ] {
            c.handle(
                t0,
                Input::Replace(Box::new(replacement(user, &value, "r1"))),
            );
            let out = drain(&mut c);
            assert_eq!(statuses(&out), [status], "{value}");
            assert!(sent(&out, Method::Bye).is_none(), "{value}");
        }
        let rep = replacement("bob", &named, "r2");
        let key = rep.key;
        c.handle(t0, Input::Replace(Box::new(rep)));
        let out = drain(&mut c);
        let ok = out
            .iter()
            .find_map(|o| match o {
                Output::Respond { key: k, resp } if *k == key => Some(resp.clone()),
                _ => None,
            })
            .expect("200 to the new phone");
        assert_eq!(ok.status, 200);
        assert!(ok.to_tag().is_some());
        let answer = String::from_utf8_lossy(&ok.body).into_owned();
        // Alice's PCMU (what the old phone answered), not the new phone's first codec.
        assert!(answer.contains("m=audio 20002 RTP/AVP 0\r\n"), "{answer}");
        let (_, bye, to) = sent(&out, Method::Bye).expect("BYE to the old phone");
        assert_eq!(to, remote("192.0.2.9:5060"));
        assert_eq!(bye.headers.get("Reason"), Some(REPLACED));
        let (_, reinvite, to) = sent(&out, Method::Invite).expect("re-INVITE to alice");
        assert_eq!(to, remote("203.0.113.5:5060"));
        let offer = String::from_utf8_lossy(&reinvite.body).into_owned();
        assert!(offer.contains("m=audio 20000 RTP/AVP 0"), "{offer}");
        assert!(offer.contains("a=sendrecv"), "{offer}");
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Transferred { a: false, party, teams: false } if party == "sip:bob@csps.local"
        )));
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Media(MediaChange::B(Some(a), _)) if *a == "198.51.100.4:7000".parse().expect("addr")
        )));
        // The old dialog is gone; the new phone is the call's B leg.
        c.handle(
            t0,
            Input::Replace(Box::new(replacement("bob", &named, "r3"))),
        );
        assert_eq!(statuses(&drain(&mut c)), [603]);
        let legs = c.dialogs();
        assert_eq!(legs[1].call_id, "r2");
        assert_eq!(legs[1].device_tag, "new");
        // Its 200 is retransmitted until its ACK.
        let retransmitted = c.poll_timeout().expect("timer");
        c.handle_timeout(retransmitted);
        assert_eq!(statuses(&drain(&mut c)), [200]);
        c.handle(
            t0,
            Input::Ack(replacing_ack("r2", &legs[1].gateway_tag, "")),
        );
        assert!(c.replacement.is_none());
    }

    /// The ACK of bob's replacing phone (Call-ID `call_id`, the gateway's tag `gw`) with the
    /// body `sdp` (an answer, or nothing).
    fn replacing_ack(call_id: &str, gw: &str, sdp: &str) -> Request {
        let content_type = if sdp.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        parse_req(&format!(
            "ACK sip:csps@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.4:5060;branch=z9hG4bKack\r\n\
             From: <sip:bob@csps.local>;tag=new\r\nTo: <sip:bob@csps.local>;tag={gw}\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 ACK\r\nMax-Forwards: 70\r\n{content_type}Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ))
    }

    /// An offerless INVITE with Replaces of bob's answered device (RFC 3891 with RFC 3264 §4)
    /// in a confirmed call; the 200 to the new phone and its gateway tag.
    fn offerless_takeover(c: &mut Call, t0: Instant, inv1: &Request) -> (Vec<Output>, Response) {
        let gw = inv1.from_tag().expect("tag");
        let named = format!("b-call;to-tag={gw};from-tag=d1");
        let rep = replacement_with("bob", &named, "r4", "");
        let key = rep.key;
        c.handle(t0, Input::Replace(Box::new(rep)));
        let out = drain(c);
        let ok = out
            .iter()
            .find_map(|o| match o {
                Output::Respond { key: k, resp } if *k == key => Some(resp.clone()),
                _ => None,
            })
            .expect("200 to the new phone");
        (out, ok)
    }

    /// RFC 3891 without an offer: the new phone's 200 carries the offer a transfer's target
    /// gets (alice's media at the relay's side facing bob); nothing else changes until its
    /// ACK (a re-INVITE meanwhile gets 491). The ACK's answer makes it bob's device: the old
    /// one gets a BYE with the reason, alice a re-INVITE with the new phone's media.
    #[test]
    fn an_offerless_replacing_invite_gets_an_offer_and_takes_over_with_the_acks_answer() {
        let t0 = Instant::now();
        let (mut c, a_tag, inv1) = confirmed(t0);
        drain(&mut c);
        let (out, ok) = offerless_takeover(&mut c, t0, &inv1);
        assert_eq!(ok.status, 200);
        let offer = String::from_utf8_lossy(&ok.body).into_owned();
        assert!(
            offer.contains("m=audio 20002 RTP/AVP 0 101\r\n"),
            "alice's codecs, none she lacks: {offer}"
        );
        assert!(offer.contains("a=sendrecv"), "{offer}");
        assert!(sent(&out, Method::Bye).is_none(), "{out:?}");
        assert!(sent(&out, Method::Invite).is_none(), "{out:?}");
        assert!(!out.iter().any(|o| matches!(o, Output::Transferred { .. })));
        // Alice's hold meanwhile waits.
        c.handle(
            t0,
            Input::Request {
                key: key_for(
                    &in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
                    "10.0.0.7:5060",
                ),
                from: remote("203.0.113.5:5060"),
                req: in_dialog_a("INVITE", 3, &a_tag, Some(HOLD)),
            },
        );
        assert_eq!(statuses(&drain(&mut c)), [491]);
        let gw = ok.to_tag().expect("To tag");
        let answer = "v=0\r\no=- 1 1 IN IP4 198.51.100.4\r\ns=-\r\nc=IN IP4 198.51.100.4\r\nt=0 0\r\n\
            m=audio 7000 RTP/AVP 0\r\na=sendrecv\r\n";
        c.handle(t0, Input::Ack(replacing_ack("r4", &gw, answer)));
        let out = drain(&mut c);
        let (_, bye, to) = sent(&out, Method::Bye).expect("BYE to the old phone");
        assert_eq!(to, remote("192.0.2.9:5060"));
        assert_eq!(bye.headers.get("Reason"), Some(REPLACED));
        let (_, reinvite, to) = sent(&out, Method::Invite).expect("re-INVITE to alice");
        assert_eq!(to, remote("203.0.113.5:5060"));
        let offer = String::from_utf8_lossy(&reinvite.body).into_owned();
        assert!(offer.contains("m=audio 20000 RTP/AVP 0"), "{offer}");
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Media(MediaChange::B(Some(a), _)) if *a == "198.51.100.4:7000".parse().expect("addr")
        )));
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Transferred { a: false, party, teams: false } if party == "sip:bob@csps.local"
        )));
        assert_eq!(c.dialogs()[1].call_id, "r4");
        assert!(c.joining.is_none() && c.replacement.is_none());
    }

    /// An offerless replacing phone whose ACK has no answer (or one that answers nothing
    /// offered) gets a BYE in its new dialog; the old device and alice keep their call
    /// untouched. No ACK at all: the BYE once the 200's retransmissions give up.
    #[test]
    fn an_offerless_replacing_phone_without_an_answer_is_hung_up_and_the_call_goes_on() {
        let unusable = "v=0\r\no=- 1 1 IN IP4 198.51.100.4\r\ns=-\r\nc=IN IP4 198.51.100.4\r\nt=0 0\r\n\
            m=audio 7000 RTP/AVP 18\r\n";
        for ack_body in ["", unusable, "none"] {
            let t0 = Instant::now();
            let (mut c, _, inv1) = confirmed(t0);
            drain(&mut c);
            let (_, ok) = offerless_takeover(&mut c, t0, &inv1);
            let gw = ok.to_tag().expect("To tag");
            if ack_body == "none" {
                let mut at = t0;
                while c.joining.is_some() {
                    at = c.poll_timeout().expect("the 200 is retransmitted");
                    c.handle_timeout(at);
                }
                assert!(at >= t0 + LINGER);
            } else {
                c.handle(t0, Input::Ack(replacing_ack("r4", &gw, ack_body)));
            }
            let out = drain(&mut c);
            let byes: Vec<Remote> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Send { req, to, .. } if req.method == Method::Bye => Some(*to),
                    _ => None,
                })
                .collect();
            assert_eq!(byes, [remote("198.51.100.4:5060")], "{ack_body}");
            assert!(sent(&out, Method::Invite).is_none(), "{ack_body}");
            assert!(c.is_answered(), "{ack_body}");
            assert_eq!(c.end_reason(), None, "{ack_body}");
            assert_eq!(c.dialogs()[1].device_tag, "d1", "{ack_body}");
        }
    }

    /// Call pickup without an offer: carol's phone gets 200 with the ringing devices' offer,
    /// and nothing else happens until her ACK; its answer (PCMA, which alice lacks) makes her
    /// the answering device: alice gets 200 in her PCMU, the relay transcodes, the ringing
    /// device gets a CANCEL. A second pickup meanwhile gets 491.
    #[test]
    fn an_offerless_pickup_answers_the_caller_with_the_acks_answer() {
        let t0 = Instant::now();
        let (mut c, inv2, _) = ringing_at_the_second_device(t0);
        let gw = inv2.from_tag().expect("tag");
        let early = format!("b-call;to-tag={gw};from-tag=ring2");
        c.handle(
            t0,
            Input::Replace(Box::new(replacement_with("carol", &early, "p5", ""))),
        );
        let out = drain(&mut c);
        assert_eq!(statuses(&out), [200], "carol's 200 only");
        let ok = responses_to_a(&out)[0].clone();
        let offer = String::from_utf8_lossy(&ok.body).into_owned();
        assert!(
            offer.contains("m=audio 20002 RTP/AVP 0 101 9 111 8\r\n"),
            "{offer}"
        );
        assert!(!out.iter().any(|o| matches!(o, Output::Send { .. })));
        c.handle(
            t0,
            Input::Replace(Box::new(replacement("carol", &early, "p6"))),
        );
        assert_eq!(statuses(&drain(&mut c)), [491]);
        let to_tag = ok.to_tag().expect("To tag");
        let answer = "v=0\r\no=- 1 1 IN IP4 198.51.100.4\r\ns=-\r\nc=IN IP4 198.51.100.4\r\nt=0 0\r\n\
            m=audio 7000 RTP/AVP 8\r\n";
        let ack = replacing_ack("p5", &to_tag, answer);
        c.handle(t0, Input::Ack(ack));
        let out = drain(&mut c);
        let to_alice = responses_to_a(&out);
        assert_eq!(to_alice.len(), 1);
        assert_eq!(to_alice[0].status, 200);
        let b = String::from_utf8_lossy(&to_alice[0].body).into_owned();
        assert!(b.contains("m=audio 20000 RTP/AVP 0"), "{b}");
        assert!(matches!(transcoding(&out), Some(Some(_))), "{out:?}");
        let (_, _, to) = sent(&out, Method::Cancel).expect("CANCEL to the ringing device");
        assert_eq!(to, remote("192.0.2.10:5060"));
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Transferred { a: false, party, .. } if party == "sip:carol@csps.local"
        )));
        assert!(out.iter().any(|o| matches!(o, Output::Answered)));
    }

    /// A call with Teams (alice's phone calls out through the trunk, as her number): a Replaces
    /// naming the gateway's dialog with the trunk gets 403 (its party is the Teams user, no
    /// phone's); one naming alice's own dialog, from her other phone (checked against her AoR,
    /// not the number), moves the call there, and Teams gets a
    /// `sendrecv` re-INVITE that stays SRTP (RTP/SAVP with a key) while the new phone is plain.
    #[test]
    fn a_phone_takes_over_a_call_with_teams_and_the_trunks_dialog_is_not_replaceable() {
        let t0 = Instant::now();
        let mut s = setup(OFFER, "", SrtpPolicy::default(), false);
        s.targets.truncate(1);
        s.targets[0].to.transport = Transport::Tls;
        s.targets[0].sbc = Some(Sbc {
            fqdn: "sbc1.csps.test".into(),
            port: 5061,
            user: "+14255550100".into(),
        });
        // As the switch sets a call out through the trunk up: alice is her number there.
        s.caller = "<sip:+14255550100@sbc1.csps.test;user=phone>".into();
        s.caller_party = Some("sip:alice@csps.local".into());
        let mut c = started(s, t0);
        let (a_tag, inv1, ..) = answer_first(&mut c, t0, SRTP_ANSWER);
        drain(&mut c);
        let gw = inv1.from_tag().expect("tag");
        let trunk = format!("b-call;to-tag={gw};from-tag=d1");
        c.handle(
            t0,
            Input::Replace(Box::new(replacement("alice", &trunk, "t1"))),
        );
        let out = drain(&mut c);
        assert_eq!(statuses(&out), [403]);
        assert!(sent(&out, Method::Bye).is_none());
        let own = format!("a-call;to-tag={a_tag};from-tag=at");
        c.handle(
            t0,
            Input::Replace(Box::new(replacement("alice", &own, "t2"))),
        );
        let out = drain(&mut c);
        assert_eq!(statuses(&out), [200]);
        let to_phone = String::from_utf8_lossy(&responses_to_a(&out)[0].body).into_owned();
        assert!(
            to_phone.contains("RTP/AVP") && !to_phone.contains("a=crypto"),
            "{to_phone}"
        );
        let (_, bye, to) = sent(&out, Method::Bye).expect("BYE to the first phone");
        assert_eq!(to, remote("203.0.113.5:5060"));
        assert_eq!(bye.headers.get("Reason"), Some(REPLACED));
        let (_, reinvite, to) = sent(&out, Method::Invite).expect("re-INVITE to Teams");
        assert_eq!(to.addr, "192.0.2.9:5060".parse().expect("addr"));
        let offer = body(&reinvite);
        assert!(offer.contains("m=audio 20002 RTP/SAVP 0"), "{offer}");
        assert!(offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert!(offer.contains("a=sendrecv"), "{offer}");
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Transferred { a: true, party, teams: false } if party == "sip:alice@csps.local"
        )));
    }

    /// Alice's call ringing at bob's second device (180, its tag `ring2`): the call, that
    /// device's INVITE and what the call did on the 180.
    fn ringing_at_the_second_device(t0: Instant) -> (Call, Request, Vec<Output>) {
        let mut c = call(OFFER, t0);
        let invites = sent_invites(&drain(&mut c));
        let (tag2, inv2) = invites[1].clone();
        c.handle(
            t0,
            Input::Response {
                tag: tag2,
                resp: reply(&inv2, 180, "ring2", None),
            },
        );
        let out = drain(&mut c);
        (c, inv2, out)
    }

    /// Call pickup (RFC 3891 §3, an early dialog the gateway initiated): carol's phone names
    /// the gateway's early dialog with bob's second device; she gets 200, alice gets 200 with
    /// an answer to her offer, the ringing device a CANCEL ("Call completed elsewhere"). The
    /// caller's own early dialog (not initiated by the gateway) gets 481. The ringing device's
    /// dialog is what [`Call::early_dialog`] shows a busy-lamp field, and a Replaces naming it
    /// with the tags the other way round (as the device holds it) is accepted too.
    #[test]
    fn a_replacing_invite_picks_up_a_ringing_device() {
        let t0 = Instant::now();
        let (mut c, inv2, out) = ringing_at_the_second_device(t0);
        let a_tag = responses_to_a(&out)[0].to_tag().expect("To tag");
        let own = format!("a-call;to-tag={a_tag};from-tag=at");
        c.handle(
            t0,
            Input::Replace(Box::new(replacement("carol", &own, "p0"))),
        );
        assert_eq!(statuses(&drain(&mut c)), [481]);
        let gw = inv2.from_tag().expect("tag");
        assert_eq!(
            c.early_dialog(),
            Some(("b-call".to_owned(), "ring2".to_owned(), gw.clone()))
        );
        let swapped = format!("b-call;to-tag=ring2;from-tag={gw};early-only");
        c.handle(
            t0,
            Input::Replace(Box::new(replacement("carol", &swapped, "p1"))),
        );
        let out = drain(&mut c);
        assert_eq!(statuses(&out), [200, 200], "carol's 200, then alice's");
        let to_alice = responses_to_a(&out)[1];
        let answer = String::from_utf8_lossy(&to_alice.body).into_owned();
        assert!(
            answer.contains("m=audio 20000 RTP/AVP 0 101\r\n"),
            "{answer}"
        );
        let cancel = out.iter().find_map(|o| match o {
            Output::Send { req, to, .. } if req.method == Method::Cancel => Some((req, *to)),
            _ => None,
        });
        let (cancel, to) = cancel.expect("CANCEL to the ringing device");
        assert_eq!(to, remote("192.0.2.10:5060"));
        assert_eq!(cancel.headers.get("Reason"), Some(COMPLETED_ELSEWHERE));
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Transferred { a: false, party, .. } if party == "sip:carol@csps.local"
        )));
        assert!(out.iter().any(|o| matches!(o, Output::Answered)));
        // Carol offered PCMA first, but also alice's PCMU: she is answered PCMU, nothing is
        // transcoded.
        let to_carol = String::from_utf8_lossy(&responses_to_a(&out)[0].body).into_owned();
        assert!(
            to_carol.contains("m=audio 20002 RTP/AVP 0\r\n"),
            "{to_carol}"
        );
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Media(MediaChange::Transcode(None))))
        );
        assert_eq!(c.early_dialog(), None, "nothing rings any more");
        // The picked-up dialog ended with the pickup.
        let early = format!("b-call;to-tag={gw};from-tag=ring2;early-only");
        c.handle(
            t0,
            Input::Replace(Box::new(replacement("carol", &early, "p2"))),
        );
        assert_eq!(statuses(&drain(&mut c)), [603]);
    }
}
