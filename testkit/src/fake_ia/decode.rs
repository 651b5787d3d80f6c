//! `x-archive-meta*` headers back to metadata, as IA-S3 reads them: `--` in
//! a name is `_`, `metaNN` orders repeated values, `uri(…)` values are
//! percent-decoded UTF-8.

use std::collections::BTreeMap;

/// The metadata the `x-archive-meta*` headers among `headers` (names any
/// case) give an item: key -> values in `NN` order (`x-archive-meta-<key>`
/// sorts first). A `uri(…)` value that is not percent-encoded UTF-8 is kept
/// as sent.
pub fn decode_meta_headers(headers: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut numbered: BTreeMap<String, Vec<(u32, usize, String)>> = BTreeMap::new();
    for (position, (name, value)) in headers.iter().enumerate() {
        let name = name.to_ascii_lowercase();
        let Some(rest) = name.strip_prefix("x-archive-meta") else {
            continue;
        };
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Some(key) = rest[digits.len()..].strip_prefix('-') else {
            continue;
        };
        if key.is_empty() {
            continue;
        }
        let order = digits.parse::<u32>().unwrap_or(0);
        numbered.entry(key.replace("--", "_")).or_default().push((
            order,
            position,
            decode_value(value),
        ));
    }
    numbered
        .into_iter()
        .map(|(key, mut values)| {
            values.sort();
            (key, values.into_iter().map(|(_, _, v)| v).collect())
        })
        .collect()
}

/// `uri(<percent-encoded>)` decoded; anything else as it is.
fn decode_value(value: &str) -> String {
    let Some(inner) = value.strip_prefix("uri(").and_then(|v| v.strip_suffix(')')) else {
        return value.to_string();
    };
    percent_decode(inner).unwrap_or_else(|| value.to_string())
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::decode_meta_headers;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn repeated_values_underscores_and_uri() {
        let meta = decode_meta_headers(&pairs(&[
            ("x-archive-meta02-subject", "b"),
            ("x-archive-meta01-subject", "a"),
            ("X-Archive-Meta-Mapillary--Downloader", "0.1.0"),
            ("x-archive-meta-title", "uri(Caf%C3%A9%20%E2%80%94%20x)"),
            ("x-archive-size-hint", "12"),
        ]));
        assert_eq!(meta["subject"], ["a", "b"]);
        assert_eq!(meta["mapillary_downloader"], ["0.1.0"]);
        assert_eq!(meta["title"], ["Café — x"]);
        assert_eq!(meta.len(), 3);
    }
}
