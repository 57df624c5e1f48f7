//! The language model's settings: its flags (`--llm-*`, `--instructions`), its `[llm]` table,
//! and the validated [`LlmConfig`] that [`super::open`] opens.

use clap::Args;
use serde::Deserialize;

use crate::grounding::AnswerMode;
use crate::setting::{in_range, non_empty, ConfigError};

/// Language-model settings.
#[derive(Debug, Clone, Default, Args)]
pub struct LlmArgs {
    /// Language model: a manifest name (smollm2-135m-instruct), a path to a GGUF file (llama
    /// architecture), or `none`; with --llm-url, the remote model's name.
    #[arg(long, env = "VOXD_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// Use an OpenAI-compatible chat endpoint (base URL with /v1) instead of the embedded model.
    #[arg(long, env = "VOXD_LLM_URL")]
    pub llm_url: Option<String>,
    /// API key for --llm-url.
    #[arg(long, env = "VOXD_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Most tokens in one spoken answer [default: 160].
    #[arg(long, env = "VOXD_LLM_MAX_TOKENS")]
    pub llm_max_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy [default: 0].
    #[arg(long, env = "VOXD_LLM_TEMPERATURE")]
    pub llm_temperature: Option<f32>,
    /// For --llm-url: time allowed until the first token, in ms (connecting, retries included
    /// per attempt) [default: 20000].
    #[arg(long, env = "VOXD_LLM_FIRST_TOKEN_TIMEOUT_MS")]
    pub llm_first_token_timeout_ms: Option<u64>,
    /// For --llm-url: retries before the first token [default: 2].
    #[arg(long, env = "VOXD_LLM_RETRIES")]
    pub llm_retries: Option<u32>,
    /// Default system instructions for spoken answers (a session's `instructions` replace them).
    #[arg(long, env = "VOXD_INSTRUCTIONS")]
    pub instructions: Option<String>,
    /// Let the model answer a factual question that no passage of the knowledge base supports
    /// (default: voxd says it does not know, without asking the model, which would guess).
    #[arg(long, env = "VOXD_LLM_ANSWER_UNFOUND")]
    pub llm_answer_unfound: bool,
    /// How a question the knowledge base covers is answered: `checked` (the model's sentences,
    /// each sent once the passages support it, else the passage's own sentence), `generative`
    /// (the model's words unchecked) or `extractive` (the passage's best sentence, no model)
    /// [default: extractive with the embedded model, checked with --llm-url].
    #[arg(long, env = "VOXD_LLM_ANSWER_MODE", value_parser = ["checked", "generative", "extractive"])]
    pub llm_answer_mode: Option<String>,
}

/// The file's `[llm]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLlm {
    model: Option<String>,
    url: Option<String>,
    api_key: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    first_token_timeout_ms: Option<u64>,
    retries: Option<u32>,
    instructions: Option<String>,
    answer_unfound: Option<bool>,
    answer_mode: Option<String>,
}

/// Language-model configuration.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// `None`: the manifest's default. `Some("none")`: no language model.
    pub model: Option<String>,
    pub url: Option<String>,
    pub api_key: Option<String>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub first_token_timeout_ms: u64,
    pub retries: u32,
    pub instructions: Option<String>,
    /// Let the model answer factual questions no passage supports.
    pub answer_unfound: bool,
    /// How questions the knowledge base covers are answered.
    pub answer_mode: AnswerMode,
}

impl LlmConfig {
    /// Whether a language model is configured at all.
    pub fn enabled(&self) -> bool {
        self.model.as_deref() != Some("none")
    }

    /// Flags over the file over the defaults, validated.
    pub fn resolve(args: &LlmArgs, file: FileLlm) -> Result<Self, ConfigError> {
        let max_tokens = in_range(
            "llm_max_tokens",
            args.llm_max_tokens.or(file.max_tokens).unwrap_or(160),
            1..=4096,
        )?;
        let temperature = in_range(
            "llm_temperature",
            args.llm_temperature.or(file.temperature).unwrap_or(0.0),
            0.0..=2.0,
        )?;
        let url = non_empty(args.llm_url.clone().or(file.url));
        let model = args.llm_model.clone().or(file.model);
        if url.is_some() && model.is_none() {
            return Err(ConfigError::invalid(
                "llm_model",
                "--llm-url needs --llm-model, the remote model's name",
            ));
        }
        let answer_mode = match args.llm_answer_mode.clone().or(file.answer_mode) {
            // The embedded 135M model states the fact less often than the passage's own
            // sentence does (see docs/answers.md); a remote model's words are checked.
            None if url.is_some() => AnswerMode::Checked,
            None => AnswerMode::Extractive,
            Some(m) => AnswerMode::parse(&m).ok_or_else(|| {
                ConfigError::invalid(
                    "llm.answer_mode",
                    format!("{m:?} is not checked, generative or extractive"),
                )
            })?,
        };
        Ok(LlmConfig {
            model,
            url,
            api_key: non_empty(args.llm_api_key.clone().or(file.api_key)),
            max_tokens,
            temperature,
            first_token_timeout_ms: args
                .llm_first_token_timeout_ms
                .or(file.first_token_timeout_ms)
                .unwrap_or(20_000)
                .max(1),
            retries: args.llm_retries.or(file.retries).unwrap_or(2).min(10),
            instructions: args
                .instructions
                .clone()
                .or(file.instructions)
                .filter(|s| !s.trim().is_empty()),
            answer_unfound: args.llm_answer_unfound || file.answer_unfound.unwrap_or(false),
            answer_mode,
        })
    }
}
