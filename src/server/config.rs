//! The HTTP server's settings: its flags (address, keys, limits, telemetry export), its
//! `[server]` table with `[[server.keys]]`, and the validated [`ServerConfig`] that
//! [`ServerSettings::from_config`] turns into the running server's settings.

use std::collections::HashMap;
use std::net::SocketAddr;

use clap::Args;
use serde::Deserialize;

use super::guard::ApiKey;
use super::quotas::Quota;
use super::ServerSettings;
use crate::setting::{in_range, non_empty, ConfigError};

/// HTTP server settings.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "VOXD_ADDR")]
    pub addr: Option<String>,
    /// Largest accepted upload in MiB [default: 25].
    #[arg(long, env = "VOXD_MAX_UPLOAD_MB")]
    pub max_upload_mb: Option<u64>,
    /// Require this API key on every API route (Bearer header, or the browser subprotocol).
    #[arg(long, env = "VOXD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Browser origins (scheme://host[:port]) allowed to call the API, comma-separated; `*` for
    /// any [default: the server's own origin and loopback origins].
    #[arg(long, env = "VOXD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Host names (Host header, without the port) the server answers to, comma-separated; `*`
    /// for any [default: the bind address, localhost and loopback addresses].
    #[arg(long, env = "VOXD_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Option<Vec<String>>,
    /// Allow listening on a non-loopback address without an API key (anyone who can reach the
    /// port can use every API).
    #[arg(long, env = "VOXD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Longest audio accepted by the transcription endpoint, in minutes [default: 30].
    #[arg(long, env = "VOXD_MAX_AUDIO_MINUTES")]
    pub max_audio_minutes: Option<u64>,
    /// Uploads decoded or transcribed at once; more get 503 [default: 4].
    #[arg(long, env = "VOXD_MAX_TRANSCRIPTIONS")]
    pub max_transcriptions: Option<usize>,
    /// Concurrent realtime sessions; more get 503 [default: 64].
    #[arg(long, env = "VOXD_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Longest realtime session in minutes [default: 60].
    #[arg(long, env = "VOXD_MAX_SESSION_MINUTES")]
    pub max_session_minutes: Option<u64>,
    /// Export traces to this OpenTelemetry collector (OTLP/HTTP base URL, e.g.
    /// http://localhost:4318); OTEL_EXPORTER_OTLP_ENDPOINT works too [default: off].
    #[arg(long, env = "VOXD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Serve HTTPS and WSS with this PEM certificate chain (with --tls-key); reloaded on SIGHUP
    /// or when the file changes.
    #[arg(long, env = "VOXD_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "VOXD_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The web demo gets a short-lived client secret from the server for each session (POST
    /// /demo/client_secret, from the server's own page only), so no API key is typed into or
    /// kept by the browser; bounded by the `demo` role's quotas.
    #[arg(long, env = "VOXD_DEMO_CLIENT_SECRETS")]
    pub demo_client_secrets: bool,
    /// The address WebRTC peers are told to send media to (behind NAT: the public one) [default:
    /// the listen address; loopback when listening on every interface].
    #[arg(long, env = "VOXD_RTC_PUBLIC_IP")]
    pub rtc_public_ip: Option<std::net::IpAddr>,
    /// The UDP ports WebRTC calls take their media port from, `FIRST-LAST` (one port a call;
    /// open them in the firewall) [default: any free port].
    #[arg(long, env = "VOXD_RTC_UDP_PORTS", value_parser = parse_port_range)]
    pub rtc_udp_ports: Option<PortRange>,
}

/// A range of UDP ports, `FIRST-LAST` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        parse_port_range(&text)
    }
}

/// Parses `FIRST-LAST` (or one port).
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let port = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{text}`: ports are 1-65535, as FIRST-LAST"))
    };
    let (first, last) = (port(a)?, port(b)?);
    if first > last {
        return Err(format!("`{text}`: the first port is above the last"));
    }
    Ok(PortRange { first, last })
}

/// The file's `[server]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    addr: Option<String>,
    max_upload_mb: Option<u64>,
    api_key: Option<String>,
    allowed_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    insecure_no_auth: Option<bool>,
    max_audio_minutes: Option<u64>,
    max_transcriptions: Option<usize>,
    max_sessions: Option<usize>,
    max_session_minutes: Option<u64>,
    otlp_endpoint: Option<String>,
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
    demo_client_secrets: Option<bool>,
    rtc_public_ip: Option<std::net::IpAddr>,
    rtc_udp_ports: Option<PortRange>,
    #[serde(default)]
    keys: Vec<FileKey>,
    /// Quotas by role, for keys that set none of their own.
    #[serde(default)]
    roles: HashMap<String, Quota>,
}

/// An API key in the configuration file: the key itself, or the environment variable that
/// holds it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    id: String,
    key: Option<String>,
    key_env: Option<String>,
    role: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    client_secrets: bool,
    max_sessions: Option<u32>,
    requests_per_minute: Option<u32>,
    audio_minutes_per_day: Option<f64>,
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub max_upload_bytes: usize,
    pub api_key: Option<String>,
    /// Browser origins allowed besides the server's own and loopback ones (`*`: any).
    pub allowed_origins: Vec<String>,
    /// Host names accepted besides the bind address and loopback names (`*`: any).
    pub allowed_hosts: Vec<String>,
    /// Listen on a non-loopback address without an API key.
    pub insecure_no_auth: bool,
    /// Longest audio the transcription endpoint accepts, in seconds.
    pub max_audio_seconds: f64,
    /// Uploads decoded or transcribed at once.
    pub max_transcriptions: usize,
    pub max_sessions: usize,
    pub max_session_minutes: u64,
    /// OTLP/HTTP collector base URL; `None`: no export unless the OTEL_* variables ask for it.
    pub otlp_endpoint: Option<String>,
    /// API keys with ids and roles (the file's `[[server.keys]]`), besides `api_key`.
    pub keys: Vec<ApiKey>,
    /// Serve HTTPS/WSS with this certificate and key.
    pub tls: Option<super::tls::TlsFiles>,
    /// The demo's client secrets, with the `demo` account's quota; `None`: off.
    pub demo: Option<Quota>,
    /// The address WebRTC peers send media to.
    pub rtc_public_ip: Option<std::net::IpAddr>,
    /// The UDP ports calls' media may use.
    pub rtc_udp_ports: Option<PortRange>,
}

impl ServerConfig {
    /// Flags over the file over the defaults, validated.
    pub fn resolve(args: &ServerArgs, file: FileServer) -> Result<Self, ConfigError> {
        let addr_text = args
            .addr
            .clone()
            .or(file.addr)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let addr = addr_text
            .parse()
            .map_err(|e| ConfigError::invalid("addr", format!("`{addr_text}`: {e}")))?;
        let max_upload_mb = in_range(
            "max_upload_mb",
            args.max_upload_mb.or(file.max_upload_mb).unwrap_or(25),
            1..=4096,
        )?;
        let max_audio_minutes = in_range(
            "max_audio_minutes",
            args.max_audio_minutes
                .or(file.max_audio_minutes)
                .unwrap_or(30),
            1..=1440,
        )?;
        let max_sessions = in_range(
            "max_sessions",
            args.max_sessions.or(file.max_sessions).unwrap_or(64),
            1..=100_000,
        )?;
        let max_session_minutes = in_range(
            "max_session_minutes",
            args.max_session_minutes
                .or(file.max_session_minutes)
                .unwrap_or(60),
            1..=100_000,
        )?;
        let max_transcriptions = in_range(
            "max_transcriptions",
            args.max_transcriptions
                .or(file.max_transcriptions)
                .unwrap_or(4),
            1..=100_000,
        )?;
        let otlp_endpoint = args
            .otlp_endpoint
            .clone()
            .or(file.otlp_endpoint)
            .filter(|u| !u.trim().is_empty());
        if let Some(url) = &otlp_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "otlp_endpoint",
                    format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
        }
        Ok(ServerConfig {
            addr,
            max_upload_bytes: (max_upload_mb * 1024 * 1024) as usize,
            api_key: non_empty(args.api_key.clone().or(file.api_key)),
            allowed_origins: args
                .allowed_origins
                .clone()
                .or(file.allowed_origins)
                .unwrap_or_default(),
            allowed_hosts: args
                .allowed_hosts
                .clone()
                .or(file.allowed_hosts)
                .unwrap_or_default(),
            insecure_no_auth: args.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
            max_audio_seconds: max_audio_minutes as f64 * 60.0,
            max_transcriptions,
            max_sessions,
            max_session_minutes,
            otlp_endpoint,
            rtc_public_ip: args.rtc_public_ip.or(file.rtc_public_ip),
            rtc_udp_ports: args.rtc_udp_ports.or(file.rtc_udp_ports),
            demo: (args.demo_client_secrets || file.demo_client_secrets.unwrap_or(false)).then(
                || {
                    file.roles
                        .get("demo")
                        .copied()
                        .unwrap_or(DEMO_QUOTA)
                        .over(DEMO_QUOTA)
                },
            ),
            keys: keys(&file.keys, &file.roles)?,
            tls: match (
                args.tls_cert.clone().or(file.tls_cert),
                args.tls_key.clone().or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some(super::tls::TlsFiles { cert, key }),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::invalid(
                        "tls_cert",
                        "--tls-cert and --tls-key go together",
                    ))
                }
            },
        })
    }

    /// Refuses to serve every API to the network unprotected: a non-loopback address needs an
    /// API key, or `--insecure-no-auth` (which logs a warning).
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.addr.ip().is_loopback() || self.api_key.is_some() || !self.keys.is_empty() {
            return Ok(());
        }
        if self.insecure_no_auth {
            tracing::warn!(addr = %self.addr, "serving every API without an API key on a non-loopback address (--insecure-no-auth)");
            return Ok(());
        }
        Err(ConfigError::invalid(
            "addr",
            format!(
                "{} is reachable from other machines and no API key is set: pass --api-key (or VOXD_API_KEY), listen on 127.0.0.1, or accept the risk with --insecure-no-auth",
                self.addr
            ),
        ))
    }
}

/// The file's API keys, each read from the file or its environment variable and checked.
fn keys(file: &[FileKey], roles: &HashMap<String, Quota>) -> Result<Vec<ApiKey>, ConfigError> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, k) in file.iter().enumerate() {
        let key = match (&k.key, &k.key_env) {
            (Some(key), None) => key.clone(),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                ConfigError::invalid(
                    "server.keys",
                    format!("key `{}`: the environment variable {var} is not set", k.id),
                )
            })?,
            _ => {
                return Err(ConfigError::invalid(
                    "server.keys",
                    format!(
                        "key #{i} (`{}`) needs exactly one of `key` and `key_env`",
                        k.id
                    ),
                ))
            }
        };
        if key.len() < 16 || k.id.is_empty() || keys.iter().any(|o| o.id == k.id) {
            return Err(ConfigError::invalid(
                "server.keys",
                format!(
                    "key #{i} (`{}`): ids must be unique and non-empty, keys at least 16 characters",
                    k.id
                ),
            ));
        }
        keys.push(ApiKey {
            id: k.id.clone(),
            key,
            role: k.role.clone().unwrap_or_else(|| "default".into()),
            admin: k.admin,
            client_secrets: k.client_secrets,
            quota: quota_of(k, roles)?,
        });
    }
    Ok(keys)
}

/// The demo's limits unless `[server.roles.demo]` sets them: a few sessions at once, a few new
/// ones a minute, an hour of audio a day.
pub const DEMO_QUOTA: Quota = Quota {
    max_sessions: Some(4),
    requests_per_minute: Some(20),
    audio_minutes_per_day: Some(60.0),
};

/// A key's quota: its own settings over its role's, each checked.
fn quota_of(k: &FileKey, roles: &HashMap<String, Quota>) -> Result<Quota, ConfigError> {
    let role = k.role.as_deref().unwrap_or("default");
    let own = Quota {
        max_sessions: k.max_sessions,
        requests_per_minute: k.requests_per_minute,
        audio_minutes_per_day: k.audio_minutes_per_day,
    };
    let q = own.over(roles.get(role).copied().unwrap_or_default());
    let bad = q.max_sessions == Some(0)
        || q.requests_per_minute == Some(0)
        || q.audio_minutes_per_day
            .is_some_and(|m| !(m > 0.0 && m.is_finite()));
    if bad {
        return Err(ConfigError::invalid(
            "server.keys",
            format!(
                "key `{}`: quotas must be positive (leave one out for no limit)",
                k.id
            ),
        ));
    }
    Ok(q)
}

impl ServerSettings {
    /// The running server's settings from its validated configuration, with how sessions answer.
    pub fn from_config(cfg: &ServerConfig, answer: crate::realtime::AnswerSettings) -> Self {
        ServerSettings {
            max_upload_bytes: cfg.max_upload_bytes,
            api_key: cfg.api_key.clone(),
            keys: cfg.keys.clone(),
            demo: cfg.demo,
            rtc_public_ip: cfg.rtc_public_ip,
            rtc_udp_ports: cfg.rtc_udp_ports,
            allowed_origins: cfg.allowed_origins.clone(),
            allowed_hosts: cfg.allowed_hosts.clone(),
            bind: Some(cfg.addr),
            max_audio_seconds: cfg.max_audio_seconds,
            max_transcriptions: cfg.max_transcriptions,
            max_sessions: cfg.max_sessions,
            limits: crate::realtime::Limits {
                max_session: std::time::Duration::from_secs(cfg.max_session_minutes * 60),
                ..Default::default()
            },
            answer,
        }
    }
}
