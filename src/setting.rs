//! The vocabulary every stage's configuration shares: the error that names a bad setting and
//! the range check most settings need. It sits at the bottom of the import graph, so a stage's
//! `config.rs` can use it without importing the assembly in [`crate::config`].

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::PathBuf;

/// Errors in configuration; each names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

impl ConfigError {
    /// The setting `setting` is wrong, for the reason `message`.
    pub fn invalid(setting: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting,
            message: message.into(),
        }
    }
}

/// `value` if it lies in `range`, else an error naming `setting` and the range.
pub fn in_range<T: PartialOrd + Display>(
    setting: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        return Ok(value);
    }
    Err(ConfigError::invalid(
        setting,
        format!("{value} is outside {}..={}", range.start(), range.end()),
    ))
}

/// A URL setting, when set and not empty.
pub fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_range_names_its_setting_and_the_range() {
        assert_eq!(in_range("asr_pool", 4, 1..=256).unwrap(), 4);
        let err = in_range("asr_pool", 0, 1..=256).unwrap_err().to_string();
        assert_eq!(err, "invalid asr_pool: 0 is outside 1..=256");
        let err = in_range("llm_temperature", 2.5, 0.0..=2.0)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "invalid llm_temperature: 2.5 is outside 0..=2");
        assert_eq!(non_empty(Some(String::new())), None);
        assert_eq!(non_empty(Some("k".into())).as_deref(), Some("k"));
    }
}
