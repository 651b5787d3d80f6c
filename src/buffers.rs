//! Image-sized buffers kept for the next image instead of freed.
//!
//! `main` tells glibc to map every allocation over 64 KiB on its own and to
//! unmap it when freed, so freed image buffers never strand in an arena and
//! RSS stays flat. The price was paid per image, twice (the download and the
//! tagged file): an `mmap`, a `munmap` and a page fault for each 4 KiB page
//! of a ~100 KB buffer. A few buffers kept warm here are reused instead; the
//! pool is bounded (count and bytes), so memory stays flat all the same.

use bytes::Bytes;
use std::sync::Mutex;

/// The most bytes of capacity the pool keeps in all.
const MAX_KEPT_BYTES: usize = 16 << 20;
/// Larger buffers (panoramas) are freed, not kept.
const MAX_KEPT_CAPACITY: usize = 1 << 20;

/// Kept buffers and the sum of their capacities.
struct Pool {
    kept: Mutex<(Vec<Vec<u8>>, usize)>,
}

/// The process's pool: every worker takes from and gives to it.
static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Pool {
        Pool {
            kept: Mutex::new((Vec::new(), 0)),
        }
    }

    fn take(&self, capacity: usize) -> Vec<u8> {
        let kept = self.kept.lock().ok().and_then(|mut kept| {
            let buf = kept.0.pop()?;
            kept.1 -= buf.capacity();
            Some(buf)
        });
        match kept {
            Some(mut buf) => {
                buf.reserve(capacity);
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    fn give(&self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity == 0 || capacity > MAX_KEPT_CAPACITY {
            return;
        }
        buf.clear();
        if let Ok(mut kept) = self.kept.lock()
            && kept.1 + capacity <= MAX_KEPT_BYTES
        {
            kept.1 += capacity;
            kept.0.push(buf);
        }
    }
}

/// An empty buffer with room for at least `capacity` bytes: a kept one
/// when there is one.
pub fn take(capacity: usize) -> Vec<u8> {
    POOL.take(capacity)
}

/// Gives `buf` back for a later [`take`]; freed if the pool is full or
/// the buffer is too large to keep.
pub fn give(buf: Vec<u8>) {
    POOL.give(buf);
}

/// Gives back the buffer under `bytes` when nothing else shares it (a
/// download, once tagged); otherwise just drops this handle.
pub fn give_bytes(bytes: Bytes) {
    if let Ok(unique) = bytes.try_into_mut() {
        give(Vec::from(unique));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_and_large_ones_are_not_kept() {
        let pool = Pool::new();
        let mut buf = pool.take(100_000);
        buf.extend_from_slice(&[7; 1000]);
        let at = buf.as_ptr();
        pool.give(buf);
        let again = pool.take(50_000);
        assert!(again.is_empty());
        assert!(again.capacity() >= 100_000);
        assert_eq!(again.as_ptr(), at, "the kept buffer is reused");
        pool.give(Vec::with_capacity(MAX_KEPT_CAPACITY + 1));
        for _ in 0..(MAX_KEPT_BYTES / 100_000 + 10) {
            pool.give(Vec::with_capacity(100_000));
        }
        let kept = pool.kept.lock().unwrap();
        assert!(kept.0.iter().all(|b| b.capacity() <= MAX_KEPT_CAPACITY));
        assert_eq!(kept.1, kept.0.iter().map(Vec::capacity).sum::<usize>());
        assert!(kept.1 <= MAX_KEPT_BYTES, "the pool stays within its bytes");
    }

    #[test]
    fn only_an_unshared_download_goes_back() {
        let mut body = Vec::with_capacity(80_000);
        body.extend_from_slice(&[1; 70_000]);
        let bytes = Bytes::from(body);
        let other = bytes.clone();
        assert!(other.clone().try_into_mut().is_err(), "shared: kept as is");
        drop(bytes);
        let unique = other
            .try_into_mut()
            .expect("the last handle owns the buffer");
        assert!(Vec::from(unique).capacity() >= 70_000);
    }
}
