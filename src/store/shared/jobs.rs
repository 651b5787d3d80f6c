//! [`crate::store::interface::Jobs`] written once for both backends. The
//! statements name their dialect holes through `super::dialect` (the
//! backend's `dialect.rs`, resolved where the macro expands): the clock
//! (`now!`), a set of states (`in_list!`), the jobs view, row locks.
//! Every state change stays one conditional `UPDATE … RETURNING id`.

/// The `Jobs` methods, expanded inside a backend's `impl Jobs for …`.
macro_rules! shared_jobs {
    () => {
        $crate::store::shared::jobs::shared_job_submission!();
        $crate::store::shared::jobs::shared_job_reads!();
        $crate::store::shared::jobs::shared_job_changes!();
        $crate::store::shared::jobs::shared_job_lifecycle!();
    };
}
pub(in crate::store) use shared_jobs;

/// Submission and due re-syncs: read-then-write inside one transaction
/// ([`begin_write`](crate::store) takes SQLite's write lock at once; on
/// PostgreSQL an advisory lock on the job's identity and `FOR UPDATE` on
/// the rows read serialise racing daemons instead).
macro_rules! shared_job_submission {
    () => {
        async fn submit_job(
            &self,
            spec: &$crate::selection::JobSpec,
            now_ms: i64,
        ) -> $crate::store::StoreResult<$crate::store::Submitted> {
            use $crate::store::{JobState, StoreError, Submitted, jobs::resync_millis, sql};
            let key = spec.key();
            let mut tx = self.begin_write().await?;
            super::dialect::lock(&mut tx, $crate::store::shared::TxLock::Submission(&key)).await?;
            let existing: Option<(i64, String)> = sqlx::query_as(concat!(
                "SELECT id, state FROM jobs WHERE job_key = $1 AND state <> 'cancelled' \
                 ORDER BY id DESC LIMIT 1",
                super::dialect::for_update!()
            ))
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?;
            // `Some` when the submission sets an existing job's interval; and
            // the interval a new job starts with.
            let (resync_ms, new_job_resync_ms) = resync_millis(spec);
            let Some((id, state)) = existing else {
                let id =
                    insert_job(&mut tx, spec, &key, new_job_resync_ms, self.at(now_ms)).await?;
                tx.commit().await?;
                return Ok(Submitted::Created(self.job_after_write(id).await?));
            };
            let state = state.parse::<JobState>().map_err(StoreError::Invalid)?;
            if let Some(interval) = resync_ms {
                sqlx::query(sql::SET_RESYNC_EVERY)
                    .bind(interval)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            let finished = matches!(state, JobState::Done | JobState::Failed);
            if finished {
                restart_enumeration(&mut tx, id, spec, self.at(now_ms)).await?;
            }
            tx.commit().await?;
            let job = self.job_after_write(id).await?;
            Ok(if finished {
                Submitted::Resynced(job)
            } else {
                Submitted::Existing(job)
            })
        }

        async fn start_due_resyncs(&self, now_ms: i64) -> $crate::store::StoreResult<Vec<i64>> {
            use super::dialect::{for_update, now};
            let at = self.at(now_ms);
            let due: Vec<(i64, String, String, String, String)> = sqlx::query_as(concat!(
                "SELECT id, selection, quality, format, package FROM jobs \
                 WHERE state = 'done' AND next_sync_at <= ",
                now!("$1"),
                " ORDER BY id"
            ))
            .bind(at)
            .fetch_all(self.reader()?)
            .await?;
            let mut started = Vec::new();
            for (id, selection, quality, format, package) in due {
                let spec =
                    $crate::store::jobs::resync_spec(id, &selection, &quality, &format, &package)?;
                let mut tx = self.begin_write().await?;
                // Re-checked (and locked on PostgreSQL): of two daemons
                // re-syncing one job, the second finds it no longer done.
                let still_due: Option<i64> = sqlx::query_scalar(concat!(
                    "SELECT id FROM jobs WHERE id = $1 AND state = 'done' AND next_sync_at <= ",
                    now!("$2"),
                    for_update!()
                ))
                .bind(id)
                .bind(at)
                .fetch_optional(&mut *tx)
                .await?;
                if still_due.is_some() {
                    restart_enumeration(&mut tx, id, &spec, at).await?;
                    tx.commit().await?;
                    started.push(id);
                }
            }
            Ok(started)
        }
    };
}
pub(in crate::store) use shared_job_submission;

/// Reads of job rows, from the backend's jobs view.
macro_rules! shared_job_reads {
    () => {
        async fn find_job(
            &self,
            id: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
            use $crate::store::jobs::{JobRow, job_columns};
            let row: Option<JobRow> = sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM ",
                super::dialect::jobs_view!(),
                " WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(self.reader()?)
            .await?;
            row.map(JobRow::into_job).transpose()
        }

        async fn jobs_in_states(
            &self,
            states: &[$crate::store::JobState],
        ) -> $crate::store::StoreResult<Vec<$crate::store::Job>> {
            use $crate::store::jobs::{JobRow, job_columns};
            let rows: Vec<JobRow> = sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM ",
                super::dialect::jobs_view!(),
                " WHERE state ",
                super::dialect::in_list!("$1"),
                " ORDER BY id"
            ))
            .bind(super::dialect::states(states))
            .fetch_all(self.reader()?)
            .await?;
            rows.into_iter().map(JobRow::into_job).collect()
        }

        async fn jobs_paused_for(
            &self,
            reason: $crate::store::PauseReason,
        ) -> $crate::store::StoreResult<Vec<i64>> {
            Ok(sqlx::query_scalar($crate::store::sql::JOBS_PAUSED_FOR)
                .bind(reason.as_str())
                .fetch_all(self.reader()?)
                .await?)
        }
    };
}
pub(in crate::store) use shared_job_reads;

/// A job's error, note and page size: plain updates, no state decided.
macro_rules! shared_job_changes {
    () => {
        async fn set_job_error(
            &self,
            id: i64,
            last_error: Option<&str>,
            now_ms: i64,
        ) -> $crate::store::StoreResult<()> {
            let result = sqlx::query(concat!(
                "UPDATE jobs SET last_error = $1, updated_at = ",
                super::dialect::now!("$2"),
                " WHERE id = $3"
            ))
            .bind(last_error)
            .bind(self.at(now_ms))
            .bind(id)
            .execute(self.writer()?)
            .await?;
            if result.rows_affected() == 0 {
                return Err($crate::store::StoreError::NoSuchJob(id));
            }
            Ok(())
        }

        async fn set_job_note(
            &self,
            id: i64,
            note: Option<&str>,
            now_ms: i64,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query(concat!(
                "UPDATE jobs SET note = $1, updated_at = ",
                super::dialect::now!("$2"),
                " WHERE id = $3"
            ))
            .bind(note)
            .bind(self.at(now_ms))
            .bind(id)
            .execute(self.writer()?)
            .await?;
            Ok(())
        }

        async fn set_page_size(&self, id: i64, page_size: u32) -> $crate::store::StoreResult<()> {
            sqlx::query($crate::store::sql::SET_PAGE_SIZE)
                .bind(i64::from(page_size))
                .bind(id)
                .execute(self.writer()?)
                .await?;
            Ok(())
        }
    };
}
pub(in crate::store) use shared_job_changes;

/// State changes: each one conditional `UPDATE … WHERE state … RETURNING
/// id`, so of two racing callers one wins and the other sees `None`. The
/// time is read once (`FROM (SELECT now AS now_ms) t`) where a statement
/// writes it twice.
macro_rules! shared_job_lifecycle {
    () => {
        async fn skip_queued_job(
            &self,
            id: i64,
            note: &str,
            now_ms: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
            let mut tx = self.writer()?.begin().await?;
            let changed: Option<i64> = sqlx::query_scalar(concat!(
                "UPDATE jobs SET state = 'done', enumeration_complete = true, note = $1, \
                 next_sync_at = NULL, progress_at = t.now_ms, updated_at = t.now_ms \
                 FROM (SELECT ",
                super::dialect::now!("$2"),
                " AS now_ms) t WHERE id = $3 AND state = 'queued' RETURNING id"
            ))
            .bind(note)
            .bind(self.at(now_ms))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if changed.is_some() {
                sqlx::query("UPDATE job_parts SET done = true WHERE job_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            self.job_if_changed(changed).await
        }

        async fn transition_job(
            &self,
            id: i64,
            from: &[$crate::store::JobState],
            to: $crate::store::JobState,
            now_ms: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
            let changed: Option<i64> = sqlx::query_scalar(concat!(
                "UPDATE jobs SET state = $1, updated_at = ",
                super::dialect::now!("$2"),
                " WHERE id = $3 AND state ",
                super::dialect::in_list!("$4"),
                " RETURNING id"
            ))
            .bind(to.as_str())
            .bind(self.at(now_ms))
            .bind(id)
            .bind(super::dialect::states(from))
            .fetch_optional(self.writer()?)
            .await?;
            self.job_if_changed(changed).await
        }

        async fn pause_job(
            &self,
            id: i64,
            from: &[$crate::store::JobState],
            reason: $crate::store::PauseReason,
            message: Option<&str>,
            now_ms: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
            let changed: Option<i64> = sqlx::query_scalar(concat!(
                "UPDATE jobs SET state = 'paused', pause_reason = $1, \
                 last_error = coalesce($2, CASE WHEN stalled_at IS NULL THEN last_error END), \
                 stalled_at = NULL, updated_at = ",
                super::dialect::now!("$3"),
                " WHERE id = $4 AND state ",
                super::dialect::in_list!("$5"),
                " RETURNING id"
            ))
            .bind(reason.as_str())
            .bind(message)
            .bind(self.at(now_ms))
            .bind(id)
            .bind(super::dialect::states(from))
            .fetch_optional(self.writer()?)
            .await?;
            self.job_if_changed(changed).await
        }

        $crate::store::shared::jobs::shared_job_finish!();
    };
}
pub(in crate::store) use shared_job_lifecycle;

/// A job's end and its return from a pause.
macro_rules! shared_job_finish {
    () => {
        async fn finish_job_clearing(
            &self,
            id: i64,
            now_ms: i64,
            clear_error: bool,
            task: Option<&$crate::store::JobTask>,
        ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
            let mut tx = self.writer()?.begin().await?;
            super::dialect::lock(&mut tx, $crate::store::shared::TxLock::Job(id)).await?;
            if let Some(task) = task {
                super::task_lease::check(&mut tx, task).await?;
            }
            let changed: Option<i64> = sqlx::query_scalar(concat!(
                "UPDATE jobs SET state = 'done', stalled_at = NULL, updated_at = t.now_ms, \
                 last_error = CASE WHEN $3 OR stalled_at IS NOT NULL THEN NULL ELSE last_error END, \
                 next_sync_at = CASE WHEN resync_every_ms IS NULL THEN NULL \
                                     ELSE t.now_ms + resync_every_ms END \
                 FROM (SELECT ",
                super::dialect::now!("$1"),
                " AS now_ms) t \
                 WHERE id = $2 AND state IN ('enumerating', 'downloading') \
                   AND enumeration_complete AND ",
                super::dialect::drained!(),
                " RETURNING id"
            ))
            .bind(self.at(now_ms))
            .bind(id)
            .bind(clear_error)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            self.job_if_changed(changed).await
        }

        async fn reactivate_job(
            &self,
            id: i64,
            from: &[$crate::store::JobState],
            now_ms: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
            let changed: Option<i64> = sqlx::query_scalar(concat!(
                "UPDATE jobs SET state = CASE WHEN enumeration_complete \
                 THEN 'downloading' ELSE 'enumerating' END, last_error = NULL, pause_reason = NULL, \
                 stalled_at = NULL, progress_at = t.now_ms, updated_at = t.now_ms \
                 FROM (SELECT ",
                super::dialect::now!("$1"),
                " AS now_ms) t WHERE id = $2 AND state ",
                super::dialect::in_list!("$3"),
                " RETURNING id"
            ))
            .bind(self.at(now_ms))
            .bind(id)
            .bind(super::dialect::states(from))
            .fetch_optional(self.writer()?)
            .await?;
            self.job_if_changed(changed).await
        }
    };
}
pub(in crate::store) use shared_job_finish;

/// The helpers the `Jobs` bodies (and a few others) call, expanded once at
/// the top of each backend's `jobs.rs`: `$store` is the backend's store type.
macro_rules! shared_job_helpers {
    ($store:ty) => {
        impl $store {
            /// Reads a job just written and committed (a WAL reader sees
            /// every committed write), there unless deleted in between.
            async fn job_after_write(
                &self,
                id: i64,
            ) -> $crate::store::StoreResult<$crate::store::Job> {
                use $crate::store::interface::Jobs;
                self.find_job(id)
                    .await?
                    .ok_or($crate::store::StoreError::NoSuchJob(id))
            }

            /// The job a conditional `UPDATE … RETURNING id` changed, if it applied.
            async fn job_if_changed(
                &self,
                changed: Option<i64>,
            ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
                match changed {
                    Some(id) => Ok(Some(self.job_after_write(id).await?)),
                    None => Ok(None),
                }
            }

            /// Deletes the row `statement` names by the key bound at `$1`
            /// (a daemon's id, an upload's id); a missing row is no error.
            pub(super) async fn delete_keyed(
                &self,
                statement: &'static str,
                key: &str,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(statement)
                    .bind(key)
                    .execute(self.writer()?)
                    .await?;
                Ok(())
            }

            /// Gives jobs written by an older binary their canonical
            /// selection and identity (a username job, its bbox as a
            /// filter). Runs at open; daemons running it at once write the
            /// same values.
            pub(in crate::store) async fn backfill_selections(
                &self,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::{jobs::LegacyJob, sql};
                let legacy: Vec<LegacyJob> = sqlx::query_as(sql::LEGACY_JOBS)
                    .fetch_all(self.writer()?)
                    .await?;
                for job in legacy {
                    let spec = $crate::store::jobs::legacy_spec(&job)?;
                    sqlx::query(sql::SET_SELECTION)
                        .bind(spec.selection.canonical().to_string())
                        .bind(spec.key())
                        .bind(job.0)
                        .execute(self.writer()?)
                        .await?;
                }
                Ok(())
            }
        }

        $crate::store::shared::jobs::shared_job_statements!();
    };
}
pub(in crate::store) use shared_job_helpers;

/// The two statements a re-sync and a submission run inside their
/// transaction, as free functions on the backend's connection.
macro_rules! shared_job_statements {
    () => {
        /// Starts a job's enumeration again from its first parts, inside
        /// the transaction that holds the job: a re-sync. Images already
        /// known stay; only new ones get added. `at` is the store's `at`.
        async fn restart_enumeration(
            tx: &mut super::dialect::Conn,
            id: i64,
            spec: &$crate::selection::JobSpec,
            at: super::dialect::At,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query($crate::store::sql::DELETE_PARTS)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            super::parts::insert_parts(tx, id, 0, &spec.initial_parts()).await?;
            sqlx::query(concat!(
                "UPDATE jobs SET enumeration_complete = false, cursor = NULL, \
                 state = 'enumerating', last_error = NULL, stalled_at = NULL, \
                 next_sync_at = NULL, note = NULL, progress_at = t.now_ms, updated_at = t.now_ms \
                 FROM (SELECT ",
                super::dialect::now!("$1"),
                " AS now_ms) t WHERE id = $2"
            ))
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            Ok(())
        }

        /// A new job row, `queued`, with its first parts; its id.
        async fn insert_job(
            tx: &mut super::dialect::Conn,
            spec: &$crate::selection::JobSpec,
            key: &str,
            resync_every_ms: Option<i64>,
            at: super::dialect::At,
        ) -> $crate::store::StoreResult<i64> {
            let selection = spec.selection.canonical().to_string();
            let id: i64 = sqlx::query_scalar(concat!(
                "INSERT INTO jobs (username, quality, bbox_key, source_kind, selection, job_key, \
                 format, package, resync_every_ms, state, created_at, updated_at, progress_at) \
                 SELECT $1, $2, '', $3, $4, $5, $6, $7, $8, 'queued', t.now_ms, t.now_ms, t.now_ms \
                 FROM (SELECT ",
                super::dialect::now!("$9"),
                " AS now_ms) t RETURNING id"
            ))
            .bind($crate::store::jobs::username_column(spec))
            .bind(spec.quality.as_str())
            .bind(spec.selection.source.kind())
            .bind(&selection)
            .bind(key)
            .bind(spec.format.as_str())
            .bind(spec.package.as_str())
            .bind(resync_every_ms)
            .bind(at)
            .fetch_one(&mut *tx)
            .await?;
            super::parts::insert_parts(tx, id, 0, &spec.initial_parts()).await?;
            Ok(id)
        }
    };
}
pub(in crate::store) use shared_job_statements;
