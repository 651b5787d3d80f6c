//! Deterministic tars: the same members in the same order give the same
//! bytes, on any machine, at any time. Each member is a regular file with
//! mode 0644, uid/gid 0, no user or group name, and the image's capture time
//! (whole seconds) as mtime, in a GNU header (what the Python tool's
//! `tar --owner=0 --group=0 --numeric-owner` writes). No directory entries.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// A member's mtime: the capture time in whole seconds (floored), or the
/// epoch for an image without one.
pub fn member_mtime(captured_at_ms: Option<i64>) -> u64 {
    captured_at_ms
        .map(|ms| ms.div_euclid(1000).max(0) as u64)
        .unwrap_or(0)
}

/// Appends one file to `builder` with the fixed header fields.
pub fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    mtime: u64,
    data: &[u8],
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    // `append_data` sets the name (a GNU long-name entry past 100 bytes)
    // and the checksum.
    builder.append_data(&mut header, name, data)
}

/// One member read back from a tar.
pub struct Member {
    /// Its path inside the tar.
    pub name: String,
    /// Its mtime, Unix seconds (the capture time).
    pub mtime: u64,
    /// Owner id (0: deterministic tars).
    pub uid: u64,
    /// Group id (0: deterministic tars).
    pub gid: u64,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Reads the tar at `path` member by member, calling `visit` with each
/// regular file. Stops at the end, or at the first error (a truncated or
/// corrupt tar), which it returns after the members read before it.
pub fn read_members(path: &Path, mut visit: impl FnMut(Member)) -> io::Result<()> {
    let file = File::open(path)?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path()?.to_string_lossy().into_owned();
        let header = entry.header();
        let (mtime, uid, gid) = (header.mtime()?, header.uid()?, header.gid()?);
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data)?;
        if data.len() as u64 != entry.size() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("member {name} is cut short"),
            ));
        }
        visit(Member {
            name,
            mtime,
            uid,
            gid,
            data,
        });
    }
    Ok(())
}

/// The bytes of one member, or `None` if the tar does not hold it.
pub fn read_member(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let file = File::open(path)?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_string_lossy() == name {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data)?;
            return Ok(Some(data));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(members: &[(&str, u64, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, mtime, data) in members {
            append(&mut builder, name, *mtime, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn the_same_members_give_the_same_bytes_and_read_back() {
        let long = format!("2024-01-02/{}/{}.webp", "s".repeat(80), "9".repeat(30));
        let members: [(&str, u64, &[u8]); 3] = [
            ("2024-01-02/seqA/1.webp", 1_704_153_600, b"one"),
            ("2024-01-02/seqA/2.webp", 1_704_153_601, b""),
            (&long, 1_704_153_602, b"three"),
        ];
        let first = build(&members);
        assert_eq!(first, build(&members), "deterministic");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        std::fs::write(&path, &first).unwrap();
        let mut seen = Vec::new();
        read_members(&path, |m| {
            seen.push((m.name, m.mtime, m.uid, m.gid, m.data))
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].0, long, "long names survive");
        assert_eq!(
            (seen[0].1, seen[0].2, seen[0].3, seen[0].4.as_slice()),
            (1_704_153_600, 0, 0, &b"one"[..])
        );
        assert_eq!(
            read_member(&path, "2024-01-02/seqA/2.webp").unwrap(),
            Some(vec![])
        );
        assert_eq!(read_member(&path, "nope").unwrap(), None);
        // Cut in the middle of the second member's header: an error after
        // the first member.
        std::fs::write(&path, &first[..700]).unwrap();
        let mut names = Vec::new();
        assert!(read_members(&path, |m| names.push(m.name)).is_err());
        assert_eq!(names, vec!["2024-01-02/seqA/1.webp".to_string()]);
    }

    #[test]
    fn mtimes_are_whole_capture_seconds() {
        assert_eq!(member_mtime(Some(1_600_000_000_999)), 1_600_000_000);
        assert_eq!(member_mtime(None), 0);
        assert_eq!(member_mtime(Some(-5)), 0);
    }
}
