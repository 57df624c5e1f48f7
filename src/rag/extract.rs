//! Turning files into document text: plain text and markdown as they are (after an optional
//! front-matter block), HTML through html2text. Anything else is refused.
//!
//! Front matter (`---` lines at the very top of a text or markdown file) may set `title`,
//! `source` (the logical document this file is a version of), `updated` (when this version took
//! effect), `expires`, `uri`; other keys are kept as metadata.

use std::collections::BTreeMap;
use std::path::Path;

use super::KbError;

/// How a document's text is structured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Html,
}

impl Format {
    /// The format for a file name, by extension.
    pub fn for_path(path: &Path) -> Result<Format, KbError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "txt" | "text" => Ok(Format::Text),
            "md" | "markdown" => Ok(Format::Markdown),
            "html" | "htm" => Ok(Format::Html),
            _ => Err(KbError::invalid(
                "unsupported_file_type",
                format!(
                    "{}: only .txt, .md and .html files can be added (got `{}`)",
                    path.display(),
                    if ext.is_empty() { "no extension" } else { &ext }
                ),
            )),
        }
    }

    /// The format for a MIME type or file name sent with an upload.
    pub fn for_upload(
        file_name: Option<&str>,
        content_type: Option<&str>,
    ) -> Result<Format, KbError> {
        if let Some(name) = file_name.filter(|n| n.contains('.')) {
            return Format::for_path(Path::new(name));
        }
        match content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
            Some("text/plain") | None => Ok(Format::Text),
            Some("text/markdown") => Ok(Format::Markdown),
            Some("text/html") => Ok(Format::Html),
            Some(other) => Err(KbError::invalid(
                "unsupported_file_type",
                format!("only text, markdown and HTML can be added (got {other})"),
            )),
        }
    }
}

/// A document's text and what its file said about it.
#[derive(Debug, Clone, Default)]
pub struct Extracted {
    pub text: String,
    pub title: Option<String>,
    pub source: Option<String>,
    pub uri: Option<String>,
    /// Unix seconds.
    pub updated_at: Option<i64>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub metadata: BTreeMap<String, String>,
}

/// Extracts the text of a file's bytes.
pub fn extract(bytes: &[u8], format: Format) -> Result<Extracted, KbError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        KbError::invalid(
            "invalid_utf8",
            format!(
                "the document is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = match format {
        Format::Html => {
            let title = html_title(text);
            let body = html2text::config::plain()
                .no_link_wrapping()
                .string_from_read(text.as_bytes(), 10_000)
                .map_err(|e| {
                    KbError::invalid("invalid_html", format!("could not read the HTML: {e}"))
                })?;
            Extracted {
                text: body,
                title,
                ..Default::default()
            }
        }
        Format::Text | Format::Markdown => front_matter(text)?,
    };
    out.text = out.text.trim_end().to_string();
    if out.title.is_none() && format != Format::Text {
        out.title = first_heading(&out.text);
    }
    if out.text.trim().is_empty() {
        return Err(KbError::invalid(
            "empty_document",
            "the document has no text",
        ));
    }
    Ok(out)
}

/// Splits off a leading `---` … `---` block of `key: value` lines.
fn front_matter(text: &str) -> Result<Extracted, KbError> {
    let mut out = Extracted::default();
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        out.text = text.to_string();
        return Ok(out);
    };
    let Some(end) = rest.find("\n---") else {
        out.text = text.to_string();
        return Ok(out);
    };
    let block = &rest[..end];
    let after = &rest[end + 4..];
    out.text = after.trim_start_matches(['\r', '\n']).to_string();
    for line in block.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"').to_string();
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "title" => out.title = Some(value),
            "source" => out.source = Some(value),
            "uri" | "url" => out.uri = Some(value),
            "updated" | "date" | "updated_at" => {
                out.updated_at = Some(parse_time("updated", &value)?)
            }
            "expires" | "expires_at" => out.expires_at = Some(parse_time("expires", &value)?),
            _ => {
                out.metadata.insert(key, value);
            }
        }
    }
    Ok(out)
}

/// Parses an RFC 3339 time (`2026-03-01T09:00:00Z`) or a date (`2026-03-01`, midnight UTC) into
/// Unix seconds.
pub fn parse_time(what: &str, value: &str) -> Result<i64, KbError> {
    let full = if value.len() == 10 {
        format!("{value}T00:00:00Z")
    } else {
        value.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .ok_or_else(|| {
            KbError::invalid(
                "invalid_time",
                format!("{what}: `{value}` is not a date (2026-03-01) or RFC 3339 time"),
            )
        })
}

/// Formats Unix seconds as RFC 3339 (UTC).
pub fn format_time(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn first_heading(text: &str) -> Option<String> {
    text.lines().take(20).find_map(|l| {
        let t = l.trim_start();
        let level = t.chars().take_while(|&c| c == '#').count();
        ((1..=6).contains(&level) && t[level..].starts_with(' '))
            .then(|| t[level..].trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title>")?;
    let title = html[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then_some(title)
}
