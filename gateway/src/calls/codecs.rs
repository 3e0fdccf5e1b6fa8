//! Codec choice per leg, sans-IO: what the B2BUA offers onwards and answers back so that each leg
//! gets a codec it supports, with transcoding in the media core when the two differ.
//!
//! The offer sent onwards keeps the offerer's codecs first, in its order, so an answerer that
//! shares one picks it and media is relayed untouched; the gateway then appends the codecs it can
//! transcode that the offerer lacks ([`augment`]), so an answerer that shares none still finds
//! one. When the answer picks an appended codec, the offerer is answered with its own first
//! transcodable codec and the relay transcodes ([`answer_back`]). `Data.SipConfig.Use8KHz` forces
//! G.711 on every phone leg ([`narrowband`]) — the cSPS switch — whatever the other leg uses.

use csps_sip::sdp::{Codec, Format, Media, OfferError, Sdp, codec_list};

use crate::media::codec::{opus_fmtp, rtp_clock};
use crate::media::transcode::LegFormat;

/// The codecs the media core decodes and encodes, in the order the gateway adds them to an offer
/// (wide-band first: 16 kHz end to end is preferred).
pub const TRANSCODABLE: &[Codec] = &[Codec::G722, Codec::Opus, Codec::Pcmu, Codec::Pcma];

/// What a phone leg may use under `Use8KHz`.
pub const NARROWBAND: &[Codec] = &[Codec::Pcmu, Codec::Pcma, Codec::TelephoneEvent];

/// The codecs each leg of a transcoded call uses: (the offerer's, the answerer's).
pub type Transcoding = (LegFormat, LegFormat);

/// The audio a leg sends: its payload type and RTP clock rate, when the gateway knows the
/// codec's clock (the jitter of `GET /api/calls` is measured in it).
pub type AudioClock = Option<(u8, u32)>;

/// A leg's audio payload type and RTP clock (RFC 3551, RFC 7587).
pub fn leg_clock(f: &LegFormat) -> AudioClock {
    Some((f.payload_type, rtp_clock(f.codec)?))
}

/// The audio legs A and B send after an exchange: each leg's own when the relay transcodes
/// (`transcode`, A's first), else the one audio codec the `answer` (section `idx`) picked,
/// which both legs then share.
pub fn audio_clocks(
    answer: &Sdp,
    idx: usize,
    transcode: Option<Transcoding>,
) -> (AudioClock, AudioClock) {
    if let Some((a, b)) = transcode {
        return (leg_clock(&a), leg_clock(&b));
    }
    let shared = answer
        .media
        .get(idx)
        .and_then(|m| m.codecs().find(|f| f.codec.is_audio()))
        .and_then(|f| Some((f.pt, rtp_clock(f.codec)?)));
    (shared, shared)
}

/// Appends to the audio section `idx` of an offer going onwards every transcodable codec it
/// lacks, and telephone-event when it has none: an answerer that sends RFC 4733 digits then
/// has them read by the gateway and sent to the offerer as SIP INFO (the offerer's answer
/// drops the event again, see [`answer_back`]).
pub fn augment(offer: &mut Sdp, idx: usize) {
    let Some(m) = offer.media.get_mut(idx) else {
        return;
    };
    for &c in TRANSCODABLE.iter().chain([&Codec::TelephoneEvent]) {
        if m.codecs().any(|f| f.codec == c) {
            continue;
        }
        if let (Some(pt), Codec::Opus) = (m.add_codec(c), c) {
            m.attributes.push(csps_sip::sdp::Attribute {
                name: "fmtp".to_owned(),
                value: Some(format!("{pt} {}", opus_fmtp())),
            });
        }
    }
}

/// Keeps only G.711 (and telephone-event) in the audio section `idx` for a phone leg under
/// `Use8KHz`; 488 when nothing is left.
pub fn narrowband(sdp: &mut Sdp, idx: usize) -> Result<(), OfferError> {
    let m = sdp.media.get_mut(idx).ok_or(OfferError::NoAudio)?;
    m.retain_formats(|f| NARROWBAND.contains(&f.codec));
    if m.codecs().any(|f| f.codec.is_audio()) {
        Ok(())
    } else {
        Err(OfferError::NoCommonCodec(codec_list(NARROWBAND)))
    }
}

/// The telephone-event (payload type, clock) a section lists, if any.
pub fn telephone_event(m: &Media) -> Option<(u8, u32)> {
    m.codecs()
        .find(|f| f.codec == Codec::TelephoneEvent)
        .map(|f| (f.pt, f.clock))
}

/// The format a leg's section uses: its first audio format, with the telephone-event it lists.
fn leg_format(m: &Media, audio: Format) -> LegFormat {
    LegFormat {
        codec: audio.codec,
        payload_type: audio.pt,
        telephone_event: telephone_event(m),
        max_average_bitrate: audio.max_average_bitrate,
    }
}

/// Gives the offerer's answer (`answer`, section `idx`) the telephone-event of its offer when
/// the answerer accepted none: the gateway takes the offerer's RFC 4733 events itself and
/// sends them on as SIP INFO (DTMF interworking, see `media::dtmf`). An offerer without
/// telephone-event gets none in its answer (RFC 3264 §6.1: only what it offered), though the
/// answerer accepted the one [`augment`] added: the gateway reads those events instead.
fn keep_telephone_event(offered: &Media, answer: &mut Sdp, idx: usize) {
    let Some(m) = answer.media.get_mut(idx) else {
        return;
    };
    let Some(te) = offered.codecs().find(|f| f.codec == Codec::TelephoneEvent) else {
        m.retain_formats(|f| f.codec != Codec::TelephoneEvent);
        return;
    };
    if telephone_event(m).is_some() || m.codecs().any(|f| f.pt == te.pt) {
        return;
    }
    m.formats.push(te.pt.to_string());
    m.attributes.push(csps_sip::sdp::Attribute {
        name: "rtpmap".to_owned(),
        value: Some(format!("{} telephone-event/{}", te.pt, te.clock)),
    });
}

/// The answer for the offerer, made from the answerer's `answer` (audio section `idx`) to the
/// offer sent onwards. When the answerer picked a codec the offerer offered (`origin`, the
/// offerer's own offer as restricted, before [`augment`]), the answer stays as it is and `None`
/// says media is relayed. The offerer keeps its telephone-event even when the answerer has none
/// (the gateway interworks its RFC 4733 events with SIP INFO). Otherwise the answer's audio section is rewritten to the offerer's
/// first transcodable codec (and its telephone-event when both legs have one), and the codecs of
/// both legs are returned for the relay's transcoder.
pub fn answer_back(
    origin: &Sdp,
    answer: &mut Sdp,
    idx: usize,
) -> Result<Option<Transcoding>, OfferError> {
    let (Some(offered), Some(answered)) = (origin.media.get(idx), answer.media.get(idx)) else {
        return Err(OfferError::NoAudio);
    };
    let Some(chosen) = answered.codecs().find(|f| f.codec.is_audio()) else {
        return Err(OfferError::NoAudio);
    };
    if offered
        .codecs()
        .any(|f| f.pt == chosen.pt && f.codec == chosen.codec)
    {
        let offered = offered.clone();
        keep_telephone_event(&offered, answer, idx);
        return Ok(None);
    }
    let Some(own) = offered.codecs().find(|f| TRANSCODABLE.contains(&f.codec)) else {
        return Err(OfferError::NoCommonCodec(codec_list(TRANSCODABLE)));
    };
    let far = leg_format(answered, chosen);
    let near = leg_format(offered, own);
    let formats: Vec<u8> = std::iter::once(near.payload_type)
        .chain(near.telephone_event.map(|(pt, _)| pt))
        .collect();
    let offered = offered.clone();
    if let Some(m) = answer.media.get_mut(idx) {
        m.set_formats_from(&offered, &formats);
    }
    Ok(Some((near, far)))
}

/// The gateway's own answer to `offer` (audio section `idx`), made when the gateway answers an
/// INVITE itself instead of relaying another device's answer (an INVITE with Replaces): one
/// transcodable audio codec, the first the offer lists among `prefer` (the other leg's codecs,
/// so media need not be transcoded), else the offer's first transcodable one; its
/// telephone-event when offered; the direction that answers the offer's (RFC 3264 §6.1). The
/// answer keeps the offerer's address (the caller points it at the relay); with it comes the
/// format the leg will use. 488 when the offer has no transcodable codec.
pub fn answer_one(
    offer: &Sdp,
    idx: usize,
    prefer: &[Codec],
) -> Result<(Sdp, LegFormat), OfferError> {
    let m = offer.media.get(idx).ok_or(OfferError::NoAudio)?;
    let usable = |f: &Format| TRANSCODABLE.contains(&f.codec);
    let chosen = m
        .codecs()
        .find(|f| usable(f) && prefer.contains(&f.codec))
        .or_else(|| m.codecs().find(usable))
        .ok_or_else(|| OfferError::NoCommonCodec(codec_list(TRANSCODABLE)))?;
    let event = telephone_event(m);
    let mut answer = offer.clone();
    let direction = m.direction(offer.session_direction()).answer();
    if let Some(a) = answer.media.get_mut(idx) {
        a.retain_formats(|f| f.pt == chosen.pt || Some((f.pt, f.clock)) == event);
        a.set_direction(direction);
    }
    Ok((answer, leg_format(m, chosen)))
}

/// The codecs of the audio section of `sdp` (none when it has no audio).
pub fn audio_codecs(sdp: &Sdp) -> Vec<Codec> {
    sdp.audio()
        .map(|m| m.codecs().map(|f| f.codec).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdp(formats: &str, maps: &[&str]) -> Sdp {
        let mut s = format!(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP {formats}\r\n"
        );
        for m in maps {
            s.push_str(&format!("a={m}\r\n"));
        }
        Sdp::parse(s.as_bytes()).expect("sdp")
    }

    fn names(s: &Sdp) -> Vec<(u8, &'static str)> {
        s.media[0]
            .codecs()
            .map(|f| (f.pt, f.codec.name()))
            .collect()
    }

    #[test]
    fn an_offer_onwards_keeps_the_offerers_codecs_first_and_adds_what_the_gateway_transcodes() {
        let mut o = sdp(
            "0 101",
            &["rtpmap:0 PCMU/8000", "rtpmap:101 telephone-event/8000"],
        );
        augment(&mut o, 0);
        let mut without = sdp("0", &[]);
        augment(&mut without, 0);
        assert_eq!(
            names(&without),
            [
                (0, "PCMU"),
                (9, "G722"),
                (111, "opus"),
                (8, "PCMA"),
                (96, "telephone-event")
            ]
        );
        assert_eq!(
            names(&o),
            [
                (0, "PCMU"),
                (101, "telephone-event"),
                (9, "G722"),
                (111, "opus"),
                (8, "PCMA")
            ]
        );
        // Type 111 taken: Opus gets another free dynamic type.
        let mut o = sdp("111", &["rtpmap:111 telephone-event/8000"]);
        augment(&mut o, 0);
        assert!(names(&o).contains(&(96, "opus")), "{:?}", names(&o));
        // The Opus the gateway adds says it plays and captures at 16 kHz (RFC 7587 §6.1).
        let text = String::from_utf8(o.to_bytes()).expect("utf8");
        assert!(
            text.contains("a=fmtp:96 maxplaybackrate=16000;sprop-maxcapturerate=16000\r\n"),
            "{text}"
        );
    }

    /// The gateway's own answer keeps one codec, the other leg's when the offer has it, with
    /// the offered telephone-event, and answers sendonly with recvonly.
    #[test]
    fn the_gateways_own_answer_takes_one_codec_preferring_the_other_legs() {
        let o = sdp(
            "8 0 9 101",
            &["rtpmap:101 telephone-event/8000", "sendonly"],
        );
        let (a, f) = answer_one(&o, 0, &[Codec::G722]).expect("answer");
        assert_eq!(names(&a), [(9, "G722"), (101, "telephone-event")]);
        assert_eq!((f.codec, f.payload_type), (Codec::G722, 9));
        assert_eq!(f.telephone_event, Some((101, 8000)));
        assert_eq!(
            a.media[0].direction(a.session_direction()),
            csps_sip::sdp::Direction::RecvOnly
        );
        let (a, f) = answer_one(&o, 0, &[Codec::Opus]).expect("answer");
        assert_eq!((names(&a)[0], f.codec), ((8, "PCMA"), Codec::Pcma));
        assert!(answer_one(&sdp("18", &["rtpmap:18 G729/8000"]), 0, &[]).is_err());
        assert_eq!(
            audio_codecs(&o),
            [Codec::Pcma, Codec::Pcmu, Codec::G722, Codec::TelephoneEvent]
        );
    }

    #[test]
    fn an_answer_in_a_codec_the_offerer_offered_is_relayed_unchanged() {
        let origin = sdp("9 0", &[]);
        let mut answer = sdp("0", &[]);
        let before = answer.clone();
        assert_eq!(answer_back(&origin, &mut answer, 0), Ok(None));
        assert_eq!(answer, before);
        // An answerer without telephone-event: the offerer keeps its own.
        let origin = sdp("0 101", &["rtpmap:101 telephone-event/8000"]);
        let mut answer = sdp("0", &[]);
        assert_eq!(answer_back(&origin, &mut answer, 0), Ok(None));
        assert_eq!(names(&answer), [(0, "PCMU"), (101, "telephone-event")]);
        // An offerer without telephone-event: the event the answerer took from the offer
        // onwards is not in the offerer's answer (the gateway reads it and sends SIP INFO).
        let origin = sdp("0", &[]);
        let mut answer = sdp("0 96", &["rtpmap:96 telephone-event/8000", "fmtp:96 0-16"]);
        assert_eq!(answer_back(&origin, &mut answer, 0), Ok(None));
        assert_eq!(names(&answer), [(0, "PCMU")]);
        let text = String::from_utf8(answer.to_bytes()).expect("utf8");
        assert!(!text.contains("96"), "{text}");
    }

    #[test]
    fn an_answer_in_an_added_codec_answers_the_offerer_in_its_own_and_transcodes() {
        let origin = sdp(
            "9 0 101",
            &["rtpmap:9 G722/8000", "rtpmap:101 telephone-event/8000"],
        );
        let mut answer = sdp(
            "111 110",
            &[
                "rtpmap:111 opus/48000/2",
                "fmtp:111 useinbandfec=1;maxaveragebitrate=20000",
                "rtpmap:110 telephone-event/48000",
            ],
        );
        let t = answer_back(&origin, &mut answer, 0)
            .expect("answer")
            .expect("transcoded");
        assert_eq!(
            t,
            (
                LegFormat {
                    codec: Codec::G722,
                    payload_type: 9,
                    telephone_event: Some((101, 8000)),
                    max_average_bitrate: None,
                },
                LegFormat {
                    codec: Codec::Opus,
                    payload_type: 111,
                    telephone_event: Some((110, 48000)),
                    // Bob's cap: the gateway's Opus to him stays under it.
                    max_average_bitrate: Some(20_000),
                }
            )
        );
        assert_eq!(names(&answer), [(9, "G722"), (101, "telephone-event")]);
        let text = String::from_utf8(answer.to_bytes()).expect("utf8");
        assert!(!text.contains("fmtp:111"), "{text}");
        // Without telephone-event on the answering leg, the offerer keeps its own: the gateway
        // turns its events into SIP INFO.
        let mut answer = sdp("8", &[]);
        let (near, far) = answer_back(&origin, &mut answer, 0)
            .expect("answer")
            .expect("transcoded");
        assert_eq!(
            (near.telephone_event, far.telephone_event),
            (Some((101, 8000)), None)
        );
        assert_eq!(names(&answer), [(9, "G722"), (101, "telephone-event")]);
    }

    #[test]
    fn use_8khz_leaves_a_phone_leg_g711_only_and_refuses_an_offer_without_it() {
        let mut o = sdp(
            "9 111 0 101",
            &["rtpmap:111 opus/48000/2", "rtpmap:101 telephone-event/8000"],
        );
        narrowband(&mut o, 0).expect("PCMU left");
        assert_eq!(names(&o), [(0, "PCMU"), (101, "telephone-event")]);
        let mut o = sdp("9", &[]);
        let e = narrowband(&mut o, 0).expect_err("no G.711");
        assert_eq!(e.status(), 488);
    }
}
