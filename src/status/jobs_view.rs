//! Which jobs a status report lists, and how: [`JobsView`] (the listed
//! jobs with figures over every job) and [`JobSummary`] (a job with its id
//! lists counted, not spelt out), so `/status` stays small however many
//! jobs, and however long their selections, the queue holds.

use super::{Totals, remaining_images};
use crate::store::{Job, Store};

/// How many jobs `GET /status` and the `status` command list.
pub const STATUS_JOBS: u32 = 100;

/// The jobs a report lists, and the figures over every job.
#[derive(Debug, Clone, Default)]
pub struct JobsView {
    /// The most recently changed jobs, in id order.
    pub jobs: Vec<Job>,
    /// Counts over every job, listed or not.
    pub totals: Totals,
    /// Pending and in-flight images of active jobs: what the ETA waits for.
    pub remaining: u64,
    /// How many jobs there are in all.
    pub total: u64,
}

/// Every job listed: totals from the jobs themselves.
impl From<Vec<Job>> for JobsView {
    fn from(jobs: Vec<Job>) -> Self {
        JobsView {
            totals: Totals::of(&jobs),
            remaining: remaining_images(&jobs),
            total: jobs.len() as u64,
            jobs,
        }
    }
}

impl JobsView {
    /// The `limit` most recently updated jobs, with totals the database
    /// sums over every job: a report that stays small however many jobs
    /// (and however long their selections) the queue holds.
    pub async fn recent(store: &Store, limit: u32) -> crate::store::StoreResult<JobsView> {
        // Two reads on two connections of the read pool at once: a request
        // waits for the slower, not for both in turn (each read is a hop to
        // a connection's thread, and on a busy machine the hops dominate).
        let (sums, mut jobs) = tokio::try_join!(store.job_totals(), store.recent_jobs(limit))?;
        // Each job's upload to the Internet Archive: one query over the
        // (few) upload tracks.
        store.with_uploads(&mut jobs).await?;
        Ok(JobsView {
            totals: Totals {
                discovered: sums.pending + sums.in_progress + sums.done + sums.failed,
                pending: sums.pending,
                in_progress: sums.in_progress,
                done: sums.done,
                failed: sums.failed,
                deleted: sums.deleted,
                bytes_done: sums.bytes_done,
            },
            remaining: sums.remaining,
            // A job created between the two reads is listed but not counted.
            total: sums.jobs.max(jobs.len() as u64),
            jobs,
        })
    }
}

/// A job as `/status` lists it: a [`Job`] whose `image_ids` and
/// `sequence_ids` are `{"count": n}` instead of the lists (a selection of
/// 10,000 ids would otherwise be sent every time the page polls).
pub struct JobSummary;

impl utoipa::PartialSchema for JobSummary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
        let mut schema = <Job as utoipa::PartialSchema>::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            for key in SUMMARISED {
                let count = ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
                    .description(Some(format!("How many {key} the selection names")))
                    .property(
                        "count",
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(0)),
                    )
                    .required("count");
                object.properties.insert(key.to_string(), count.into());
            }
            object.description = Some(
                "A job with its id lists summarised; `GET /jobs/{id}` has the whole job".into(),
            );
        }
        schema
    }
}

impl utoipa::ToSchema for JobSummary {
    fn name() -> std::borrow::Cow<'static, str> {
        "JobSummary".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <Job as utoipa::ToSchema>::schemas(schemas);
    }
}

/// The selection lists a [`JobSummary`] counts instead of listing.
const SUMMARISED: [&str; 2] = ["image_ids", "sequence_ids"];

/// Serialises `jobs` as [`JobSummary`]s.
pub(super) fn summarised_jobs<S: serde::Serializer>(
    jobs: &[Job],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::{Error, SerializeSeq};
    let mut seq = serializer.serialize_seq(Some(jobs.len()))?;
    for job in jobs {
        let mut value = serde_json::to_value(job).map_err(S::Error::custom)?;
        for key in SUMMARISED {
            if let Some(ids) = value.get(key).and_then(|ids| ids.as_array()).map(Vec::len) {
                value[key] = serde_json::json!({ "count": ids });
            }
        }
        seq.serialize_element(&value)?;
    }
    seq.end()
}
