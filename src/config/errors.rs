//! Config errors that never echo a value.
//!
//! A config file may hold the API token or a database URL with its password,
//! and an error message ends up in terminals, CI logs and bug reports. The
//! `config` crate's messages quote the offending line (a TOML syntax error)
//! or the value (a type error), so this module says *where* instead: file,
//! line, column and key for a syntax error; key, source and the expected
//! type for a type error.

use std::path::{Path, PathBuf};

/// A config file that is not valid TOML.
#[derive(Debug, thiserror::Error)]
#[error(
    "syntax error in the config file {} at line {line}, column {column}{}: {message}",
    file.display(),
    key.as_ref().map(|k| format!(" ({}key `{k}`)", if *key_above { "after " } else { "" })).unwrap_or_default()
)]
pub struct SyntaxError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// `section.key` of the line, when the line is a `key = value` one; else
    /// of the nearest such line above (an unclosed string ends at the end
    /// of the file, far from its key).
    pub key: Option<String>,
    /// `key` is from a line above the error's.
    pub key_above: bool,
    /// The parser's description ("invalid basic string, expected `\"`"),
    /// which names tokens of the grammar, never the file's text.
    pub message: String,
}

/// Parses `path` as TOML only to find a syntax error in it. An unreadable
/// file is left to the loader, whose message names the file only.
pub fn check_syntax(path: &Path) -> Result<(), SyntaxError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let Err(error) = toml::de::DeTable::parse(&text) else {
        return Ok(());
    };
    let offset = error.span().map_or(0, |span| span.start).min(text.len());
    let (line, column) = line_and_column(&text, offset);
    let (key, key_above) = match key_at_line(&text, line) {
        Some(key) => (Some(key), false),
        None => ((1..line).rev().find_map(|l| key_at_line(&text, l)), true),
    };
    Err(SyntaxError {
        file: path.to_path_buf(),
        line,
        column,
        key,
        key_above,
        message: error.message().to_string(),
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset;
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The `section.key` that line `line` (1-based) sets, if it starts with a
/// bare key and `=`; the section is the last `[header]` above it.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let key = bare_key(lines.get(line.checked_sub(1)?)?.split_once('=')?.0)?;
    let section = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .and_then(|header| bare_key(header.trim_matches(|c| c == '[' || c == ']')));
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_string(),
    })
}

/// `text` trimmed, when it is a bare (dotted) key: letters, digits, `_`, `-`, `.`.
fn bare_key(text: &str) -> Option<&str> {
    let key = text.trim();
    let ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    ok.then_some(key)
}

/// A `config` crate error told without the value it is about.
pub fn describe(error: &config::ConfigError) -> String {
    describe_at(error, None, None)
}

fn describe_at(error: &config::ConfigError, key: Option<&str>, origin: Option<&str>) -> String {
    use config::ConfigError as E;
    let place = |key: Option<&str>, origin: Option<&str>| {
        let mut place = String::new();
        if let Some(key) = key {
            place.push_str(&format!(" for `{key}`"));
        }
        if let Some(origin) = origin {
            place.push_str(&format!(" in {origin}"));
        }
        place
    };
    match error {
        E::Type {
            origin: inner_origin,
            unexpected,
            expected,
            key: inner_key,
        } => {
            // "string \"…\"" / "64-bit integer `5`": keep the kind only.
            let shown = unexpected.to_string();
            let kind = shown.split(['"', '`']).next().unwrap_or("").trim();
            format!(
                "invalid type{}: expected {expected}, found a {kind} (value not shown)",
                place(
                    inner_key.as_deref().or(key),
                    inner_origin.as_deref().or(origin)
                )
            )
        }
        E::At {
            error,
            origin: inner_origin,
            key: inner_key,
        } => describe_at(
            error,
            inner_key.as_deref().or(key),
            inner_origin.as_deref().or(origin),
        ),
        E::NotFound(missing) => format!("missing setting `{missing}`"),
        E::FileParse { uri, .. } => format!(
            "cannot parse the config file{} (not valid TOML)",
            uri.as_ref().map(|u| format!(" {u}")).unwrap_or_default()
        ),
        E::Message(message) => format!(
            "invalid setting{}: {}",
            place(key, origin),
            without_quoted(message)
        ),
        other => format!(
            "cannot load the settings{}: {}",
            place(key, origin),
            without_quoted(&other.to_string())
        ),
    }
}

/// `message` with every double-quoted part (serde quotes values so) cut out.
fn without_quoted(message: &str) -> String {
    let mut out = String::new();
    for (i, part) in message.split('"').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else {
            out.push_str("\"…\"");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_columns_and_keys() {
        let text = "[api]\nlisten = \"x\"\ntoken = \"abc\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 8), (2, 3));
        assert_eq!(key_at_line(text, 3).as_deref(), Some("api.token"));
        assert_eq!(key_at_line(text, 1), None);
        assert_eq!(key_at_line("a = 1", 1).as_deref(), Some("a"));
        assert_eq!(key_at_line("\"quoted key\" = 1", 1), None);
    }

    #[test]
    fn quoted_parts_are_cut() {
        assert_eq!(
            without_quoted(r#"invalid value: string "hunter2", expected x"#),
            "invalid value: string \"…\", expected x"
        );
    }
}
