//! Helpers shared by the integration tests: test data, the installed default model, one shared
//! whisper pool per test binary, and a real server on a loopback port.
#![allow(dead_code)]

pub mod bomb;
pub mod everything;
pub mod pg;
pub mod python;
pub mod scripted;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use voxd::asr::{WhisperConfig, WhisperPool};
use voxd::models::{Manifest, ModelStore, Role};

/// A file in `tests/data`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The reference transcript of `file` (and `channel` for the stereo file).
pub fn reference(file: &str, channel: &str) -> String {
    let tsv = std::fs::read_to_string(data("transcripts.tsv")).unwrap();
    tsv.lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|c| c.len() == 3 && c[0] == file && (channel.is_empty() || c[1] == channel))
        .unwrap_or_else(|| panic!("no reference for {file} {channel}"))[2]
        .to_string()
}

/// The data folder the models were pulled into (`VOXD_HOME` or the default).
pub fn home() -> PathBuf {
    std::env::var_os("VOXD_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(voxd::config::default_home)
}

/// The installed default Whisper model.
pub fn asr_model() -> PathBuf {
    let store = ModelStore::new(&home(), Manifest::builtin());
    store.resolve(Role::Asr, None).unwrap_or_else(|e| {
        panic!("{e}\nThe tests need the default models: run `cargo run -- models pull` first (scripts/test does).")
    })
}

/// One whisper pool (2 workers) shared by the tests of a binary.
pub fn pool() -> Arc<WhisperPool> {
    static POOL: OnceLock<Arc<WhisperPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let cfg = WhisperConfig {
            pool_size: 2,
            threads: 1,
            ..WhisperConfig::new(asr_model())
        };
        Arc::new(WhisperPool::load(cfg).expect("the default model loads"))
    })
    .clone()
}

/// The installed default voice and ONNX Runtime: (voice model, runtime library).
pub fn voice_files() -> (PathBuf, PathBuf) {
    let store = ModelStore::new(&home(), Manifest::builtin());
    let found = store
        .resolve(Role::Tts, None)
        .and_then(|voice| Ok((voice, store.resolve(Role::Runtime, None)?)));
    found.unwrap_or_else(|e| {
        panic!("{e}\nThe tests need the default models: run `cargo run -- models pull` first (scripts/test does).")
    })
}

/// One default voice (one worker, one thread) shared by the tests of a binary.
pub fn tts() -> Arc<voxd::tts::PiperTts> {
    static TTS: OnceLock<Arc<voxd::tts::PiperTts>> = OnceLock::new();
    TTS.get_or_init(|| {
        let (voice, runtime) = voice_files();
        Arc::new(
            voxd::tts::PiperTts::load(&runtime, &voice, 1, 1).expect("the default voice loads"),
        )
    })
    .clone()
}

/// Starts the real server on a loopback port; returns its base URL (`http://127.0.0.1:PORT`).
/// With `with_asr` false the server runs as if its model were still loading.
pub async fn start_server(max_upload_bytes: usize, with_asr: bool) -> String {
    let state = Arc::new(voxd::server::AppState::new(max_upload_bytes));
    if with_asr {
        let p = tokio::task::spawn_blocking(pool).await.unwrap();
        state.set_asr(p);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        voxd::server::serve(listener, state, std::future::pending())
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

/// Starts the real server with `settings` and the shared model; returns the `ws://…/v1/realtime`
/// URL and the server state (for its live-session gauge).
pub async fn start_realtime(
    settings: voxd::server::ServerSettings,
) -> (String, Arc<voxd::server::AppState>) {
    // Server logs on stderr when asked for (they bypass the test harness's capture).
    if std::env::var_os("VOXD_TEST_LOG").is_some() {
        voxd::telemetry::init(voxd::config::LogFormat::Text);
    }
    let state = Arc::new(voxd::server::AppState::with_settings(settings));
    let p = tokio::task::spawn_blocking(pool).await.unwrap();
    state.set_asr(p);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = state.clone();
    tokio::spawn(async move {
        voxd::server::serve(listener, s, std::future::pending())
            .await
            .unwrap();
    });
    (format!("ws://{addr}/v1/realtime"), state)
}

/// A recording (mono), resampled to `rate`.
pub fn audio_at(file: &str, rate: u32) -> Vec<f32> {
    let d = voxd::audio::decode_file(&data(file), voxd::audio::ChannelSelect::Mix).unwrap();
    voxd::audio::resample::resample_all(&d.samples, d.sample_rate, rate).unwrap()
}

/// The installed default embedding model's folder.
pub fn embed_model_dir() -> PathBuf {
    let store = ModelStore::new(&home(), Manifest::builtin());
    store
        .resolve(Role::Embeddings, None)
        .unwrap_or_else(|e| {
            panic!("{e}\nRun `cargo run -- models pull` first (scripts/test does).")
        })
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One local embedder shared by the tests of a binary.
pub fn embedder() -> Arc<voxd::rag::embed::LocalEmbedder> {
    static EMBEDDER: OnceLock<Arc<voxd::rag::embed::LocalEmbedder>> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            Arc::new(
                voxd::rag::embed::LocalEmbedder::load(&embed_model_dir(), "all-minilm-l6-v2", 1)
                    .expect("the default embedding model loads"),
            )
        })
        .clone()
}

/// A knowledge base in a fresh SQLite file under `dir`, with the shared local embedder.
pub fn knowledge_base(dir: &std::path::Path) -> voxd::rag::KnowledgeBase {
    let store = voxd::rag::store::SqliteStore::open(&dir.join("kb.sqlite")).unwrap();
    voxd::rag::KnowledgeBase::new(
        Arc::new(store),
        embedder(),
        voxd::rag::KbSettings::default(),
    )
}

/// Which store a knowledge-base test runs on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty store of either kind for one test: a SQLite file in a temporary folder, or a
/// database on a PostgreSQL server of its own.
pub struct StoreFixture {
    pub dir: tempfile::TempDir,
    pub pg: Option<pg::Postgres>,
    pub url: Option<String>,
}

/// Runs blocking database code on a plain thread (the `postgres` client cannot block inside an
/// async runtime's thread).
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

impl StoreFixture {
    pub fn new(backend: Backend) -> Self {
        off_runtime(|| Self::start(backend))
    }

    fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (pg, url) = match backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres => {
                let pg = pg::Postgres::start();
                let url = pg.database("kb");
                (Some(pg), Some(url))
            }
        };
        StoreFixture { dir, pg, url }
    }

    /// A new store on this fixture's database (as another process would open it).
    pub fn open(&self) -> Arc<dyn voxd::rag::store::Store> {
        off_runtime(|| self.open_here())
    }

    fn open_here(&self) -> Arc<dyn voxd::rag::store::Store> {
        match &self.url {
            Some(url) => Arc::new(voxd::rag::store::PgStore::open(url).unwrap()),
            None => Arc::new(
                voxd::rag::store::SqliteStore::open(&self.dir.path().join("kb.sqlite")).unwrap(),
            ),
        }
    }

    /// A knowledge base on a new store, with the shared local embedder.
    pub fn kb(&self) -> voxd::rag::KnowledgeBase {
        self.kb_with(embedder(), voxd::rag::KbSettings::default())
    }

    pub fn kb_with(
        &self,
        embedder: Arc<dyn voxd::rag::embed::Embedder>,
        settings: voxd::rag::KbSettings,
    ) -> voxd::rag::KnowledgeBase {
        voxd::rag::KnowledgeBase::new(self.open(), embedder, settings)
    }

    /// `voxd serve`/`voxd kb` arguments that select this store.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        match &self.url {
            Some(url) => vec!["--kb-url".into(), url.into()],
            None => vec!["--kb".into(), self.dir.path().join("kb.sqlite").into()],
        }
    }
}

/// Runs each named `async fn name(backend: Backend)` as a test on SQLite (`sqlite::name`) and on
/// PostgreSQL (`postgres::name`): one behaviour, two stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::common::Backend::Postgres).await
            })*
        }
    };
}

/// Starts the real server with `settings` and a knowledge base (no speech model); returns its
/// base URL.
pub async fn start_kb_server(
    settings: voxd::server::ServerSettings,
    kb: voxd::rag::KnowledgeBase,
) -> String {
    let state = Arc::new(voxd::server::AppState::with_settings(settings));
    state.set_kb(Arc::new(kb));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        voxd::server::serve(listener, state, std::future::pending())
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

/// The installed default LLM (GGUF file).
pub fn llm_model() -> PathBuf {
    ModelStore::new(&home(), Manifest::builtin())
        .resolve(Role::Llm, None)
        .unwrap_or_else(|e| {
            panic!("{e}\nRun `cargo run -- models pull` first (scripts/test does).")
        })
}

/// One embedded LLM shared by the tests of a binary.
pub fn llm() -> Arc<voxd::llm::LocalLlm> {
    static LLM: OnceLock<Arc<voxd::llm::LocalLlm>> = OnceLock::new();
    LLM.get_or_init(|| {
        Arc::new(
            voxd::llm::LocalLlm::load(voxd::llm::LocalLlmConfig {
                path: llm_model(),
                name: "smollm2-135m-instruct".into(),
                cache_entries: 4,
            })
            .expect("the default LLM loads"),
        )
    })
    .clone()
}

/// Starts the real server with the speech model, an optional knowledge base and an optional
/// LLM; returns `(ws://…/v1/realtime, http://…)`.
pub async fn start_full(
    settings: voxd::server::ServerSettings,
    kb: Option<voxd::rag::KnowledgeBase>,
    llm: Option<Arc<dyn voxd::llm::Llm>>,
) -> (String, String) {
    start_speaking(settings, kb, llm, None).await
}

/// [`start_full`] with a voice: realtime sessions then answer in audio by default.
pub async fn start_speaking(
    settings: voxd::server::ServerSettings,
    kb: Option<voxd::rag::KnowledgeBase>,
    llm: Option<Arc<dyn voxd::llm::Llm>>,
    tts: Option<Arc<dyn voxd::tts::Tts>>,
) -> (String, String) {
    start_with_tools(settings, kb, llm, tts, None).await
}

/// [`start_speaking`] with server tools (and the client MCP policy) from a `[tools]` table.
pub async fn start_with_tools(
    settings: voxd::server::ServerSettings,
    kb: Option<voxd::rag::KnowledgeBase>,
    llm: Option<Arc<dyn voxd::llm::Llm>>,
    tts: Option<Arc<dyn voxd::tts::Tts>>,
    tools: Option<&str>,
) -> (String, String) {
    if std::env::var_os("VOXD_TEST_LOG").is_some() {
        voxd::telemetry::init(voxd::config::LogFormat::Text);
    }
    let state = Arc::new(voxd::server::AppState::with_settings(settings));
    let p = tokio::task::spawn_blocking(pool).await.unwrap();
    state.set_asr(p);
    if let Some(kb) = kb {
        state.set_kb(Arc::new(kb));
    }
    if let Some(llm) = llm {
        state.set_llm(llm);
    }
    if let Some(tts) = tts {
        state.set_tts(tts);
    }
    if let Some(toml_text) = tools {
        let config: voxd::tools::ToolsConfig = toml::from_str(toml_text).unwrap();
        state.set_server_tools(Arc::new(voxd::tools::ServerTools::new(&config).unwrap()));
    }
    // As `voxd serve` does by default: Smart Turn for semantic_vad, Silero VAD on request.
    let models = tokio::task::spawn_blocking(turn_models).await.unwrap();
    state.set_turn_models(models, voxd::vad::VadEngine::WebRtc);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        voxd::server::serve(listener, state, std::future::pending())
            .await
            .unwrap();
    });
    (format!("ws://{addr}/v1/realtime"), format!("http://{addr}"))
}

/// The fixture knowledge base (tests/data/kb) in a fresh file under `dir`.
pub async fn fixture_kb(dir: &std::path::Path) -> voxd::rag::KnowledgeBase {
    let kb = knowledge_base(dir);
    let mut paths: Vec<_> = std::fs::read_dir(data("kb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in &paths {
        kb.add_file(p).await.unwrap();
    }
    kb
}

/// Speaks `text` with espeak-ng into a WAV file in `dir` and returns its samples at `rate`.
pub fn speak(dir: &std::path::Path, text: &str, rate: u32) -> Vec<f32> {
    let wav = dir.join("speech.wav");
    let status = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng is installed (scripts/deps installs it)");
    assert!(status.success());
    let d = voxd::audio::decode_file(&wav, voxd::audio::ChannelSelect::Mix).unwrap();
    voxd::audio::resample::resample_all(&d.samples, d.sample_rate, rate).unwrap()
}

/// The fixture knowledge base (tests/data/kb) ingested by the real `voxd kb add` into
/// `dir/kb.sqlite`; returns that path.
pub fn kb_added_by_cli(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("kb.sqlite");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
        .env("VOXD_HOME", home())
        .args(["kb", "--kb"])
        .arg(&path)
        .arg("add")
        .arg(data("kb"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "voxd kb add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A running `voxd serve` process (the real binary), killed on drop.
pub struct ServeProcess {
    pub child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its log lines (JSON) so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServeProcess {
    /// Starts `voxd serve --no-pull --addr 127.0.0.1:0 --log-format json ARGS` with this test
    /// run's models and returns once it listens (the address comes from its `listening` line).
    pub fn start(args: &[&std::ffi::OsStr]) -> ServeProcess {
        Self::start_with_env(args, &[])
    }

    /// [`ServeProcess::start`] with extra environment variables.
    pub fn start_with_env(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> ServeProcess {
        use std::io::{BufRead, BufReader};
        asr_model();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_voxd"))
            .args([
                "serve",
                "--no-pull",
                "--addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(args)
            .env("VOXD_HOME", home())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["fields"]["message"] == "listening" {
                        let _ = addr_tx.send(v["fields"]["addr"].as_str().unwrap().to_string());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("voxd serve did not start");
        ServeProcess { child, addr, log }
    }

    /// The last 40 log lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hang guard for reading realtime events: a broken server must fail the test, not stall CI.
/// Not a speed target.
pub const READ_GUARD: std::time::Duration = std::time::Duration::from_secs(180);

/// Reads realtime events until `done` holds for what was read, the socket closes (its close
/// code is returned), or [`READ_GUARD`] expires (the test fails).
pub async fn read_until(
    rx: &mut voxd::client::Receiver,
    mut done: impl FnMut(&[voxd::protocol::ServerEvent]) -> bool,
) -> (Vec<voxd::protocol::ServerEvent>, Option<u16>) {
    use voxd::client::Incoming;
    let mut events = Vec::new();
    let read = async {
        while let Some(msg) = rx.next().await {
            match msg.expect("socket ok") {
                Incoming::Event(e) => {
                    events.push(e);
                    if done(&events) {
                        return None;
                    }
                }
                Incoming::Other(v) => panic!("unknown event {v}"),
                // Raw audio frames (voxd.binary_audio_out): not events.
                Incoming::Audio(_) => {}
                Incoming::Closed { code, .. } => return Some(code),
            }
        }
        Some(1006)
    };
    let closed = tokio::time::timeout(READ_GUARD, read)
        .await
        .expect("the server stopped answering");
    (events, closed)
}

/// The installed turn-taking models (Smart Turn v3.2 with one worker, Silero VAD), shared by the
/// tests of a binary.
pub fn turn_models() -> voxd::vad::TurnModels {
    static MODELS: OnceLock<voxd::vad::TurnModels> = OnceLock::new();
    MODELS
        .get_or_init(|| {
            let store = ModelStore::new(&home(), Manifest::builtin());
            let found = (|| {
                Ok::<_, voxd::models::ModelError>((
                    store.resolve(Role::Runtime, None)?,
                    store.resolve(Role::Turn, None)?,
                    store.resolve(Role::Vad, None)?,
                ))
            })();
            let (runtime, turn, vad) = found.unwrap_or_else(|e| {
                panic!("{e}\nThe tests need the default models: run `cargo run -- models pull` first (scripts/test does).")
            });
            voxd::vad::TurnModels {
                end_of_turn: Some(Arc::new(
                    voxd::vad::SmartTurn::load(&runtime, &turn, 1).expect("Smart Turn loads"),
                )),
                silero: Some(voxd::vad::SileroModel::load(&runtime, &vad).expect("Silero loads")),
            }
        })
        .clone()
}

/// A certificate authority made for a test with the `openssl` command, and a server
/// certificate it signed for `localhost` and `127.0.0.1`.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new authority and server certificate in `dir`, named with `name`.
    pub fn new(dir: &std::path::Path, name: &str) -> TestCa {
        let path = |f: &str| dir.join(format!("{name}-{f}"));
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs (bash scripts/deps --test installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
        let (cert, key, csr, ext) = (
            path("server.pem"),
            path("server.key"),
            path("server.csr"),
            path("ext.cnf"),
        );
        let [ca_s, ca_key_s, cert_s, key_s, csr_s, ext_s] =
            [&ca, &ca_key, &cert, &key, &csr, &ext].map(|p| p.to_str().unwrap().to_string());
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let subject = format!("/CN=voxd test CA {name}");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &ca_key_s, "-out", &ca_s, "-days", "2"]);
        args.extend(["-subj", &subject]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(&args);
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key_s, "-out", &csr_s, "-subj", "/CN=localhost"]);
        openssl(&args);
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr_s,
            "-CA",
            &ca_s,
            "-CAkey",
            &ca_key_s,
            "-CAcreateserial",
            "-out",
            &cert_s,
            "-days",
            "2",
            "-extfile",
            &ext_s,
        ]);
        TestCa { ca, cert, key }
    }

    /// An HTTPS client that trusts this authority only.
    pub fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
            .build()
            .unwrap()
    }
}
