//! The bounded hand-off from the dispatcher to the workers.
//!
//! It lives with its consumers, the workers, so that the dispatcher (which
//! also records failed attempts through [`super::fail_attempt`]) depends on
//! the workers and never the other way round.

use crate::store::ClaimedImage;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};

/// The longest [`WorkQueue::free_slots`] waits to gather slots for a claim:
/// a few images' worth of a worker's time, far less than the work queued.
const GATHER_WAIT: Duration = Duration::from_millis(20);

/// A claimed image on its way to a worker. Its slot frees a place in the
/// queue when the worker is done with it.
pub struct Work {
    /// The claimed image, its lease and URL.
    pub image: ClaimedImage,
    _slot: Slot,
}

/// One place in the queue, taken before an image is claimed so that at most
/// `2 × workers` images are claimed at any moment (invariant 7).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// Bounded hand-off from the dispatcher to the workers.
#[derive(Clone)]
pub struct WorkQueue {
    slots: Arc<Semaphore>,
    capacity: usize,
    tx: mpsc::UnboundedSender<Work>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Work>>>,
}

impl WorkQueue {
    /// A queue holding at most `2 × workers` claimed images (at least one).
    pub fn new(workers: usize) -> WorkQueue {
        let capacity = (workers * 2).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        WorkQueue {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }

    /// Waits for one free slot, then takes every other free one, `max` at
    /// most. `None` once the queue is closed. Cancel-safe.
    ///
    /// Fewer than an eighth of the slots free means the queue still holds
    /// work for three quarters of the workers: then it waits up to
    /// [`GATHER_WAIT`] for that eighth, so that a claim (a statement and a
    /// commit) serves several images instead of one per finished image.
    pub async fn free_slots(&self, max: usize) -> Option<Vec<Slot>> {
        let first = self.slots.clone().acquire_owned().await.ok()?;
        let mut slots = vec![Slot { _permit: first }];
        let max = max.min(self.capacity);
        self.take_free(&mut slots, max);
        let gather = (self.capacity / 8).min(max);
        if slots.len() < gather {
            let deadline = tokio::time::Instant::now() + GATHER_WAIT;
            while slots.len() < gather {
                tokio::select! {
                    permit = self.slots.clone().acquire_owned() => match permit {
                        Ok(p) => slots.push(Slot { _permit: p }),
                        Err(_) => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.take_free(&mut slots, max);
        }
        Some(slots)
    }

    /// Adds the slots free right now to `slots`, up to `max` in all.
    fn take_free(&self, slots: &mut Vec<Slot>, max: usize) {
        while slots.len() < max {
            match self.slots.clone().try_acquire_owned() {
                Ok(p) => slots.push(Slot { _permit: p }),
                Err(_) => break,
            }
        }
    }

    /// Hands `image` to the next free worker. `false` if no worker is left.
    pub fn send(&self, image: ClaimedImage, slot: Slot) -> bool {
        self.tx.send(Work { image, _slot: slot }).is_ok()
    }

    /// Waits for the next image. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&self) -> Option<Work> {
        self.rx.lock().await.recv().await
    }
}
