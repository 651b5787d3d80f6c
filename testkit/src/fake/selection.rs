//! Setting up the ways a job chooses images: organizations, sequences that
//! span creators, whether `/images` applies its filters, the one-page cap
//! of bbox searches, and the per-route counts a test checks them with.

use super::*;
use std::fmt;
use std::str::FromStr;

/// What `/images` does with its documented filters (`bbox`,
/// `start_captured_at`, `end_captured_at`, `is_pano`, `sequence_ids`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FilterMode {
    /// The server applies every filter.
    #[default]
    Honour,
    /// The server parses the filters (a malformed one is still a 400 code
    /// 100) and carries them in `next`, but applies none of them: only
    /// `creator_username` and `organization_id` choose images, as the real
    /// API may silently ignore an undocumented combination.
    Ignore,
}

impl FilterMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterMode::Honour => "honour",
            FilterMode::Ignore => "ignore",
        }
    }
}

impl fmt::Display for FilterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FilterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "honour" | "honor" => Ok(FilterMode::Honour),
            "ignore" => Ok(FilterMode::Ignore),
            _ => Err(format!(
                "unknown filter mode {s:?}: expected honour or ignore"
            )),
        }
    }
}

impl FakeMapillary {
    /// Makes `username` (created if new, with no images) a member of the
    /// organization `org_id` (created if new). `GET /images?organization_id=`
    /// lists the members in the order they joined; a user may be in several
    /// organizations; joining twice changes nothing.
    pub fn add_user_to_org(&self, username: &str, org_id: &str) {
        let mut s = self.shared.lock();
        user_mut(&mut s, username);
        let members = s.orgs.entry(org_id.to_string()).or_default();
        if !members.iter().any(|m| m == username) {
            members.push(username.to_string());
        }
    }

    /// Appends to each `(username, count)` of `parts` (users created if new)
    /// `count` new generated images, all in the sequence `sequence_id`; so one
    /// sequence can span creators. They show in `images(username)`, in
    /// `GET /image_ids?sequence_id=` (capture order) and in
    /// `GET /images?sequence_ids=`. The same call always gives the same images.
    pub fn add_sequence(&self, sequence_id: &str, parts: &[(&str, u64)]) {
        let mut s = self.shared.lock();
        for (k, &(username, count)) in parts.iter().enumerate() {
            let id_base = s.next_id;
            s.next_id += count + 1000;
            let seed = data::mix(data::hash_str(sequence_id) ^ data::hash_str(username) ^ k as u64);
            let user = user_mut(&mut s, username);
            user.entries.push(Entry::Block(Block {
                id_base,
                count,
                seed,
                sequence: Some(sequence_id.to_string()),
            }));
            user.len += count as usize;
        }
    }

    /// Whether `/images` applies its filters from now on.
    pub fn set_filter_mode(&self, mode: FilterMode) {
        self.shared.lock().filters = mode;
    }

    /// When on, a `/images` request with a `bbox` gets its first page (at most
    /// `limit` images) and no `next`, however many images remain.
    pub fn set_cap_bbox_searches(&self, on: bool) {
        self.shared.lock().cap_bbox = on;
    }

    /// The `limit` of every `/images` request since the start (or
    /// `clear_log`), in arrival order, whatever the outcome: as asked, not
    /// clamped; `MAX_LIMIT` when absent; an unparseable one is left out.
    pub fn images_limits(&self) -> Vec<usize> {
        self.shared.lock().images_limits.clone()
    }

    /// API requests to exactly `path` (e.g. `"/images"`, `"/image_ids"`, `"/"`
    /// for `?ids=` batches) since the start (or `clear_log`), whatever their
    /// outcome (faults and resets included).
    pub fn api_requests_to(&self, path: &str) -> usize {
        self.shared.lock().api_paths.get(path).copied().unwrap_or(0)
    }
}
