//! `GET /jobs/{id}/images`: a job's images, filtered by state and fail
//! reason, a page at a time. What an operator reads to learn which images
//! failed and why before pressing "Retry failed".

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::JobId;
use crate::api::openapi::ErrorBody;
use crate::api::paging::{ImagesQuery, paged};
use crate::store::ListedImage;
use axum::extract::{RawQuery, State};
use axum::response::Response;

/// `GET /jobs/{id}/images[?state=&reason=&limit=&after=]`.
#[utoipa::path(
    get,
    path = "/jobs/{id}/images",
    tag = "jobs",
    summary = "A job's images by image id, filtered by state and fail reason, a page at a time",
    params(
        ("id" = i64, Path, description = "Job id (a positive integer)", minimum = 1),
        ("state" = inline(Option<crate::store::ImageState>), Query, description = "Only images in this state"),
        ("reason" = inline(Option<crate::store::FailReason>), Query, description = "Only failed images that failed for this reason (implies state=failed)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Images per page (default 100, at most 1000)"),
        ("after" = Option<String>, Query, min_length = 1, max_length = 256, description = "The last image id of the page before (from the `Link` header)")
    ),
    responses(
        (status = 200, description = "One page of the job's images", body = Vec<ListedImage>,
            headers(("Link" = String, description = "`</jobs/{id}/images?…&after=…>; rel=\"next\"` while more images follow"))),
        (status = 400, description = "The id is not a positive integer", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 422, description = "A query parameter is not a valid value (a reason with a state other than failed included), or is not one of these", body = ErrorBody)
    )
)]
pub async fn list_images(
    State(state): State<AppState>,
    JobId(id): JobId,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = ImagesQuery::parse(query.as_deref())?;
    if state.store.find_job(id).await?.is_none() {
        return Err(ApiError::job_not_found(id));
    }
    let page = state
        .store
        .job_images(id, &query.filter, query.after.as_deref(), query.limit)
        .await?;
    let next = match page.items.last() {
        Some(last) if page.more => {
            Some(query.next_page(&format!("/jobs/{id}/images"), &last.image_id))
        }
        _ => None,
    };
    Ok(paged(page.items, next))
}
