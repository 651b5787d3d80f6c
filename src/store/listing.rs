//! Lists that page: jobs by id, the most recently updated jobs with totals
//! over all of them, and one job's images by image id (what
//! `GET /jobs/{id}/images` and the `failures` command show).
//!
//! Every page is keyset-paged (`after` the last key seen, never OFFSET) and
//! fetched as `limit + 1` rows, so [`Page::more`] says exactly whether
//! another page exists. Each image page is one seek (see
//! `migrations/*/…_image_listings.sql` for which index serves which state),
//! so paging a million-image job costs O(n) in total.
//!
//! Declared in [`super::interface::Listings`]; this file holds what both
//! backends share (types, row mapping, the image page's statement), and
//! `sqlite/listing.rs` and `postgres/listing.rs` the rest.

use super::rebase::old_root_of;
use super::{FailReason, ImageState, StoreError, StoreResult, parse_meta, rfc3339_from_ms, to_u64};
use serde::Serialize;
use sqlx::FromRow;

/// One page of a list, and whether more follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// At most `limit` items, in key order.
    pub items: Vec<T>,
    /// Another page follows (asked for `limit + 1` rows and got them).
    pub more: bool,
}

impl<T> Page<T> {
    /// The page from `limit + 1` fetched items: the extra one, if there,
    /// only says that more follow.
    pub(super) fn from_overfetch(mut items: Vec<T>, limit: u32) -> Page<T> {
        let limit = limit as usize;
        let more = items.len() > limit;
        items.truncate(limit);
        Page { items, more }
    }
}

/// Which of a job's images to list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageFilter {
    /// `None`: every state.
    pub state: Option<ImageState>,
    /// Only failed images failed for this reason; implies `state = failed`.
    pub reason: Option<FailReason>,
}

impl ImageFilter {
    /// The state the filter selects (a reason selects failed images), or
    /// an error when a reason is paired with another state.
    pub(super) fn effective_state(&self) -> StoreResult<Option<ImageState>> {
        match (self.state, self.reason) {
            (None, Some(_)) | (Some(ImageState::Failed), Some(_)) => Ok(Some(ImageState::Failed)),
            (Some(state), Some(reason)) => Err(StoreError::Invalid(format!(
                "a fail reason ({reason}) selects failed images, not {state} ones"
            ))),
            (state, None) => Ok(state),
        }
    }
}

/// One image of a job as lists show it: what it is, where it stands, why it
/// failed and where its file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ListedImage {
    /// The job listed.
    pub job_id: i64,
    /// The Mapillary image id (the page's key).
    pub image_id: String,
    /// Where the image stands.
    pub state: ImageState,
    /// Set while `state` is `failed`: `deleted` (gone from Mapillary) or
    /// `error` (attempts used up, or a fault no retry fixes).
    pub fail_reason: Option<FailReason>,
    /// The last failure's message (never a token: errors are scrubbed
    /// before they are stored, and again here).
    pub last_error: Option<String>,
    /// Attempts burnt so far.
    pub attempts: u64,
    /// RFC 3339 UTC.
    pub captured_at: Option<String>,
    /// Its Mapillary sequence id.
    pub sequence: Option<String>,
    /// Done images only: the file relative to the archive root
    /// (`<collection>/<date>/<sequence>/<id>.jpg`), or
    /// `<collection>/<tar>#<member>` once packed into a tar.
    pub path: Option<String>,
}

/// Sums over every job, for `/status`: O(jobs) counters, never O(images).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTotals {
    /// How many jobs exist.
    pub jobs: u64,
    /// Images waiting, over every job.
    pub pending: u64,
    /// Images being downloaded now, over every job.
    pub in_progress: u64,
    /// Images archived, over every job.
    pub done: u64,
    /// Images failed for good, over every job.
    pub failed: u64,
    /// Images found deleted on Mapillary, over every job.
    pub deleted: u64,
    /// Bytes archived, over every job.
    pub bytes_done: u64,
    /// Pending and in-flight images of the jobs the engine works on
    /// (queued, enumerating, downloading): what an ETA waits for.
    pub remaining: u64,
}

/// [`JobTotals`] as the database sums them.
#[derive(FromRow)]
pub(super) struct TotalsRow {
    jobs: i64,
    pending: i64,
    in_progress: i64,
    done: i64,
    failed: i64,
    deleted: i64,
    bytes_done: i64,
    remaining: i64,
}

impl From<TotalsRow> for JobTotals {
    fn from(r: TotalsRow) -> Self {
        JobTotals {
            jobs: to_u64(r.jobs),
            pending: to_u64(r.pending),
            in_progress: to_u64(r.in_progress),
            done: to_u64(r.done),
            failed: to_u64(r.failed),
            deleted: to_u64(r.deleted),
            bytes_done: to_u64(r.bytes_done),
            remaining: to_u64(r.remaining),
        }
    }
}

/// The columns an image listing reads, on either database.
#[derive(FromRow)]
pub(super) struct ListedRow {
    rowid: i64,
    job_id: i64,
    image_id: String,
    state: String,
    fail_reason: Option<String>,
    last_error: Option<String>,
    attempts: i64,
    captured_at: Option<i64>,
    meta: String,
    path: Option<String>,
    /// The tar's name and collection while its packing holds the file
    /// (`written` or `cleaned`).
    tar_name: Option<String>,
    tar_collection: Option<String>,
}

/// The select list and join of an image listing (`i` the image, `p` its
/// packing), in either dialect.
const LISTED_COLUMNS: &str = "i.rowid, i.job_id, i.image_id, i.state, i.fail_reason, \
     i.last_error, i.attempts, i.captured_at, i.meta, i.path, \
     CASE WHEN p.state IN ('written', 'cleaned') THEN p.tar_name END AS tar_name, \
     CASE WHEN p.state IN ('written', 'cleaned') THEN p.collection END AS tar_collection";

impl ListedRow {
    /// The image as lists show it; `root` is the archive root the paths
    /// were stored under.
    fn into_listed(self, root: Option<&str>) -> StoreResult<ListedImage> {
        let row_id = self.rowid;
        let invalid = super::corrupt_row("image row", row_id);
        let state = self.state.parse::<ImageState>().map_err(invalid)?;
        let fail_reason = super::parse_optional::<FailReason>(self.fail_reason).map_err(invalid)?;
        let meta = parse_meta(row_id, &self.meta)?;
        let path = match (state, self.path) {
            (ImageState::Done, Some(path)) => Some(listed_path(
                root,
                &path,
                self.tar_name.as_deref().zip(self.tar_collection.as_deref()),
            )),
            _ => None,
        };
        Ok(ListedImage {
            job_id: self.job_id,
            image_id: self.image_id,
            state,
            fail_reason,
            last_error: self.last_error.as_deref().map(scrub_secrets),
            attempts: to_u64(self.attempts),
            captured_at: self.captured_at.map(rfc3339_from_ms),
            sequence: meta.sequence.filter(|s| !s.is_empty()),
            path,
        })
    }
}

/// A stored path as lists show it: relative to the archive root, and
/// `<collection>/<tar>#<member>` when `tar` (its name and collection) holds
/// the file. A path under an older root (a database not yet rebased, read
/// by the `failures` command) is cut at its `archive/` folder.
fn listed_path(root: Option<&str>, path: &str, tar: Option<(&str, &str)>) -> String {
    let under = |root: &str| path.strip_prefix(root).and_then(|p| p.strip_prefix('/'));
    let relative = root
        .and_then(under)
        .or_else(|| old_root_of(path).and_then(under))
        .unwrap_or(path);
    let Some((tar_name, collection)) = tar else {
        return relative.to_string();
    };
    match relative
        .strip_prefix(collection)
        .and_then(|member| member.strip_prefix('/'))
    {
        Some(member) => format!("{collection}/{tar_name}#{member}"),
        None => relative.to_string(),
    }
}

/// The conditions of an image listing after `i.job_id = …`, in either
/// dialect: state and reason inline (enum names, so a partial index
/// matches them), then the keyset bound `after` (a placeholder, compared
/// only when set, so both variants bind the same parameters).
fn listing_filter(
    state: Option<ImageState>,
    reason: Option<FailReason>,
    after: bool,
    after_placeholder: &str,
) -> String {
    let mut sql = String::new();
    if let Some(state) = state {
        sql.push_str(&format!(" AND i.state = '{}'", state.as_str()));
    }
    if let Some(reason) = reason {
        sql.push_str(&format!(" AND i.fail_reason = '{}'", reason.as_str()));
    }
    if after {
        sql.push_str(&format!(" AND i.image_id > {after_placeholder}"));
    } else {
        sql.push_str(&format!(" AND {after_placeholder} IS NULL"));
    }
    sql
}

/// Redacts what looks like a credential from a stored message: the value of
/// an `access_token` parameter, an `OAuth`/`Bearer` header value, and
/// Mapillary tokens (`MLY|…`). The client already redacts its token from
/// every error it makes; this is the second line for anything else.
pub fn scrub_secrets(text: &str) -> String {
    const REDACTED: &str = "[redacted]";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let lower = rest.to_ascii_lowercase();
        let found = ["access_token=", "oauth ", "bearer ", "mly|"]
            .iter()
            .filter_map(|mark| lower.find(mark).map(|at| (at, mark.len())))
            .min();
        let Some((at, len)) = found else {
            out.push_str(rest);
            break;
        };
        // `MLY|` is part of the token itself; the others introduce it.
        let keep = if lower[at..].starts_with("mly|") {
            0
        } else {
            len
        };
        out.push_str(&rest[..at + keep]);
        out.push_str(REDACTED);
        let value = &rest[at + len..];
        let end = value
            .find(|c: char| c.is_whitespace() || "&\"'#,;)>".contains(c))
            .unwrap_or(value.len());
        rest = &value[end..];
    }
    out
}

/// The statement of one page of a job's images, in either dialect: `$1`
/// the job, `$2` the last image id seen (or NULL), `$3` the page's
/// `limit + 1`. `hint` goes after the table (SQLite's `INDEXED BY`; empty
/// on PostgreSQL).
pub(super) fn images_page_sql(
    hint: &str,
    state: Option<ImageState>,
    reason: Option<FailReason>,
    after: bool,
) -> String {
    format!(
        "SELECT {LISTED_COLUMNS} FROM images i{hint} LEFT JOIN packings p ON p.id = i.packing_id \
         WHERE i.job_id = $1 {} ORDER BY i.image_id LIMIT $3",
        listing_filter(state, reason, after, "$2"),
    )
}

/// The page of listed images from `limit + 1` fetched rows; `root` is the
/// archive root the paths were stored under (`store_facts`).
pub(super) fn images_page(
    rows: Vec<ListedRow>,
    root: Option<&str>,
    limit: u32,
) -> StoreResult<Page<ListedImage>> {
    let images = rows
        .into_iter()
        .map(|row| row.into_listed(root))
        .collect::<StoreResult<_>>()?;
    Ok(Page::from_overfetch(images, limit))
}

#[cfg(test)]
mod tests {
    use super::{listed_path, scrub_secrets};

    #[test]
    fn paths_are_relative_to_the_root_and_name_the_tar_once_packed() {
        let root = Some("/data/archive");
        let path = "/data/archive/mapillary-a-2048/2024-01-02/s1/7.jpg";
        assert_eq!(
            listed_path(root, path, None),
            "mapillary-a-2048/2024-01-02/s1/7.jpg"
        );
        assert_eq!(
            listed_path(root, path, Some(("2024-01-02.tar", "mapillary-a-2048"))),
            "mapillary-a-2048/2024-01-02.tar#2024-01-02/s1/7.jpg"
        );
        // Not rebased yet: cut at its own archive folder.
        assert_eq!(
            listed_path(root, "/old/archive/mapillary-a-256/x/1.jpg", None),
            "mapillary-a-256/x/1.jpg"
        );
        assert_eq!(
            listed_path(Some("s3://b/p"), "s3://b/p/mapillary-a-256/x/1.jpg", None),
            "mapillary-a-256/x/1.jpg"
        );
        assert_eq!(
            listed_path(None, "/elsewhere/1.jpg", None),
            "/elsewhere/1.jpg"
        );
    }

    #[test]
    fn credentials_in_messages_are_redacted() {
        assert_eq!(
            scrub_secrets("GET https://h/x?a=1&access_token=MLY|123|abc&b=2 failed"),
            "GET https://h/x?a=1&access_token=[redacted]&b=2 failed"
        );
        assert_eq!(
            scrub_secrets("token MLY|4|zz rejected; Authorization: OAuth sekrit"),
            "token [redacted] rejected; Authorization: OAuth [redacted]"
        );
        assert_eq!(scrub_secrets("HTTP 500: oops"), "HTTP 500: oops");
        assert_eq!(scrub_secrets(""), "");
    }
}
