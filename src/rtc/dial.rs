//! The calling side of a WebRTC call to a voxd (or OpenAI-compatible) server, for `voxd bench
//! --transport webrtc`: an offer with a send-and-receive Opus track and the `oai-events` data
//! channel, POSTed to `/v1/realtime/calls`; then the microphone's audio goes out as Opus packets,
//! client events on the channel, and what comes back arrives as [`Incoming`] (server events, and
//! each answer audio packet as [`Incoming::Audio`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::codec::{TrackCodec, TrackEncoder};
use super::{CallError, EVENTS_CHANNEL};
use crate::audio::resample::StreamResampler;
use crate::client::Incoming;
use crate::protocol::ServerEvent;

/// How long the call may take to connect (ICE, DTLS, the data channel).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the caller asks the call's task to do.
enum Command {
    /// A client event for the data channel.
    Event(String),
    /// One Opus packet of 20 ms for the track.
    Audio(Vec<u8>),
}

/// The sending half of a call in progress.
pub struct CallSender {
    commands: mpsc::Sender<Command>,
    /// The microphone's audio, its rate → 48 kHz, and what waits for a whole 20 ms frame.
    up: StreamResampler,
    pending: Vec<f32>,
    encoder: TrackEncoder,
    /// Where to hang up: `{base}/v1/realtime/calls/{id}`.
    location: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

/// The receiving half of a call in progress.
pub struct CallReceiver {
    incoming: mpsc::Receiver<Incoming>,
}

/// Places a call to `http_base` (`http://HOST:PORT`) with `api_key`; the microphone's audio will
/// be given at `input_rate`. Returns once the data channel is open.
pub async fn dial(
    http_base: &str,
    api_key: Option<&str>,
    input_rate: u32,
) -> Result<(CallSender, CallReceiver), CallError> {
    let socket = local_socket(http_base).await?;
    let local = socket.local_addr().map_err(socket_error)?;
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_opus(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp").map_err(socket_error)?);
    let mut change = rtc.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let channel = change.add_channel(EVENTS_CHANNEL.to_string());
    let (offer, pending) = change
        .apply()
        .ok_or_else(|| CallError::BadOffer("nothing to offer".into()))?;
    let http = reqwest::Client::new();
    let mut req = http
        .post(format!("{http_base}/v1/realtime/calls"))
        .header("content-type", "application/sdp")
        .body(offer.to_sdp_string());
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| CallError::Dial(e.to_string()))?;
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .text()
        .await
        .map_err(|e| CallError::Dial(e.to_string()))?;
    let Some(location) = location.filter(|_| status.as_u16() == 201) else {
        return Err(CallError::Dial(format!("{status}: {body}")));
    };
    let answer = SdpAnswer::from_sdp_string(&body).map_err(|e| CallError::Dial(e.to_string()))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| CallError::Dial(e.to_string()))?;
    let (commands, command_rx) = mpsc::channel(256);
    let (incoming_tx, incoming) = mpsc::channel(1024);
    let (open_tx, open_rx) = tokio::sync::oneshot::channel();
    let peer = Peer {
        rtc,
        socket,
        mid,
        channel,
        rtp_time: 0,
        incoming: incoming_tx,
        open: Some(open_tx),
    };
    tokio::spawn(peer.run(command_rx));
    tokio::time::timeout(CONNECT_TIMEOUT, open_rx)
        .await
        .map_err(|_| CallError::Dial("the call did not connect".into()))?
        .map_err(|_| CallError::Dial("the call ended while connecting".into()))?;
    let codec = TrackCodec::Opus;
    let sender = CallSender {
        commands,
        up: StreamResampler::new(input_rate, codec.rate())
            .map_err(|e| CallError::Codec(e.to_string()))?,
        pending: Vec::new(),
        encoder: TrackEncoder::new(codec).map_err(|e| CallError::Codec(e.to_string()))?,
        location: format!("{http_base}{location}"),
        api_key: api_key.map(str::to_string),
        http,
    };
    Ok((sender, CallReceiver { incoming }))
}

/// A UDP socket on the local address that reaches the server's host.
async fn local_socket(http_base: &str) -> Result<UdpSocket, CallError> {
    let url = reqwest::Url::parse(http_base).map_err(|e| CallError::Dial(e.to_string()))?;
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port_or_known_default().unwrap_or(80);
    let server: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(socket_error)?
        .next()
        .ok_or_else(|| CallError::Dial(format!("{host} has no address")))?;
    let probe = UdpSocket::bind(SocketAddr::new(unspecified(server), 0))
        .await
        .map_err(socket_error)?;
    probe.connect(server).await.map_err(socket_error)?;
    let ip = probe.local_addr().map_err(socket_error)?.ip();
    UdpSocket::bind(SocketAddr::new(ip, 0))
        .await
        .map_err(socket_error)
}

fn unspecified(of: SocketAddr) -> std::net::IpAddr {
    match of {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn socket_error(e: impl std::fmt::Display) -> CallError {
    CallError::Socket(e.to_string())
}

impl CallSender {
    /// Sends a client event on the data channel.
    pub async fn send_event(&mut self, event: Value) -> Result<(), CallError> {
        self.commands
            .send(Command::Event(event.to_string()))
            .await
            .map_err(|_| CallError::Dial("the call has ended".into()))
    }

    /// Sends microphone audio (at the call's input rate): whole 20 ms Opus packets go out now,
    /// the rest with the next call.
    pub async fn send_audio(&mut self, samples: &[f32]) -> Result<(), CallError> {
        self.up.push(samples, &mut self.pending);
        let frame = self.encoder.codec().frame();
        while self.pending.len() >= frame {
            let chunk: Vec<f32> = self.pending.drain(..frame).collect();
            let packet = self
                .encoder
                .encode(&chunk)
                .map_err(|e| CallError::Codec(e.to_string()))?;
            self.commands
                .send(Command::Audio(packet))
                .await
                .map_err(|_| CallError::Dial("the call has ended".into()))?;
        }
        Ok(())
    }

    /// Hangs up (`DELETE` on the call).
    pub fn hang_up(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut req = self.http.delete(&self.location);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        async move {
            let _ = req.send().await;
        }
    }
}

impl CallReceiver {
    /// What came next: an event, or an answer audio packet; `None` once the call has ended.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }
}

/// The call's own task: the connection, its socket and what goes either way.
struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    mid: Mid,
    channel: ChannelId,
    rtp_time: u64,
    incoming: mpsc::Sender<Incoming>,
    open: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Peer {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let Ok(local) = self.socket.local_addr() else {
            return;
        };
        let mut buf = vec![0u8; 2048];
        loop {
            let Some(deadline) = self.drain().await else {
                break;
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, source)) = r else { continue };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp, source, destination: local, contents,
                    });
                    let _ = self.rtc.handle_input(input);
                }
                _ = tokio::time::sleep(wait) => {
                    let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
                }
                c = commands.recv() => match c {
                    Some(Command::Event(text)) => {
                        if let Some(mut ch) = self.rtc.channel(self.channel) {
                            let _ = ch.write(false, text.as_bytes());
                        }
                    }
                    Some(Command::Audio(packet)) => self.write_audio(packet),
                    None => break,
                },
            }
        }
        self.rtc.disconnect();
        let _ = self.incoming.try_send(Incoming::Closed {
            code: 1000,
            reason: "the call ended".into(),
        });
    }

    /// Runs the connection's output until it asks to be woken (returned); `None`: it has ended.
    async fn drain(&mut self) -> Option<Instant> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if !self.rtc.is_alive() {
                        tracing::debug!("the call's connection closed");
                    }
                    return self.rtc.is_alive().then_some(t);
                }
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => {
                    if !self.on_event(e) {
                        return None;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the call's connection failed");
                    return None;
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) -> bool {
        let message = match event {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                tracing::debug!("the call's connectivity was lost");
                return false;
            }
            Event::ChannelOpen(id, _) if id == self.channel => {
                if let Some(open) = self.open.take() {
                    let _ = open.send(());
                }
                return true;
            }
            Event::ChannelData(d) if d.id == self.channel && !d.binary => {
                let Ok(v) = serde_json::from_slice::<Value>(&d.data) else {
                    return true;
                };
                match serde_json::from_value::<ServerEvent>(v.clone()) {
                    Ok(e) => Incoming::Event(e),
                    Err(_) => Incoming::Other(v),
                }
            }
            Event::MediaData(d) if d.mid == self.mid => Incoming::Audio(d.data),
            _ => return true,
        };
        // A caller that stops reading loses packets, not the call.
        let _ = self.incoming.try_send(message);
        true
    }

    fn write_audio(&mut self, packet: Vec<u8>) {
        let Some(writer) = self.rtc.writer(self.mid) else {
            return;
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == TrackCodec::Opus.codec())
            .map(|p| p.pt())
        else {
            return;
        };
        let time = MediaTime::new(self.rtp_time, Frequency::FORTY_EIGHT_KHZ);
        self.rtp_time += TrackCodec::Opus.frame() as u64;
        let _ = writer.write(pt, Instant::now(), time, packet);
    }
}
