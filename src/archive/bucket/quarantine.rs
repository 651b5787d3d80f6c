//! Moving a doubted object aside instead of deleting it (SPEC Part 3,
//! "Repair never destroys"): a copy under the `quarantine/` prefix, then
//! the original goes.

use super::{Bucket, BucketError};
use object_store::ObjectStoreExt;
use std::path::{Path, PathBuf};

impl Bucket {
    /// The archive path under which quarantined objects keep their layout
    /// (`<root>/quarantine`, so the `quarantine/` prefix under the URL's).
    pub fn quarantine_root(&self) -> PathBuf {
        self.root.join(crate::archive::QUARANTINE_DIR)
    }

    /// Copies the object at `from` to the first free name of `to` (`to`,
    /// `to.1`, …), then deletes `from`: never replaces an object. Returns
    /// where it went. The caller fences `from` first.
    pub async fn move_aside(&self, from: &Path, to: &Path) -> Result<PathBuf, BucketError> {
        let from_key = self.key(from)?;
        for candidate in crate::archive::quarantine_candidates(to) {
            if self.head(&candidate).await?.is_some() {
                continue;
            }
            let key = self.key(&candidate)?;
            self.store
                .copy(&from_key, &key)
                .await
                .map_err(self.failed("COPY", from))?;
            self.delete(from).await?;
            return Ok(candidate);
        }
        Err(BucketError::Request {
            op: "COPY",
            path: to.to_path_buf(),
            message: "too many copies already in quarantine".into(),
        })
    }
}
