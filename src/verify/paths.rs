//! Stored paths seen from this `verify`: the database is never rewritten
//! (a daemon may be running on it, perhaps in a container where the archive
//! has another path), so each stored path is mapped onto this run's archive
//! root in memory.

use std::path::Path;

/// Maps stored paths onto this run's archive root.
#[derive(Debug, Clone)]
pub struct PathMap {
    /// This run's archive root, without a trailing `/`.
    root: String,
    /// The root a daemon recorded when it last rebased the paths.
    recorded: Option<String>,
}

const BUCKET_SCHEME: &str = "s3://";

impl PathMap {
    /// Maps paths stored under the `recorded` root onto `archive_dir`, this run's root.
    pub fn new(archive_dir: &Path, recorded: Option<String>) -> PathMap {
        PathMap {
            root: archive_dir
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string(),
            recorded: recorded.map(|r| r.trim_end_matches('/').to_string()),
        }
    }

    /// Where the file a row names is, seen from here: the part below the
    /// recorded root (or, for rows older than it, below the last
    /// `archive/mapillary-…`) put under this run's root. Paths in a bucket,
    /// and paths in no archive layout, stay as they are (the fence then
    /// refuses to touch the latter).
    pub fn local(&self, stored: &str) -> String {
        if under(stored, &self.root)
            || self.root.starts_with(BUCKET_SCHEME)
            || stored.starts_with(BUCKET_SCHEME)
        {
            return stored.to_string();
        }
        let old = match &self.recorded {
            Some(recorded) if under(stored, recorded) => Some(recorded.as_str()),
            _ => old_root_of(stored),
        };
        match old {
            Some(old) => format!("{}{}", self.root, &stored[old.len()..]),
            None => stored.to_string(),
        }
    }
}

fn under(path: &str, root: &str) -> bool {
    path.strip_prefix(root)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The archive directory a stored path was written under: everything
/// before its last `archive/mapillary-…` (as the store's rebase finds it).
fn old_root_of(path: &str) -> Option<&str> {
    const MARK: &str = "archive/mapillary-";
    let at = path.rfind(MARK)?;
    if at > 0 && !path[..at].ends_with('/') {
        return None;
    }
    Some(&path[..at + "archive".len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_paths_map_onto_this_runs_root_without_losing_a_climb() {
        let map = PathMap::new(
            Path::new("/host/data/archive/"),
            Some("/data/archive".into()),
        );
        assert_eq!(
            map.local("/data/archive/mapillary-a-256/2024-01-02/1.jpg"),
            "/host/data/archive/mapillary-a-256/2024-01-02/1.jpg"
        );
        assert_eq!(
            map.local("/host/data/archive/mapillary-a-256/x/1.jpg"),
            "/host/data/archive/mapillary-a-256/x/1.jpg"
        );
        assert_eq!(
            map.local("./old/archive/mapillary-a-256/x/1.jpg"),
            "/host/data/archive/mapillary-a-256/x/1.jpg"
        );
        // A climb survives the mapping, for the fence to refuse.
        assert_eq!(
            map.local("/data/archive/mapillary-a-256/x/../../../etc/passwd"),
            "/host/data/archive/mapillary-a-256/x/../../../etc/passwd"
        );
        assert_eq!(map.local("/srv/other/x.jpg"), "/srv/other/x.jpg");
        let bucket = PathMap::new(Path::new("s3://b/p"), None);
        assert_eq!(
            bucket.local("s3://b/p/mapillary-a-256/1.jpg"),
            "s3://b/p/mapillary-a-256/1.jpg"
        );
    }
}
