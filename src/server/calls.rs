//! `POST /v1/realtime/calls`: a realtime session over WebRTC, as browsers and the official
//! browser SDK open one. The body is the peer's SDP offer (`Content-Type: application/sdp`), or a
//! multipart form with `sdp` and `session` (the session's first configuration); the answer is the
//! SDP answer (201, `Location: /v1/realtime/calls/{call_id}`). `DELETE` on that location, or
//! `POST …/hangup`, ends the call. Keys, client secrets, quotas and the session cap apply as for
//! the WebSocket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Message;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Instrument;

use super::error::ApiError;
use super::AppState;
use crate::protocol::SessionKind;
use crate::rtc::{self, MediaAddress, SessionPipes};

/// Messages queued between a call and its session, each way.
const PIPE: usize = 256;
/// Sideband WebSockets one call may have at once.
pub const MAX_SIDEBANDS: usize = 4;

/// A live call: how to hang it up, and how a sideband WebSocket joins its session.
struct Call {
    hangup: oneshot::Sender<()>,
    /// Client events into the session.
    to_session: mpsc::Sender<Message>,
    /// Every event the session sends to the peer, for sideband listeners.
    events: broadcast::Sender<String>,
    /// The key id that placed the call (a client secret's minter).
    owner: String,
    /// Sideband WebSockets joined now.
    sidebands: Arc<std::sync::atomic::AtomicUsize>,
}

/// What a sideband WebSocket gets to join a call; its place among the call's sidebands is
/// given back when it drops.
pub struct Joined {
    pub to_session: mpsc::Sender<Message>,
    pub events: broadcast::Receiver<String>,
    sidebands: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.sidebands
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why a sideband could not join.
#[derive(Debug, PartialEq, Eq)]
pub enum JoinError {
    /// No such call, or not the caller's.
    NotFound,
    /// The call has its [`MAX_SIDEBANDS`] already.
    Full,
}

/// The live calls, by id.
#[derive(Default)]
pub struct Calls(Mutex<HashMap<String, Call>>);

impl Calls {
    fn add(&self, id: &str, call: Call) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), call);
    }

    fn take(&self, id: &str) -> Option<oneshot::Sender<()>> {
        let call = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)?;
        Some(call.hangup)
    }

    /// Joins call `id` for `caller` (the key that placed it, or an admin).
    pub fn join(&self, id: &str, caller: &crate::tools::Caller) -> Result<Joined, JoinError> {
        use std::sync::atomic::Ordering;
        let calls = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let call = calls.get(id).ok_or(JoinError::NotFound)?;
        let own = caller.admin || super::quotas::account(&caller.key_id) == call.owner;
        if !own {
            return Err(JoinError::NotFound);
        }
        if call.sidebands.fetch_add(1, Ordering::SeqCst) >= MAX_SIDEBANDS {
            call.sidebands.fetch_sub(1, Ordering::SeqCst);
            return Err(JoinError::Full);
        }
        Ok(Joined {
            to_session: call.to_session.clone(),
            events: call.events.subscribe(),
            sidebands: call.sidebands.clone(),
        })
    }

    /// Calls running now.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where calls' media goes: the server's own address, unless it listens on every interface
/// (then loopback, unless `--rtc-public-ip` says what peers should use).
pub fn media_address(
    bind: Option<std::net::SocketAddr>,
    public: Option<IpAddr>,
    ports: Option<super::config::PortRange>,
) -> MediaAddress {
    let ip = bind.map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
    MediaAddress {
        ports: ports.map(|p| (p.first, p.last)),
        bind: ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        public: public.or(if ip.is_some() {
            None
        } else {
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }),
    }
}

/// The offer and the first session configuration of a request.
async fn read_offer(
    state: &Arc<AppState>,
    req: Request,
) -> Result<(String, Option<Value>), ApiError> {
    let kind = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("an SDP offer is at most {} bytes", rtc::MAX_OFFER_BYTES),
        )
    };
    if kind.starts_with("application/sdp") {
        let body = axum::body::to_bytes(req.into_body(), rtc::MAX_OFFER_BYTES)
            .await
            .map_err(|_| too_large())?;
        let sdp = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("invalid_sdp", "the SDP offer is not UTF-8"))?;
        return Ok((sdp, None));
    }
    if kind.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
        let (mut sdp, mut session) = (None, None);
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let text = field
                .text()
                .await
                .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
            if text.len() > rtc::MAX_OFFER_BYTES {
                return Err(too_large());
            }
            match name.as_str() {
                "sdp" => sdp = Some(text),
                "session" => {
                    session = Some(serde_json::from_str(&text).map_err(|e| {
                        ApiError::bad_request("invalid_json", format!("`session`: {e}"))
                            .with_param("session")
                    })?)
                }
                _ => {}
            }
        }
        let sdp = sdp.ok_or_else(|| {
            ApiError::bad_request("missing_required_parameter", "the form has no `sdp` field")
                .with_param("sdp")
        })?;
        return Ok((sdp, session));
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the SDP offer as `application/sdp`, or a multipart form with `sdp` and `session`",
    ))
}

/// `POST /v1/realtime/calls`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<crate::tools::Caller>>,
    secret: Option<Extension<super::secrets::Presented>>,
    req: Request,
) -> Result<Response, ApiError> {
    let (offer, session) = read_offer(&state, req).await?;
    let answered = rtc::answer(&offer, state.media)
        .await
        .map_err(|e| match e {
            rtc::CallError::BadOffer(_) | rtc::CallError::NoAudio => {
                ApiError::bad_request("invalid_sdp", e.to_string()).with_param("sdp")
            }
            rtc::CallError::Socket(_) | rtc::CallError::Codec(_) | rtc::CallError::Dial(_) => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "webrtc_unavailable",
                    e.to_string(),
                )
            }
        })?;
    let caller = caller.map(|Extension(c)| c);
    let owner = caller.as_ref().map_or_else(
        || "anonymous".to_string(),
        |c| super::quotas::account(&c.key_id).to_string(),
    );
    let shared = match super::realtime::prepare(&state, caller, secret.map(|Extension(s)| s)) {
        Ok(shared) => shared,
        Err(refusal) => return Ok(*refusal),
    };
    let id = crate::ids::new_id("rtc");
    let answer = answered.answer.clone();
    let (to_session, session_rx) = mpsc::channel::<Message>(PIPE);
    let (session_tx, from_session) = mpsc::channel::<Message>(PIPE);
    if let Some(session) = session {
        // The form's configuration, as the client's first `session.update`.
        let update = json!({"type": "session.update", "session": session});
        let _ = to_session.try_send(Message::Text(update.to_string().into()));
    }
    let sink = Box::pin(futures::sink::unfold(
        session_tx,
        |tx, m: Message| async move {
            tx.send(m).await.map_err(|_| ())?;
            Ok::<_, ()>(tx)
        },
    ));
    let stream = Box::pin(futures::stream::unfold(session_rx, |mut rx| async move {
        rx.recv().await.map(|m| (Ok::<_, Infallible>(m), rx))
    }));
    let span = tracing::info_span!("call", id = %id);
    tokio::spawn(
        crate::realtime::run_on(sink, stream, shared, SessionKind::Realtime)
            .instrument(span.clone()),
    );
    let (hangup, hung_up) = oneshot::channel();
    let (events, _) = broadcast::channel(PIPE);
    state.calls.add(
        &id,
        Call {
            hangup,
            to_session: to_session.clone(),
            events: events.clone(),
            owner,
            sidebands: Default::default(),
        },
    );
    let calls = state.clone();
    let call_id = id.clone();
    tokio::spawn(
        async move {
            tracing::info!("call answered");
            rtc::run(
                answered,
                SessionPipes {
                    to_session,
                    from_session,
                    events,
                },
                hung_up,
            )
            .await;
            calls.calls.take(&call_id);
        }
        .instrument(span),
    );
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (header::LOCATION, format!("/v1/realtime/calls/{id}")),
        ],
        answer,
    )
        .into_response())
}

/// A sideband WebSocket on call `joined` (`/v1/realtime?call_id=…`): a server beside the
/// browser sees every event of the call's session and can send it client events (tool results,
/// `session.update`), as the OpenAI Realtime API allows. Ends with the call.
pub async fn sideband(socket: axum::extract::ws::WebSocket, mut joined: Joined) {
    use futures::{SinkExt, StreamExt};
    let (mut tx, mut rx) = socket.split();
    loop {
        tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if joined.to_session.send(Message::Text(t)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            e = joined.events.recv() => match e {
                Ok(text) => {
                    if tx.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "a sideband listener fell behind; events dropped");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let _ = tx.close().await;
}

/// `DELETE /v1/realtime/calls/{id}` and `POST /v1/realtime/calls/{id}/hangup`.
pub async fn hangup(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some(hangup) = state.calls.take(&id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "call_not_found",
            "no call with that id is running",
        ));
    };
    let _ = hangup.send(());
    Ok(Json(json!({"id": id, "object": "realtime.call", "status": "ended"})).into_response())
}
