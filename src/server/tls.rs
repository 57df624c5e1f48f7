//! HTTPS and WSS on voxd's own port (`--tls-cert`, `--tls-key`): rustls on the TCP listener, so
//! browsers on another machine get the secure context their microphone needs without a proxy.
//!
//! Handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once and each within
//! [`HANDSHAKE_TIMEOUT`], so a client that opens connections and never finishes a handshake cannot
//! hold up the others. The certificate and key are read again on SIGHUP and when either file
//! changes (checked every [`RELOAD_CHECK`]); a pair that does not load is logged and the one in
//! use is kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// Handshakes in progress at once; connections beyond are closed at once.
pub const MAX_HANDSHAKES: usize = 256;
/// Longest a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate and key files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {message}")]
    NoKey { path: String, message: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// Where the server's certificate chain and private key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads the pair into a rustls configuration (HTTP/1.1: WebSockets upgrade over it).
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        };
        let cert_pem = read(&self.cert)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.display().to_string(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(&read(&self.key)?).map_err(|e| TlsError::NoKey {
                path: self.key.display().to_string(),
                message: e.to_string(),
            })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((m(&self.cert)?, m(&self.key)?))
    }
}

/// A listener that hands axum finished TLS connections.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves TLS on `tcp` with the pair in `files` (read now: a mistake stops the start), and
    /// reloads it on SIGHUP or when the files change.
    pub fn bind(tcp: TcpListener, files: TlsFiles) -> Result<Self, TlsError> {
        let current = Arc::new(RwLock::new(files.load()?));
        let local = tcp.local_addr().map_err(|e| TlsError::Read {
            path: "the listening socket".into(),
            message: e.to_string(),
        })?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(reload(files, current.clone(), tx.clone()));
        tokio::spawn(accept(tcp, current, tx));
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task never stops while this listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

type Current = Arc<RwLock<Arc<rustls::ServerConfig>>>;
type Ready = mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>;

/// Accepts TCP connections and runs each handshake in its own task, until the listener goes.
async fn accept(tcp: TcpListener, current: Current, ready: Ready) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum does.
                    debug!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = ready.closed() => return,
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            debug!(%peer, "too many TLS handshakes in progress; connection closed");
            continue;
        };
        let config = current.read().unwrap_or_else(|e| e.into_inner()).clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream))
                .await
            {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Reads the pair again on SIGHUP or when a file changes; keeps the old one if the new fails.
async fn reload(files: TlsFiles, current: Current, ready: Ready) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = files.modified();
    let mut tick = tokio::time::interval(RELOAD_CHECK);
    loop {
        let asked = tokio::select! {
            _ = tick.tick() => false,
            _ = async {
                match hangup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            _ = ready.closed() => return,
        };
        let now = files.modified();
        if !asked && now == seen {
            continue;
        }
        seen = now;
        match files.load() {
            Ok(config) => {
                *current.write().unwrap_or_else(|e| e.into_inner()) = config;
                info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                warn!(error = %e, "the new TLS certificate did not load; keeping the old one")
            }
        }
    }
}
