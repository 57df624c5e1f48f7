//! HTTPS and WSS on voxd's own port (`--tls-cert`, `--tls-key`) with a test certificate
//! authority made by `openssl`: the real server in-process on loopback, real TLS clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use voxd::server::tls::{TlsFiles, TlsListener};

async fn start(files: TlsFiles) -> (String, u16) {
    let state = Arc::new(voxd::server::AppState::new(1 << 20));
    let pool = tokio::task::spawn_blocking(common::pool).await.unwrap();
    state.set_asr(pool);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let tls = TlsListener::bind(tcp, files).unwrap();
    tokio::spawn(async move {
        voxd::server::serve(tls, state, std::future::pending())
            .await
            .unwrap();
    });
    (format!("https://localhost:{port}"), port)
}

fn files(ca: &common::TestCa) -> TlsFiles {
    TlsFiles {
        cert: ca.cert.clone(),
        key: ca.key.clone(),
    }
}

async fn healthz(client: &reqwest::Client, base: &str) -> Result<u16, reqwest::Error> {
    Ok(client
        .get(format!("{base}/healthz"))
        .send()
        .await?
        .status()
        .as_u16())
}

/// A TLS connection to the server that trusts `ca` only.
async fn tls_to(
    port: u16,
    ca: &common::TestCa,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(&ca.ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn https_and_wss_share_the_port_for_clients_that_trust_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(dir.path(), "a");
    let (base, port) = start(files(&ca)).await;
    assert_eq!(healthz(&ca.client(), &base).await.unwrap(), 200);
    // A client that does not trust the authority is refused by its own TLS check.
    let stranger = common::TestCa::new(dir.path(), "stranger");
    assert!(healthz(&stranger.client(), &base).await.is_err());
    // Plain HTTP to the TLS port gets no answer.
    let plain = healthz(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    assert!(plain.is_err(), "{plain:?}");

    // A realtime session over WSS.
    let tls = tls_to(port, &ca).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/v1/realtime", tls)
        .await
        .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    let event: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(event["type"], "session.created", "{event}");
}

#[tokio::test]
async fn clients_that_never_finish_a_handshake_hold_up_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(dir.path(), "a");
    let (base, port) = start(files(&ca)).await;
    let mut stalled = Vec::new();
    for i in 0..100 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        if i % 2 == 0 {
            // Half say something that is not TLS; the rest say nothing at all.
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        }
        stalled.push(s);
    }
    for _ in 0..5 {
        assert_eq!(healthz(&ca.client(), &base).await.unwrap(), 200);
    }
    drop(stalled);
}

#[tokio::test]
async fn a_changed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let old = common::TestCa::new(dir.path(), "old");
    let new = common::TestCa::new(dir.path(), "new");
    // The server reads its own copy of the files, replaced below as a certificate renewal does.
    let served = TlsFiles {
        cert: dir.path().join("served.pem"),
        key: dir.path().join("served.key"),
    };
    std::fs::copy(&old.cert, &served.cert).unwrap();
    std::fs::copy(&old.key, &served.key).unwrap();
    let (base, _) = start(served.clone()).await;
    assert_eq!(healthz(&old.client(), &base).await.unwrap(), 200);

    // Renewed (both files replaced, a second later so the change is seen by time).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::copy(&new.key, &served.key).unwrap();
    std::fs::copy(&new.cert, &served.cert).unwrap();
    let mut renewed = false;
    for _ in 0..60 {
        if healthz(&new.client(), &base).await.is_ok() {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(renewed, "the new certificate was never served");
    assert!(healthz(&old.client(), &base).await.is_err());

    // A broken file is not taken: the renewed certificate goes on being served.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&served.cert, "not a certificate").unwrap();
    tokio::time::sleep(voxd::server::tls::RELOAD_CHECK * 2).await;
    assert_eq!(healthz(&new.client(), &base).await.unwrap(), 200);
}

#[tokio::test]
async fn a_missing_or_wrong_certificate_stops_the_start_with_the_files_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(dir.path(), "a");
    let tcp = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let absent = TlsFiles {
        cert: dir.path().join("absent.pem"),
        key: ca.key.clone(),
    };
    let e = TlsListener::bind(tcp().await, absent).err().unwrap();
    assert!(e.to_string().contains("absent.pem"), "{e}");
    // The key where the certificate should be, and the authority's key with the server's
    // certificate.
    let swapped = TlsFiles {
        cert: ca.key.clone(),
        key: ca.key.clone(),
    };
    assert!(TlsListener::bind(tcp().await, swapped).is_err());
    let mismatched = TlsFiles {
        cert: ca.cert.clone(),
        key: dir.path().join("a-ca.key"),
    };
    let e = TlsListener::bind(tcp().await, mismatched).err().unwrap();
    assert!(e.to_string().contains("do not make"), "{e}");
}

/// A remote engine over HTTPS whose certificate comes from the operator's own authority: refused
/// until `--ca-cert` (here [`voxd::openai_http::trust_ca_file`]) trusts it. The engine is voxd's
/// own transcription endpoint served with TLS.
#[tokio::test]
async fn remote_engines_trust_the_authority_given_with_ca_cert() {
    use voxd::asr::{Asr, RemoteAsr, RemoteAsrConfig, Request};
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(dir.path(), "engine");
    let (base, _) = start(files(&ca)).await;
    let engine = || {
        RemoteAsr::new(RemoteAsrConfig {
            base_url: format!("{base}/v1"),
            api_key: None,
            model: "whisper-1".into(),
            timeout: Duration::from_secs(60),
            partials: false,
        })
        .unwrap()
    };
    let jfk = common::audio_at("jfk.wav", 16_000);
    let untrusted = engine().transcribe(Request::new(jfk.clone())).await;
    assert!(untrusted.is_err(), "an unknown authority was trusted");

    assert_eq!(voxd::openai_http::trust_ca_file(&ca.ca).unwrap(), 1);
    let heard = engine().transcribe(Request::new(jfk)).await.unwrap().text;
    let e = voxd::wer::wer(&common::reference("jfk.wav", ""), &heard);
    assert!(e <= 0.2, "WER {e:.2}: {heard}");
    // A file without a certificate is refused with its name.
    let err = voxd::openai_http::trust_ca_file(&ca.key).unwrap_err();
    assert!(
        err.to_string().contains("engine-ca.key") || err.to_string().contains("server.key"),
        "{err}"
    );
}

/// A TLS front for a PostgreSQL server that speaks only plain text (the tests' server, from the
/// pgserver wheel, is built without SSL), as a TLS-terminating proxy in front of a database does:
/// it answers the client's `SSLRequest` with `S`, completes the handshake with `ca`'s
/// certificate and relays the protocol; a client that does not ask for TLS is cut off. Returns
/// its port.
async fn tls_front(ca: &common::TestCa, backend_port: u16) -> u16 {
    use tokio::io::AsyncReadExt;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let config = files(ca).load().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = tcp.accept().await else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await?;
                // Int32 length 8, Int32 code 80877103: SSLRequest.
                if request != [0, 0, 0, 8, 4, 210, 22, 47] {
                    return Ok::<(), std::io::Error>(());
                }
                client.write_all(b"S").await?;
                let mut tls = acceptor.accept(client).await?;
                let mut db = tokio::net::TcpStream::connect(("127.0.0.1", backend_port)).await?;
                tokio::io::copy_bidirectional(&mut tls, &mut db).await?;
                Ok(())
            });
        }
    });
    port
}

/// The knowledge base reaches PostgreSQL over TLS as the URL's libpq `sslmode` says: refused in
/// plain text by a TLS-only front, encrypted with `require`, and with `verify-ca` /
/// `verify-full` only when `sslrootcert` names the authority that signed the certificate.
#[tokio::test(flavor = "multi_thread")]
async fn the_knowledge_base_reaches_postgres_over_tls_as_sslmode_says() {
    use voxd::rag::store::{PgStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(dir.path(), "pg");
    let stranger = common::TestCa::new(dir.path(), "stranger");
    let pg = tokio::task::spawn_blocking(common::pg::Postgres::start)
        .await
        .unwrap();
    let url = common::off_runtime(|| pg.database("kb"));
    let front = tls_front(&ca, pg.port).await;
    let url = url.replace(&format!(":{}/", pg.port), &format!(":{front}/"));
    let open = |query: String| {
        let url = format!("{url}?{query}");
        tokio::task::spawn_blocking(move || PgStore::open(&url).map(|s| s.revision().is_ok()))
    };
    assert!(
        open("sslmode=disable".into()).await.unwrap().is_err(),
        "a plain-text connection was let in"
    );
    for query in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca&sslrootcert={}", ca.ca.display()),
        format!("sslmode=verify-full&sslrootcert={}", ca.ca.display()),
    ] {
        let ok = open(query.clone()).await.unwrap();
        assert!(matches!(ok, Ok(true)), "{query}: {:?}", ok.err());
    }
    let wrong = open(format!(
        "sslmode=verify-full&sslrootcert={}",
        stranger.ca.display()
    ))
    .await
    .unwrap();
    assert!(
        wrong.is_err(),
        "a certificate from an unknown authority was trusted"
    );
    let missing = open("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".into())
        .await
        .unwrap();
    let e = missing.err().unwrap().to_string();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    drop(pg);
}
