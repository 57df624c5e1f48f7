//! WebRTC, the way browsers reach the OpenAI Realtime API: the peer's SDP offer is answered
//! (ICE-lite with one host candidate on its own UDP port, DTLS-SRTP, Opus), and the call runs a
//! realtime session whose events travel on the `oai-events` data channel and whose audio
//! travels on the audio track ([`bridge`]). Built on `str0m` (sans-I/O; its crypto is the
//! aws-lc-rs that voxd's TLS already uses); this module does the I/O: one task per call, driving
//! the connection from its UDP socket, its timers and the session.

pub mod bridge;
pub mod codec;
pub mod dial;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use str0m::change::SdpOffer;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use bridge::{Bridge, ToPeer};
use codec::TrackCodec;

/// The data channel that carries the events.
pub const EVENTS_CHANNEL: &str = "oai-events";
/// Largest SDP offer accepted.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// A call whose peer never connects is given up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an offer was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the SDP offer is not valid: {0}")]
    BadOffer(String),
    #[error("the SDP offer has no audio to answer")]
    NoAudio,
    #[error("no UDP port for the call: {0}")]
    Socket(String),
    #[error("the audio codec is not available: {0}")]
    Codec(String),
    #[error("the call could not be placed: {0}")]
    Dial(String),
}

/// Where calls' media is received and what address peers are told.
#[derive(Debug, Clone, Copy)]
pub struct MediaAddress {
    /// The address UDP sockets are bound to.
    pub bind: IpAddr,
    /// The address in the candidate (`--rtc-public-ip`; the bound one when unset).
    pub public: Option<IpAddr>,
    /// The UDP ports a call may take, first and last (`--rtc-udp-ports`); `None`: any.
    pub ports: Option<(u16, u16)>,
}

/// An answered offer, ready to run.
pub struct Answered {
    pub answer: String,
    rtc: Rtc,
    socket: UdpSocket,
    /// The address in the candidate: what the peer sends to, and so the destination of every
    /// packet the socket receives (the socket may be bound to every interface, or sit behind a
    /// NAT, and str0m matches packets to the candidate by this address).
    advertised: SocketAddr,
    bridge: Bridge,
}

/// Answers `offer` (SDP text): a new peer connection with a host candidate on a fresh UDP port.
pub async fn answer(offer: &str, media: MediaAddress) -> Result<Answered, CallError> {
    if !offer.lines().any(|l| l.starts_with("m=audio")) {
        return Err(CallError::NoAudio);
    }
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| CallError::BadOffer(e.to_string()))?;
    let bridge = Bridge::new().map_err(|e| CallError::Codec(e.to_string()))?;
    let socket = bind_media(&media).await?;
    let local = socket
        .local_addr()
        .map_err(|e| CallError::Socket(e.to_string()))?;
    let mut rtc = RtcConfig::new()
        .set_ice_lite(true)
        .clear_codecs()
        .enable_opus(true)
        .enable_pcmu(true)
        .enable_pcma(true)
        .build(Instant::now());
    let advertised = SocketAddr::new(media.public.unwrap_or(local.ip()), local.port());
    let candidate =
        Candidate::host(advertised, "udp").map_err(|e| CallError::Socket(e.to_string()))?;
    rtc.add_local_candidate(candidate);
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| CallError::BadOffer(e.to_string()))?;
    Ok(Answered {
        answer: with_stream_id(&answer.to_sdp_string()),
        rtc,
        socket,
        advertised,
        bridge,
    })
}

/// A UDP socket for a call's media: any free port, or the first free one of the range (taken
/// from a turning start, so calls spread over it).
async fn bind_media(media: &MediaAddress) -> Result<UdpSocket, CallError> {
    let Some((first, last)) = media.ports else {
        return UdpSocket::bind(SocketAddr::new(media.bind, 0))
            .await
            .map_err(|e| CallError::Socket(e.to_string()));
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let count = u32::from(last - first) + 1;
    let start = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % count;
    for i in 0..count {
        let port = first + ((start + i) % count) as u16;
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(media.bind, port)).await {
            return Ok(s);
        }
    }
    Err(CallError::Socket(format!(
        "every UDP port of {first}-{last} is taken (--rtc-udp-ports)"
    )))
}

/// The stream id voxd's answer track belongs to.
const STREAM_ID: &str = "voxd";

/// `sdp` (an answer) with voxd's track in a named media stream. str0m mirrors the offer's
/// `msid`, and a browser that adds its microphone with `addTrack(track)` offers none (`-`): the
/// answer's track would then arrive in no stream, and pages that play `event.streams[0]` (the
/// OpenAI Agents SDK does) would play nothing.
fn with_stream_id(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 32);
    for line in sdp.split_inclusive('\n') {
        if line.trim_end() == "a=msid-semantic: WMS" {
            out.push_str(&format!("a=msid-semantic: WMS {STREAM_ID}\r\n"));
        } else if let Some(track) = line.strip_prefix("a=msid:- ") {
            out.push_str(&format!("a=msid:{STREAM_ID} {track}"));
        } else if let Some((ssrc, track)) = line
            .strip_prefix("a=ssrc:")
            .and_then(|rest| rest.split_once(" msid:- "))
        {
            out.push_str(&format!("a=ssrc:{ssrc} msid:{STREAM_ID} {track}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The two ends of the session a call runs: messages for it, messages from it; and where every
/// event sent to the peer is copied for sideband listeners.
pub struct SessionPipes {
    pub to_session: mpsc::Sender<Message>,
    pub from_session: mpsc::Receiver<Message>,
    pub events: tokio::sync::broadcast::Sender<String>,
}

/// Runs a call until the peer leaves, the session ends or `hangup` fires.
pub async fn run(call: Answered, pipes: SessionPipes, hangup: oneshot::Receiver<()>) {
    let Answered {
        mut rtc,
        socket,
        advertised: local,
        mut bridge,
        ..
    } = call;
    let mut driver = Driver {
        channel: None,
        audio: None,
        codec: TrackCodec::Opus,
        rtp_time: 0,
        connected: false,
        pipes,
        to_peer: Vec::new(),
    };
    let started = tokio::time::Instant::now();
    let mut frames = tokio::time::interval(Duration::from_millis(20));
    frames.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(hangup);
    let mut buf = vec![0u8; 2048];
    loop {
        let Some(deadline) = driver.drain(&mut rtc, &socket, &mut bridge).await else {
            break;
        };
        if !driver.connected && started.elapsed() > CONNECT_TIMEOUT {
            tracing::info!("the peer never connected; call given up");
            break;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, source)) = r else { continue };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive {
                    proto: Protocol::Udp, source, destination: local, contents,
                });
                if let Err(e) = rtc.handle_input(input) {
                    tracing::debug!(error = %e, "a packet the connection refused");
                }
            }
            _ = tokio::time::sleep(wait) => {
                let _ = rtc.handle_input(Input::Timeout(Instant::now()));
            }
            m = driver.pipes.from_session.recv() => match m {
                Some(Message::Close(_)) | None => break,
                Some(m) => {
                    let (out, back) = bridge.session_message(m);
                    driver.queue(out);
                    if let Some(back) = back {
                        let _ = driver.pipes.to_session.try_send(back);
                    }
                }
            },
            _ = frames.tick() => {
                let out = bridge.next_frame();
                driver.queue(out);
            }
            _ = &mut hangup => break,
        }
    }
    rtc.disconnect();
    let _ = driver.drain(&mut rtc, &socket, &mut bridge).await;
    tracing::info!("call ended");
}

/// The per-call state the loop shares with its steps.
struct Driver {
    /// The `oai-events` channel, once open.
    channel: Option<str0m::channel::ChannelId>,
    /// The audio track, once negotiated, and the codec its answer audio goes out in.
    audio: Option<Mid>,
    codec: TrackCodec,
    /// The next outgoing packet's RTP time (48 kHz).
    rtp_time: u64,
    connected: bool,
    pipes: SessionPipes,
    /// What waits to be written to the peer (events wait for the channel to open or drain).
    to_peer: Vec<ToPeer>,
}

impl Driver {
    /// Writes what is queued for the peer, then runs the connection's output: packets to send,
    /// events to handle, until it asks to be woken at a time (returned). `None`: it has ended.
    async fn drain(
        &mut self,
        rtc: &mut Rtc,
        socket: &UdpSocket,
        bridge: &mut Bridge,
    ) -> Option<Instant> {
        self.write_out(rtc);
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => return rtc.is_alive().then_some(t),
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => {
                    if !self.on_event(e, rtc, bridge) {
                        return None;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the connection failed");
                    return None;
                }
            }
        }
    }

    /// Handles one connection event; false when the call is over.
    fn on_event(&mut self, event: Event, rtc: &mut Rtc, bridge: &mut Bridge) -> bool {
        match event {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => return false,
            Event::Connected => self.connected = true,
            Event::MediaAdded(m) if m.kind == MediaKind::Audio => {
                self.audio = Some(m.mid);
                let codec = self.output_codec(rtc, m.mid);
                self.codec = codec;
                if let Err(e) = bridge.set_output_codec(codec) {
                    tracing::warn!(error = %e, "no encoder for the call's codec");
                    return false;
                }
                tracing::debug!(?codec, "call audio negotiated");
            }
            Event::ChannelOpen(id, label) if label == EVENTS_CHANNEL => {
                self.channel = Some(id);
                self.write_out(rtc);
            }
            Event::ChannelData(d) if Some(d.id) == self.channel && !d.binary => {
                let text = String::from_utf8_lossy(&d.data);
                let (to_session, to_peer) = bridge.peer_event(&text);
                self.queue(to_peer);
                if let Some(m) = to_session {
                    if self.pipes.to_session.try_send(m).is_err() {
                        tracing::warn!("the session is not keeping up; a client event was dropped");
                    }
                }
            }
            Event::MediaData(d) if Some(d.mid) == self.audio => {
                let Some(codec) = TrackCodec::of(d.params.spec().codec) else {
                    return true;
                };
                if !d.contiguous {
                    // A packet went missing before this one: conceal it.
                    if let Some(m) = bridge.peer_audio(codec, None) {
                        let _ = self.pipes.to_session.try_send(m);
                    }
                }
                if let Some(m) = bridge.peer_audio(codec, Some(&d.data)) {
                    let _ = self.pipes.to_session.try_send(m);
                }
            }
            _ => {}
        }
        true
    }

    /// Queues what goes to the peer; its events are copied to the sideband listeners.
    fn queue(&mut self, out: Vec<ToPeer>) {
        for item in &out {
            if let ToPeer::Event(text) = item {
                let _ = self.pipes.events.send(text.clone());
            }
        }
        self.to_peer.extend(out);
    }

    /// Writes queued events to the channel (while it has room) and audio to the track.
    fn write_out(&mut self, rtc: &mut Rtc) {
        let mut waiting = Vec::new();
        for item in std::mem::take(&mut self.to_peer) {
            match item {
                ToPeer::Event(text) => {
                    let sent = self
                        .channel
                        .and_then(|id| rtc.channel(id))
                        .is_some_and(|mut c| c.write(false, text.as_bytes()).unwrap_or(false));
                    if !sent {
                        waiting.push(ToPeer::Event(text));
                    }
                }
                ToPeer::Audio(packet) => self.write_audio(rtc, packet, self.codec),
            }
        }
        self.to_peer = waiting;
    }

    /// The codec the answer's audio goes out in: the most preferred one the peer accepted.
    fn output_codec(&self, rtc: &mut Rtc, mid: Mid) -> TrackCodec {
        let Some(writer) = rtc.writer(mid) else {
            return TrackCodec::Opus;
        };
        let offered: Vec<_> = writer.payload_params().map(|p| p.spec().codec).collect();
        TrackCodec::PREFERRED
            .into_iter()
            .find(|c| offered.contains(&c.codec()))
            .unwrap_or(TrackCodec::Opus)
    }

    fn write_audio(&mut self, rtc: &mut Rtc, packet: Vec<u8>, codec: TrackCodec) {
        let Some(writer) = self.audio.and_then(|mid| rtc.writer(mid)) else {
            return;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == codec.codec())
            .map(|p| p.pt())
        else {
            return;
        };
        let clock = match codec {
            TrackCodec::Opus => Frequency::FORTY_EIGHT_KHZ,
            _ => Frequency::EIGHT_KHZ,
        };
        let time = MediaTime::new(self.rtp_time, clock);
        self.rtp_time += codec.frame() as u64;
        if let Err(e) = writer.write(pt, Instant::now(), time, packet) {
            tracing::debug!(error = %e, "writing audio to the peer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_track_is_in_a_named_stream() {
        let sdp = "v=0\r\na=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=msid:- 862b-aef2\r\na=ssrc:2561 cname:Rz\r\na=ssrc:2561 msid:- 862b-aef2\r\n";
        let named = with_stream_id(sdp);
        assert!(named.contains("a=msid-semantic: WMS voxd\r\n"), "{named}");
        assert!(named.contains("a=msid:voxd 862b-aef2\r\n"), "{named}");
        assert!(
            named.contains("a=ssrc:2561 msid:voxd 862b-aef2\r\n"),
            "{named}"
        );
        assert!(named.contains("a=ssrc:2561 cname:Rz\r\n"));
        // A named stream the offer gave is left as it is.
        let given = "a=msid:s1 t1\r\n";
        assert_eq!(with_stream_id(given), given);
    }
}
