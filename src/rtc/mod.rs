//! WebRTC, the way browsers reach the OpenAI Realtime API: the peer's SDP offer is answered
//! (ICE-lite with one host candidate on its own UDP port, DTLS-SRTP, Opus), and the call runs a
//! realtime session whose events travel on the `oai-events` data channel and whose audio
//! travels on the audio track ([`bridge`]). Built on `str0m` (sans-I/O; its crypto is the
//! aws-lc-rs that voxd's TLS already uses); this module does the I/O: one task per call, driving
//! the connection from its UDP socket, its timers and the session.

pub mod bridge;

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
}

/// Where calls' media is received and what address peers are told.
#[derive(Debug, Clone, Copy)]
pub struct MediaAddress {
    /// The address UDP sockets are bound to.
    pub bind: IpAddr,
    /// The address in the candidate (`--rtc-public-ip`; the bound one when unset).
    pub public: Option<IpAddr>,
}

/// An answered offer, ready to run.
pub struct Answered {
    pub answer: String,
    rtc: Rtc,
    socket: UdpSocket,
    bridge: Bridge,
}

/// Answers `offer` (SDP text): a new peer connection with a host candidate on a fresh UDP port.
pub async fn answer(offer: &str, media: MediaAddress) -> Result<Answered, CallError> {
    if !offer.lines().any(|l| l.starts_with("m=audio")) {
        return Err(CallError::NoAudio);
    }
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| CallError::BadOffer(e.to_string()))?;
    let bridge = Bridge::new().map_err(|e| CallError::Codec(e.to_string()))?;
    let socket = UdpSocket::bind(SocketAddr::new(media.bind, 0))
        .await
        .map_err(|e| CallError::Socket(e.to_string()))?;
    let local = socket
        .local_addr()
        .map_err(|e| CallError::Socket(e.to_string()))?;
    let mut rtc = RtcConfig::new()
        .set_ice_lite(true)
        .clear_codecs()
        .enable_opus(true)
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
        answer: answer.to_sdp_string(),
        rtc,
        socket,
        bridge,
    })
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
        mut bridge,
        ..
    } = call;
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut driver = Driver {
        channel: None,
        audio: None,
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
    /// The audio track, once negotiated.
    audio: Option<Mid>,
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
            Event::MediaAdded(m) if m.kind == MediaKind::Audio => self.audio = Some(m.mid),
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
                if !d.contiguous {
                    // A packet went missing before this one: conceal it.
                    if let Some(m) = bridge.peer_audio(None) {
                        let _ = self.pipes.to_session.try_send(m);
                    }
                }
                if let Some(m) = bridge.peer_audio(Some(&d.data)) {
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
                ToPeer::Audio(packet) => self.write_audio(rtc, packet),
            }
        }
        self.to_peer = waiting;
    }

    fn write_audio(&mut self, rtc: &mut Rtc, packet: Vec<u8>) {
        let Some(writer) = self.audio.and_then(|mid| rtc.writer(mid)) else {
            return;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == str0m::format::Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        let time = MediaTime::new(self.rtp_time, Frequency::FORTY_EIGHT_KHZ);
        self.rtp_time += crate::audio::opus::FRAME as u64;
        if let Err(e) = writer.write(pt, Instant::now(), time, packet) {
            tracing::debug!(error = %e, "writing audio to the peer failed");
        }
    }
}
