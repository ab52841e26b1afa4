//! Reading TOML text with errors that say where: `file:line:column: key`,
//! shared by the configuration and the policy files; dates and times as
//! written in them.

use super::*;

/// A configuration or policy file that could not be read, or whose text is
/// wrong at a place: the one error both kinds of file report.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {key}{message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl FileError {
    pub fn read(path: &Path, error: std::io::Error) -> FileError {
        FileError::Read {
            path: path.to_path_buf(),
            error,
        }
    }

    /// An error at byte `offset` of `text`, reported by line and column.
    pub fn at(path: &Path, text: &str, offset: usize, key: String, message: String) -> FileError {
        let (line, column) = line_column(text, offset);
        FileError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            key,
            message,
        }
    }
}

/// Which end of a day a bare date means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayEdge {
    /// Midnight UTC at its start (a period's beginning).
    Start,
    /// Midnight UTC after it (an expiry: the whole day still counts).
    End,
}

/// `2027-01-31` (a whole day, UTC) or an RFC 3339 time, as Unix seconds.
pub fn parse_instant(s: &str, edge: DayEdge) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    let bad = || format!("`{s}` is not a date (2027-01-31) or an RFC 3339 time");
    let mut day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
    if edge == DayEdge::End {
        day = day.succ_opt().ok_or_else(bad)?;
    }
    Ok(day
        .and_hms_opt(0, 0, 0)
        .ok_or_else(bad)?
        .and_utc()
        .timestamp())
}

/// Why a TOML text did not deserialize, and where.
pub(crate) struct TomlError {
    /// Byte offset into the text.
    pub offset: usize,
    /// "key `a.b`: ", or empty when the error is not about one key.
    pub key: String,
    pub message: String,
}

/// Deserializes TOML text, keeping the offset and the key path of an error
/// so that it can be reported as `file:line:column: key …: message`.
pub(crate) fn deserialize_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    let error = |err: toml::de::Error, key: String| TomlError {
        offset: err.span().map(|s| s.start).unwrap_or(0),
        key: key_prefix(&key),
        message: err.message().trim().to_string(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| error(e, String::new()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // toml::Spanned shows in the path under a private name.
        let key = e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "");
        error(e.into_inner(), key)
    })
}

/// "key `k`: " for a key path, or "" for none.
pub(crate) fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

pub(super) fn duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{s}` is not a duration like \"30s\", \"5m\" or \"5d\" ({e})"
        ))
    })
}

pub(super) fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "duration")] Duration);
    let v: Vec<Wrapped> = Vec::deserialize(d)?;
    Ok(v.into_iter().map(|w| w.0).collect())
}

// The other way, for `config show`: the same spelling the file uses.

pub(super) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

pub(super) fn ser_duration_opt<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

pub(super) fn ser_durations<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(d.iter().map(|d| humantime::format_duration(*d).to_string()))
}

pub(super) fn ser_fingerprint<S: Serializer>(fp: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    let hex: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
    s.serialize_str(&hex.join(":"))
}
