//! The headers of an IA-S3 `PUT`, built from a collection's `.meta` tags.
//!
//! IA-S3 turns `x-archive-meta-<key>` headers into the item's metadata when
//! the first `PUT` creates the item (`x-archive-auto-make-bucket: 1`). The
//! rules below are the ones the `internetarchive` library
//! (`internetarchive/iarequest.py`, `prepare_headers`) follows and IA-S3
//! decodes (see `docs/ia-s3.md`):
//! - a tag with several values is sent as `x-archive-meta01-<key>`,
//!   `x-archive-meta02-<key>`, … (IA keeps them in that order); one value as
//!   `x-archive-meta-<key>`;
//! - `_` cannot appear in a header name IA-S3 accepts, so a key's `_` is sent
//!   as `--`, which IA-S3 turns back into `_`;
//! - a value with a non-ASCII character or any whitespace (the library's
//!   `needs_quote`) is sent as `uri(<percent-encoded UTF-8>)`, which IA-S3
//!   decodes;
//! - `x-archive-queue-derive: 0` (no derivatives of tars), and
//!   `x-archive-size-hint: <item bytes>` so IA picks a server with room.
//!
//! `Content-MD5` and `Content-Length` are per file: the upload client adds them.

use super::credentials::IaCredentials;
use crate::secret::Secret;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::fmt;
use std::path::Path;

/// One metadata tag and its values, in order (`.meta/<tag>/0`, `/1`, …).
pub type MetaTag = (String, Vec<String>);

/// Why headers could not be built, or `.meta` read. Names the tag, never a
/// credential.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// A tag name IA would not take as a metadata field: it must start with a
    /// letter and hold only ASCII letters, digits, `_` and `-`.
    #[error("the metadata tag {0:?} is not a valid Internet Archive field name")]
    BadKey(String),
    /// A key that cannot go into a header (a control character, say); the
    /// key itself is not shown.
    #[error("the Internet Archive {0} key holds a character an HTTP header cannot carry")]
    BadCredential(&'static str),
    /// `.meta` could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        reason: String,
    },
}

/// The headers every `PUT` of one item carries: the auth header (a
/// [`Secret`]) and the `x-archive-*` ones, in a fixed order.
#[derive(Clone)]
pub struct ItemHeaders {
    authorization: Secret,
    access: String,
    archive: Vec<(String, String)>,
}

impl ItemHeaders {
    /// The `x-archive-*` headers, in order (no credential among them).
    pub fn archive(&self) -> &[(String, String)] {
        &self.archive
    }

    /// The `authorization` header's value, for the one request it goes on.
    pub fn authorization(&self) -> &Secret {
        &self.authorization
    }

    /// Every header as a [`HeaderMap`] for the request, the auth header
    /// marked sensitive so hyper and reqwest leave it out of their `Debug`.
    pub fn header_map(&self) -> Result<HeaderMap, HeaderError> {
        let mut map = HeaderMap::new();
        let mut auth = HeaderValue::from_str(self.authorization.expose())
            .map_err(|_| HeaderError::BadCredential("access or secret"))?;
        auth.set_sensitive(true);
        map.insert(reqwest::header::AUTHORIZATION, auth);
        for (name, value) in &self.archive {
            // Names are checked keys, values `encode_value`'s visible ASCII.
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HeaderError::BadKey(name.clone()))?;
            let value =
                HeaderValue::from_str(value).map_err(|_| HeaderError::BadKey(name.to_string()))?;
            map.append(name, value);
        }
        Ok(map)
    }

    /// Every header as `name: value` lines, the secret key replaced by
    /// `[redacted]`: what `upload --dry-run` prints.
    pub fn redacted(&self) -> String {
        let mut out = format!("authorization: LOW {}:[redacted]\n", self.access);
        for (name, value) in &self.archive {
            out.push_str(&format!("{name}: {value}\n"));
        }
        out
    }
}

impl fmt::Debug for ItemHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The headers of every `PUT` into an item of `size_hint` bytes in all,
/// carrying `tags` as its metadata.
pub fn item_headers(
    credentials: &IaCredentials,
    tags: &[MetaTag],
    size_hint: u64,
) -> Result<ItemHeaders, HeaderError> {
    let mut archive = vec![
        ("x-archive-auto-make-bucket".to_string(), "1".to_string()),
        ("x-archive-queue-derive".to_string(), "0".to_string()),
        ("x-archive-size-hint".to_string(), size_hint.to_string()),
    ];
    archive.extend(meta_headers(tags)?);
    Ok(ItemHeaders {
        authorization: credentials.authorization(),
        access: credentials.access.clone(),
        archive,
    })
}

/// `x-archive-meta*` headers for `tags` (see the module doc). Empty values
/// are left out, as the library leaves them out.
pub fn meta_headers(tags: &[MetaTag]) -> Result<Vec<(String, String)>, HeaderError> {
    let mut headers = Vec::new();
    for (key, values) in tags {
        if !valid_key(key) {
            return Err(HeaderError::BadKey(key.clone()));
        }
        let name = key.to_ascii_lowercase().replace('_', "--");
        let values: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
        for (index, value) in values.iter().enumerate() {
            let header = if values.len() == 1 {
                format!("x-archive-meta-{name}")
            } else {
                format!("x-archive-meta{:02}-{name}", index + 1)
            };
            headers.push((header, encode_value(value)));
        }
    }
    Ok(headers)
}

/// A metadata value as a header value: itself when it is ASCII without
/// whitespace or control characters, else `uri(<percent-encoded UTF-8>)`.
/// The library quotes on non-ASCII or any whitespace (`utils.needs_quote`);
/// we quote control characters too, which no header may carry.
pub fn encode_value(value: &str) -> String {
    let plain = value.bytes().all(|b| b.is_ascii_graphic());
    if plain {
        value.to_string()
    } else {
        format!("uri({})", quote(value))
    }
}

/// Python's `urllib.parse.quote(value)`: every byte but ASCII letters,
/// digits and `_.-~/` as `%XX` (upper-case hex).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"_.-~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The tags under a collection's `.meta/` directory (`<tag>/<n>`, one value
/// per file), tags sorted by name and values by `n`.
pub fn read_meta_dir(meta_dir: &Path) -> Result<Vec<MetaTag>, HeaderError> {
    let unreadable = |path: &Path, e: std::io::Error| HeaderError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut tags = Vec::new();
    let entries = std::fs::read_dir(meta_dir).map_err(|e| unreadable(meta_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| unreadable(meta_dir, e))?;
        if !entry.path().is_dir() {
            continue;
        }
        let tag = entry.file_name().to_string_lossy().into_owned();
        let mut values: Vec<(u64, String)> = Vec::new();
        let files = std::fs::read_dir(entry.path()).map_err(|e| unreadable(&entry.path(), e))?;
        for file in files {
            let file = file.map_err(|e| unreadable(&entry.path(), e))?;
            let Ok(n) = file.file_name().to_string_lossy().parse::<u64>() else {
                continue;
            };
            let value =
                std::fs::read_to_string(file.path()).map_err(|e| unreadable(&file.path(), e))?;
            values.push((n, value));
        }
        values.sort();
        tags.push((tag, values.into_iter().map(|(_, v)| v).collect()));
    }
    tags.sort();
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::credentials::CredentialSource;

    fn tag(key: &str, values: &[&str]) -> MetaTag {
        (
            key.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_quoted_as_the_library_quotes_them() {
        // internetarchive tests/test_iarequest.py::test_metadata_header_uri_encoding
        assert_eq!(
            encode_value("http://example.com/foo bar?q=✓"),
            "uri(http%3A//example.com/foo%20bar%3Fq%3D%E2%9C%93)"
        );
        // internetarchive tests/test_item.py::test_upload_metadata
        assert_eq!(
            encode_value("Почему бы и нет..."),
            "uri(%D0%9F%D0%BE%D1%87%D0%B5%D0%BC%D1%83%20%D0%B1%D1%8B%20%D0%B8%20%D0%BD%D0%B5%D1%82...)"
        );
        assert_eq!(encode_value("street-view"), "street-view");
        assert_eq!(
            encode_value("https://creativecommons.org/licenses/by-sa/4.0/"),
            "https://creativecommons.org/licenses/by-sa/4.0/"
        );
        // Whitespace of any kind, as `needs_quote`; a control character too.
        assert_eq!(encode_value("a b"), "uri(a%20b)");
        assert_eq!(encode_value("a\n\nb"), "uri(a%0A%0Ab)");
        assert_eq!(encode_value("a\u{1}"), "uri(a%01)");
        assert_eq!(encode_value("100% ~_.-"), "uri(100%25%20~_.-)");
    }

    #[test]
    fn repeated_values_are_numbered_and_underscores_doubled() {
        let headers = meta_headers(&[
            tag("title", &["Mapillary images by alice"]),
            tag("subject", &["mapillary", "street-view", "computer-vision"]),
            tag("mapillary_downloader", &["0.1.0"]),
            tag("Coverage", &["2024"]),
            tag("notes", &["", "kept"]),
            tag("empty", &[]),
        ])
        .unwrap();
        assert_eq!(
            headers,
            pairs(&[
                (
                    "x-archive-meta-title",
                    "uri(Mapillary%20images%20by%20alice)"
                ),
                ("x-archive-meta01-subject", "mapillary"),
                ("x-archive-meta02-subject", "street-view"),
                ("x-archive-meta03-subject", "computer-vision"),
                ("x-archive-meta-mapillary--downloader", "0.1.0"),
                ("x-archive-meta-coverage", "2024"),
                ("x-archive-meta-notes", "kept"),
            ])
        );
    }

    #[test]
    fn every_tag_packing_writes_makes_valid_headers() {
        // An ASCII user name: the description's blank line alone must make it `uri()`.
        let facts = crate::package::item::ItemFacts::new(
            "mapillary-alice_x-2048-webp",
            true,
            1234,
            Some(1_700_000_000_000),
            Some(1_710_000_000_000),
        )
        .unwrap();
        let tags: Vec<MetaTag> = facts
            .tags()
            .into_iter()
            .map(|(key, values)| (key.to_string(), values))
            .collect();
        let headers = meta_headers(&tags).unwrap();
        for (name, value) in &headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
            reqwest::header::HeaderValue::from_str(value).unwrap();
            assert!(value.is_ascii() && !name.contains('_'), "{name}: {value}");
        }
        let description = &headers
            .iter()
            .find(|(n, _)| n == "x-archive-meta-description");
        assert!(
            description
                .unwrap()
                .1
                .starts_with("uri(Street-level%20imagery")
        );
    }

    #[test]
    fn keys_ia_would_refuse_are_errors() {
        for key in ["", "1st", "has space", "dot.ted", "ümlaut", "-dash"] {
            let error = meta_headers(&[tag(key, &["v"])]).unwrap_err();
            assert!(matches!(error, HeaderError::BadKey(_)), "{key:?}");
        }
    }

    #[test]
    fn item_headers_carry_the_item_flags_and_redact_the_secret() {
        let credentials = IaCredentials {
            access: "acc".into(),
            secret: Secret::new("the-secret-key"),
            source: CredentialSource::Environment,
        };
        let headers = item_headers(&credentials, &[tag("mediatype", &["data"])], 90_000).unwrap();
        assert_eq!(
            headers.archive(),
            pairs(&[
                ("x-archive-auto-make-bucket", "1"),
                ("x-archive-queue-derive", "0"),
                ("x-archive-size-hint", "90000"),
                ("x-archive-meta-mediatype", "data"),
            ])
        );
        assert_eq!(headers.authorization().expose(), "LOW acc:the-secret-key");
        let shown = format!("{}{headers:?}", headers.redacted());
        assert!(!shown.contains("the-secret-key"), "{shown}");
        assert!(
            shown.starts_with("authorization: LOW acc:[redacted]\n"),
            "{shown}"
        );
        assert!(shown.contains("x-archive-size-hint: 90000\n"), "{shown}");
        let map = headers.header_map().unwrap();
        assert!(map["authorization"].is_sensitive());
        assert!(!format!("{map:?}").contains("the-secret-key"));
        assert_eq!(map["x-archive-meta-mediatype"], "data");
        assert_eq!(map.len(), 5);
        let broken = IaCredentials {
            secret: Secret::new("a\nb"),
            ..credentials
        };
        let error = item_headers(&broken, &[], 1)
            .unwrap()
            .header_map()
            .unwrap_err();
        assert!(matches!(error, HeaderError::BadCredential(_)));
    }

    #[test]
    fn meta_dirs_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let write = |tag: &str, n: &str, value: &str| {
            let path = dir.path().join(tag).join(n);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        };
        for n in 0..11 {
            write("subject", &n.to_string(), &format!("s{n}"));
        }
        write("title", "0", "Zoë's images\n(part 2)");
        write("title", "notes.txt", "not a value");
        std::fs::write(dir.path().join("stray"), "a file, not a tag").unwrap();
        let tags = read_meta_dir(dir.path()).unwrap();
        let subjects: Vec<String> = (0..11).map(|n| format!("s{n}")).collect();
        assert_eq!(
            tags,
            vec![
                ("subject".to_string(), subjects),
                (
                    "title".to_string(),
                    vec!["Zoë's images\n(part 2)".to_string()]
                ),
            ]
        );
        let missing = read_meta_dir(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
