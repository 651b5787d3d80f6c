//! Reading many archive files at once and checking each, for `verify`:
//! on disk each file is read on one of `threads` threads; from a bucket,
//! [`BUCKET_BATCH`] objects are fetched at once and then checked on every
//! core. The caller's check sees the same [`Found`] either way.

use super::files::{Archive, Place};
use std::io;
use std::path::Path;
use std::sync::Arc;

/// What reading one archive file found.
pub enum Found<'a> {
    /// The whole file.
    Bytes(&'a [u8]),
    /// Nothing there: "no such file", or "no such object".
    Missing(&'static str),
    /// A directory (or another non-file) where the file should be; the
    /// text says which.
    NotAFile(&'static str),
    /// An error other than "not found" (EIO, EACCES, a bucket that does not
    /// answer): it proves nothing about the file either way.
    Unreadable(String),
}

/// Objects fetched at once from a bucket: bounds memory (a batch is at
/// most this many images) while requests overlap and every core decodes.
const BUCKET_BATCH: usize = 16;

/// Runs `check` over `rows` on up to `threads` threads, results in order.
pub fn in_parallel<T: Sync, R: Send>(
    rows: &[T],
    threads: usize,
    check: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let chunk = rows.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&check).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

impl Archive {
    /// Reads the file of each of `items` (at `path_of(item)`) and passes
    /// what it found to `check`, on up to `threads` threads. Returns each
    /// item with its check, in order.
    pub async fn check_each<T, R, F>(
        &self,
        items: Vec<T>,
        threads: usize,
        path_of: fn(&T) -> &Path,
        check: F,
    ) -> Result<Vec<(T, R)>, tokio::task::JoinError>
    where
        T: Send + Sync + 'static,
        R: Send + 'static,
        F: Fn(&T, Found<'_>) -> R + Send + Sync + 'static,
    {
        let check = Arc::new(check);
        let Place::Bucket(bucket) = &self.place else {
            return tokio::task::spawn_blocking(move || {
                let checks = in_parallel(&items, threads, |item| {
                    read_local(path_of(item), |found| check(item, found))
                });
                items.into_iter().zip(checks).collect()
            })
            .await;
        };
        let mut checked = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let batch: Vec<T> = items.by_ref().take(BUCKET_BATCH).collect();
            let fetched =
                futures_util::future::join_all(batch.iter().map(|item| bucket.get(path_of(item))))
                    .await;
            let check = check.clone();
            let checks = tokio::task::spawn_blocking(move || {
                let pairs: Vec<_> = batch.into_iter().zip(fetched).collect();
                let checks = in_parallel(&pairs, threads, |(item, fetched)| match fetched {
                    Ok(Some(data)) => check(item, Found::Bytes(data)),
                    Ok(None) => check(item, Found::Missing("no such object")),
                    Err(e) => check(item, Found::Unreadable(e.to_string())),
                });
                pairs
                    .into_iter()
                    .map(|(item, _)| item)
                    .zip(checks)
                    .collect::<Vec<_>>()
            })
            .await?;
            checked.extend(checks);
        }
        Ok(checked)
    }
}

/// A file on disk as [`Found`]. "Not found" is missing; any other error is
/// unreadable, never corrupt: the file may be whole.
fn read_local<R>(path: &Path, check: impl FnOnce(Found<'_>) -> R) -> R {
    let not_there = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
        )
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return check(Found::NotAFile(
                "a directory is where the file should be: left as it is",
            ));
        }
        Ok(meta) if !meta.is_file() => {
            return check(Found::NotAFile("not a regular file: left as it is"));
        }
        Ok(_) => {}
        Err(e) if not_there(&e) => return check(Found::Missing("no such file")),
        Err(e) => return check(Found::Unreadable(e.to_string())),
    }
    match std::fs::read(path) {
        Ok(data) => check(Found::Bytes(&data)),
        Err(e) if not_there(&e) => check(Found::Missing("no such file")),
        Err(e) => check(Found::Unreadable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn kind(found: Found<'_>) -> String {
        match found {
            Found::Bytes(data) => format!("bytes {}", data.len()),
            Found::Missing(detail) => format!("missing: {detail}"),
            Found::NotAFile(detail) => format!("not a file: {detail}"),
            Found::Unreadable(error) => format!("unreadable: {error}"),
        }
    }

    /// `verify` repairs only what is proven missing or corrupt: a directory
    /// in a file's place must come back as "not a file", never as an error
    /// that could be taken for damage, and results keep the rows' order.
    #[tokio::test]
    async fn a_file_a_directory_and_nothing_are_told_apart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("1.jpg");
        std::fs::write(&file, b"12345").unwrap();
        let folder = dir.path().join("2.jpg");
        std::fs::create_dir(&folder).unwrap();
        let gone = dir.path().join("3.jpg");
        let archive = Archive::disk(dir.path(), 0);
        let items: Vec<PathBuf> = vec![file, folder, gone];
        let checked = archive
            .check_each(items.clone(), 2, |p| p.as_path(), |_, found| kind(found))
            .await
            .unwrap();
        let (paths, kinds): (Vec<PathBuf>, Vec<String>) = checked.into_iter().unzip();
        assert_eq!(paths, items);
        assert_eq!(kinds[0], "bytes 5");
        assert!(
            kinds[1].starts_with("not a file: a directory"),
            "{}",
            kinds[1]
        );
        assert_eq!(kinds[2], "missing: no such file");
    }
}
