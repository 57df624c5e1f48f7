//! TLS to PostgreSQL with rustls, in libpq's terms: the connection URL's `sslmode` (`disable`,
//! `prefer` (the default), `require`, `verify-ca`, `verify-full`) and `sslrootcert` (the
//! authority to trust; the system's when absent).
//!
//! `prefer` and `require` encrypt without checking the certificate (as libpq does); `verify-ca`
//! checks that an authority signed it; `verify-full` also that it names the host. The
//! `postgres` crate knows only the first three modes: the stricter two and `sslrootcert` are taken
//! out of the URL here and the crate is asked to `require` TLS.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How far the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypted, the certificate not checked (`prefer`, `require`).
    Nothing,
    /// Signed by a trusted authority (`verify-ca`).
    Authority,
    /// Signed by a trusted authority and naming the host (`verify-full`).
    Full,
}

/// What the URL asks of TLS, beyond what the `postgres` crate reads itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub verify: Verify,
    /// `sslrootcert`: the authority's PEM file.
    pub root_cert: Option<PathBuf>,
}

/// `url` without the settings the `postgres` crate does not know (`sslmode=verify-ca|verify-full`
/// become `sslmode=require`; `sslrootcert` is taken out), and those settings. Both URL
/// (`postgres://…?sslmode=verify-full`) and key-value (`host=… sslmode=verify-full`) forms.
pub fn split_url(url: &str) -> (String, TlsSettings) {
    let mut settings = TlsSettings {
        verify: Verify::Nothing,
        root_cert: None,
    };
    let mut keep = |pair: &str| -> Option<String> {
        match pair.split_once('=') {
            Some(("sslmode", "verify-full")) => {
                settings.verify = Verify::Full;
                Some("sslmode=require".into())
            }
            Some(("sslmode", "verify-ca")) => {
                settings.verify = Verify::Authority;
                Some("sslmode=require".into())
            }
            Some(("sslrootcert", path)) => {
                settings.root_cert = Some(PathBuf::from(path));
                None
            }
            _ => Some(pair.to_string()),
        }
    };
    let cleaned = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<String> = query.split('&').filter_map(&mut keep).collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        url.split_whitespace()
            .filter_map(&mut keep)
            .collect::<Vec<_>>()
            .join(" ")
    };
    (cleaned, settings)
}

/// Why TLS to the database could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("TLS to PostgreSQL: {0}")]
pub struct PgTlsError(pub String);

/// The connector handed to the `postgres` crate.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl RustlsConnect {
    /// A connector for `settings`: the authority in `sslrootcert` or the system's.
    pub fn new(settings: &TlsSettings) -> Result<Self, PgTlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgTlsError(e.to_string()))?;
        let roots = Arc::new(roots(settings)?);
        let verifier: Arc<dyn ServerCertVerifier> = match settings.verify {
            Verify::Nothing => Arc::new(Unchecked(provider)),
            Verify::Authority | Verify::Full => {
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| PgTlsError(e.to_string()))?;
                Arc::new(Checked {
                    webpki,
                    names: settings.verify == Verify::Full,
                })
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(RustlsConnect {
            config: Arc::new(config),
        })
    }
}

fn roots(settings: &TlsSettings) -> Result<rustls::RootCertStore, PgTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.root_cert {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| PgTlsError(format!("sslrootcert {}: {e}", path.display())))?
                .filter_map(Result::ok)
                .collect();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(PgTlsError(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
        }
        None if settings.verify != Verify::Nothing => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
        None => {}
    }
    Ok(roots)
}

/// `prefer`/`require`: any certificate, but the handshake's signatures still checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`/`verify-full`: the authority checked, the host name only for `verify-full`.
#[derive(Debug)]
struct Checked {
    webpki: Arc<WebPkiServerVerifier>,
    names: bool,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnectOne;
    type Error = PgTlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnectOne, PgTlsError> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| PgTlsError(format!("{domain}: {e}")))?;
        Ok(RustlsConnectOne {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's handshake.
pub struct RustlsConnectOne {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

impl TlsConnect<Socket> for RustlsConnectOne {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Handshake;

    fn connect(self, stream: Socket) -> Handshake {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// An encrypted connection to the database.
pub struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stricter_modes_and_the_root_certificate_are_taken_out_of_the_url() {
        let (url, s) =
            split_url("postgres://u@db:5432/kb?sslmode=verify-full&sslrootcert=/etc/ca.pem");
        assert_eq!(url, "postgres://u@db:5432/kb?sslmode=require");
        assert_eq!(s.verify, Verify::Full);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let (url, s) = split_url("host=db user=u sslmode=verify-ca connect_timeout=3");
        assert_eq!(url, "host=db user=u sslmode=require connect_timeout=3");
        assert_eq!(s.verify, Verify::Authority);
        let (url, s) = split_url("postgres://u@db/kb?sslmode=require");
        assert_eq!(url, "postgres://u@db/kb?sslmode=require");
        assert_eq!(s.verify, Verify::Nothing);
        let (url, _) = split_url("postgres://u@db/kb?sslrootcert=/x.pem");
        assert_eq!(url, "postgres://u@db/kb");
    }
}
