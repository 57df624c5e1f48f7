//! Configuration: command-line flags, `VOXD_*` environment variables and an optional TOML file,
//! in that order of precedence, merged into one validated [`Config`].
//!
//! Two phases: clap collects raw values (flags, then environment) as `Option`s; [`Config::resolve`]
//! fills what is still unset from the file, then from defaults, and checks the result. Every
//! setting has the same name in all three places (`--asr-threads`, `VOXD_ASR_THREADS`,
//! `[asr] threads`).
//!
//! Each stage owns its settings in its own `config.rs` (flags, file table, validated config and
//! its `resolve`): [`crate::asr::config`], [`crate::vad::config`], [`crate::rag::config`],
//! [`crate::llm::config`], [`crate::tts::config`], [`crate::server::config`], and the tools'
//! [`crate::tools::ToolsConfig`]. This file holds the flags every subcommand shares, the file as a
//! whole, and the assembly.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

pub use crate::asr::config::{AsrArgs, AsrConfig, FileAsr};
pub use crate::llm::config::{FileLlm, LlmArgs, LlmConfig};
pub use crate::rag::config::{FileKb, KbArgs, KbConfig};
pub use crate::server::config::{FileServer, ServerArgs, ServerConfig};
pub use crate::setting::ConfigError;
pub use crate::telemetry::LogFormat;
pub use crate::tts::config::{FileTts, TtsArgs, TtsConfig};
pub use crate::vad::config::{FileTurns, TurnsArgs, TurnsConfig};

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "VOXD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data folder: models are cached in `<home>/models` [default: $XDG_DATA_HOME/voxd].
    #[arg(long, global = true, env = "VOXD_HOME")]
    pub home: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "VOXD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Trust the certificate authorities in this PEM file (besides the system's) for remote
    /// engines and HTTP tools over HTTPS.
    #[arg(long, global = true, env = "VOXD_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// Every stage's flags, in the order `voxd serve --help` lists them. A subcommand that takes
/// only some of them leaves the rest at their defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct StageArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub turns: TurnsArgs,
    #[command(flatten)]
    pub asr: AsrArgs,
    #[command(flatten)]
    pub kb: KbArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
    #[command(flatten)]
    pub tts: TtsArgs,
}

/// The whole configuration file: the common keys and one table per stage.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    home: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    asr: FileAsr,
    #[serde(default)]
    kb: FileKb,
    #[serde(default)]
    llm: FileLlm,
    #[serde(default)]
    tts: FileTts,
    #[serde(default)]
    turns: FileTurns,
    #[serde(default)]
    tools: crate::tools::ToolsConfig,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub home: PathBuf,
    pub log_format: LogFormat,
    pub asr: AsrConfig,
    pub server: ServerConfig,
    pub kb: KbConfig,
    pub llm: LlmConfig,
    pub tts: TtsConfig,
    /// Turn-taking models (the file's `[turns]` table).
    pub turns: TurnsConfig,
    /// Server tools and who may call them (the file's `[tools]` table).
    pub tools: crate::tools::ToolsConfig,
}

/// The default data folder: `$XDG_DATA_HOME/voxd` (`~/.local/share/voxd`).
pub fn default_home() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("voxd")
}

impl Config {
    /// Merges flags/environment (`common`, `stages`) over the file named by `common.config`
    /// over the defaults; each stage validates its own part.
    pub fn resolve(common: &CommonArgs, stages: &StageArgs) -> Result<Self, ConfigError> {
        let file = match &common.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let home = common
            .home
            .clone()
            .or(file.home)
            .unwrap_or_else(default_home);
        let server = ServerConfig::resolve(&stages.server, file.server)?;
        let asr = AsrConfig::resolve(&stages.asr, file.asr, cores)?;
        let kb = KbConfig::resolve(&stages.kb, file.kb, &home)?;
        let llm = LlmConfig::resolve(&stages.llm, file.llm)?;
        let tts = TtsConfig::resolve(&stages.tts, file.tts)?;
        let turns = TurnsConfig::resolve(&stages.turns, file.turns)?;
        crate::tools::ServerTools::new(&file.tools)
            .map_err(|e| ConfigError::invalid("tools", e.to_string()))?;
        Ok(Config {
            home,
            log_format: common.log_format.or(file.log_format).unwrap_or_default(),
            asr,
            server,
            kb,
            llm,
            tts,
            turns,
            tools: file.tools,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_needs_a_key_or_an_explicit_opt_out() {
        let resolve = |server: ServerArgs| {
            let stages = StageArgs {
                server,
                ..Default::default()
            };
            Config::resolve(&CommonArgs::default(), &stages).unwrap()
        };
        let local = resolve(ServerArgs::default());
        assert!(
            local.server.check_exposure().is_ok(),
            "127.0.0.1 by default"
        );
        assert_eq!(local.server.max_audio_seconds, 1800.0);
        assert_eq!(local.server.max_transcriptions, 4);
        let open = resolve(ServerArgs {
            addr: Some("0.0.0.0:8080".into()),
            ..Default::default()
        });
        let err = open.server.check_exposure().unwrap_err().to_string();
        assert!(
            err.contains("--api-key") && err.contains("--insecure-no-auth"),
            "{err}"
        );
        for server in [
            ServerArgs {
                addr: Some("0.0.0.0:8080".into()),
                api_key: Some("k".into()),
                ..Default::default()
            },
            ServerArgs {
                addr: Some("[::]:8080".into()),
                insecure_no_auth: true,
                ..Default::default()
            },
        ] {
            assert!(resolve(server).server.check_exposure().is_ok());
        }
        let bad_prompt = Config::resolve(
            &CommonArgs::default(),
            &StageArgs {
                asr: AsrArgs {
                    asr_prompt: Some("a\0b".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        assert!(bad_prompt.is_err());
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("voxd.toml");
        std::fs::write(
            &file,
            "home = \"/data/voxd\"\n[server]\naddr = \"0.0.0.0:9000\"\nmax_upload_mb = 5\n[asr]\nthreads = 3\nlanguage = \"de\"\n",
        )
        .unwrap();
        let common = CommonArgs {
            config: Some(file),
            ..Default::default()
        };
        let asr = AsrArgs {
            asr_threads: Some(2),
            ..Default::default()
        };
        let stages = StageArgs {
            asr,
            ..Default::default()
        };
        let cfg = Config::resolve(&common, &stages).unwrap();
        assert_eq!(cfg.asr.threads, 2, "flag wins over file");
        assert_eq!(cfg.asr.language, "de", "file wins over default");
        assert_eq!(cfg.server.addr.to_string(), "0.0.0.0:9000");
        assert_eq!(cfg.server.max_upload_bytes, 5 * 1024 * 1024);
        assert_eq!(cfg.home, PathBuf::from("/data/voxd"));
        assert_eq!(cfg.asr.audio_ctx, crate::asr::AudioCtx::Auto, "default");
    }

    #[test]
    fn bad_values_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("voxd.toml");
        std::fs::write(&file, "[asr]\nthreds = 3\n").unwrap();
        let common = CommonArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let err = Config::resolve(&common, &StageArgs::default()).unwrap_err();
        assert!(err.to_string().contains("threds"), "{err}");

        let server = ServerArgs {
            addr: Some("localhost:http".into()),
            ..Default::default()
        };
        let stages = StageArgs {
            server,
            ..Default::default()
        };
        let err = Config::resolve(&CommonArgs::default(), &stages).unwrap_err();
        assert!(err.to_string().contains("addr"), "{err}");
        let asr = AsrArgs {
            asr_pool: Some(0),
            ..Default::default()
        };
        let stages = StageArgs {
            asr,
            ..Default::default()
        };
        let err = Config::resolve(&CommonArgs::default(), &stages).unwrap_err();
        assert!(err.to_string().contains("asr_pool"), "{err}");
    }

    #[test]
    fn every_stage_reads_its_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("voxd.toml");
        std::fs::write(
            &file,
            "[kb]\ntop_k = 5\n[llm]\nmax_tokens = 64\nanswer_mode = \"checked\"\n\
             [tts]\nworkers = 2\n[turns]\nvad = \"silero\"\nworkers = 3\n[server]\nmax_sessions = 9\n",
        )
        .unwrap();
        let common = CommonArgs {
            config: Some(file.clone()),
            ..Default::default()
        };
        let cfg = Config::resolve(&common, &StageArgs::default()).unwrap();
        assert_eq!(cfg.kb.top_k, 5);
        assert_eq!(cfg.llm.max_tokens, 64);
        assert_eq!(cfg.llm.answer_mode, crate::grounding::AnswerMode::Checked);
        assert_eq!(cfg.tts.workers, 2);
        assert_eq!(cfg.turns.vad, crate::vad::VadEngine::Silero);
        assert_eq!(cfg.turns.workers, 3);
        assert_eq!(cfg.server.max_sessions, 9);
        // A stage's own check still holds when another stage's flag conflicts with it.
        let stages = StageArgs {
            turns: TurnsArgs {
                no_turn_models: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let err = Config::resolve(&common, &stages).unwrap_err().to_string();
        assert!(
            err.contains("--vad silero needs the turn-taking models"),
            "{err}"
        );
        std::fs::write(&file, "[llm]\nmax_tokens = 0\n").unwrap();
        let err = Config::resolve(&common, &StageArgs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("llm_max_tokens"), "{err}");
    }
}
