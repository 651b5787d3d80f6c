//! What daemons sharing one queue know of each other: who is alive (a
//! heartbeat row each, for `/status`, the page and `/metrics`), and the
//! Graph API budget they share. On SQLite one daemon runs: it keeps its
//! heartbeat row too (one behaviour), and its own limiter is the budget.

use super::{Store, StoreResult, on_postgres};
use std::time::Duration;

/// A daemon as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonInfo {
    /// Its lease owner id (pid + random), unique per process.
    pub id: String,
    pub host: String,
    pub workers: u32,
}

/// A daemon whose heartbeat is recent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDaemon {
    pub id: String,
    pub host: String,
    pub workers: u32,
    /// Unix ms.
    pub started_at: i64,
    /// Since its last heartbeat, by the queue's clock.
    pub heartbeat_age: Duration,
}

/// What the shared API budget says about the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiSlot {
    /// Call now.
    Now,
    /// The slot is taken: call after this wait.
    After(Duration),
    /// A rate-limit hold is in force: ask again after this wait.
    Held(Duration),
}

impl ApiSlot {
    /// From `mld_api_slot`'s answer: 0, +wait or −hold (ms).
    pub(super) fn from_ms(ms: i64) -> ApiSlot {
        match ms {
            0 => ApiSlot::Now,
            ms if ms > 0 => ApiSlot::After(Duration::from_millis(ms.unsigned_abs())),
            ms => ApiSlot::Held(Duration::from_millis(ms.unsigned_abs())),
        }
    }
}

pub(super) fn live_from_fields(
    id: String,
    host: String,
    workers: i64,
    started_at: i64,
    age_ms: i64,
) -> LiveDaemon {
    LiveDaemon {
        id,
        host,
        workers: u32::try_from(workers).unwrap_or(0),
        started_at,
        heartbeat_age: Duration::from_millis(age_ms.max(0).unsigned_abs()),
    }
}

impl Store {
    /// Records that `daemon` is alive (its row is made at the first beat).
    pub async fn heartbeat(&self, daemon: &DaemonInfo, now_ms: i64) -> StoreResult<()> {
        on_postgres!(self.heartbeat(daemon, now_ms));
        sqlx::query(
            "INSERT INTO daemons (id, host, workers, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = ?4, workers = ?3",
        )
        .bind(&daemon.id)
        .bind(&daemon.host)
        .bind(i64::from(daemon.workers))
        .bind(now_ms)
        .execute(self.writer()?)
        .await?;
        Ok(())
    }

    /// Daemons whose last heartbeat is at most `within` old, by id. (A
    /// crashed daemon's row stays, silent, and is no longer listed.)
    pub async fn live_daemons(
        &self,
        within: Duration,
        now_ms: i64,
    ) -> StoreResult<Vec<LiveDaemon>> {
        on_postgres!(self.live_daemons(within, now_ms));
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, host, workers, started_at, ?1 - heartbeat_at FROM daemons \
             WHERE heartbeat_at >= ?1 - ?2 ORDER BY id",
        )
        .bind(now_ms)
        .bind(super::job_tasks::millis(within))
        .fetch_all(self.reader()?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, host, workers, started, age)| {
                live_from_fields(id, host, workers, started, age)
            })
            .collect())
    }

    /// A daemon stopping: its row goes (a crashed one's ages out).
    pub async fn forget_daemon(&self, id: &str) -> StoreResult<()> {
        on_postgres!(self.forget_daemon(id));
        sqlx::query("DELETE FROM daemons WHERE id = ?")
            .bind(id)
            .execute(self.writer()?)
            .await?;
        Ok(())
    }

    /// Whether API calls must also take a slot of a budget shared with
    /// other daemons ([`Store::take_api_slot`]).
    pub fn shares_api_budget(&self) -> bool {
        matches!(self.backend, super::Backend::Postgres(_))
    }

    /// Takes the next API call's slot of the cluster's budget: calls evenly
    /// spaced `interval` apart, up to `tolerance` ahead of the schedule (the
    /// burst). SQLite: the daemon's own limiter is the budget.
    pub async fn take_api_slot(
        &self,
        interval: Duration,
        tolerance: Duration,
    ) -> StoreResult<ApiSlot> {
        on_postgres!(self.take_api_slot(interval, tolerance));
        Ok(ApiSlot::Now)
    }

    /// Holds every daemon's API calls for `pause` (a rate limit one of them
    /// was told about). SQLite: the daemon's own limiter holds it.
    pub async fn hold_api_calls(&self, pause: Duration) -> StoreResult<()> {
        on_postgres!(self.hold_api_calls(pause));
        Ok(())
    }
}
