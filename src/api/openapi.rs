//! The API description: `GET /openapi.json`, OpenAPI 3.1, generated from the
//! handlers' `#[utoipa::path]` annotations and the types they take and give
//! (`Job`, `StatusReport`, `CreateJobRequest`...), registered through the
//! same `OpenApiRouter` that routes them, so a route cannot exist without
//! its description or drift from it.

use axum::Json;
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: `{"error": "<what went wrong, for a human>"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /healthz`'s answer while the database answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mapillary-downloader",
        description = "Archive Mapillary imagery: submit jobs (a user, an organization, sequences or image ids, \
                       with filters), steer them, watch progress. Errors are `{\"error\": \"...\"}` with a 4xx or \
                       5xx status. When the daemon runs with `api.token`, every endpoint but `GET /healthz` (and \
                       the operator page) needs `Authorization: Bearer <token>`.",
        license(name = "MIT")
    ),
    modifiers(&BearerAuth),
    security((), ("bearer" = [])),
    tags(
        (name = "jobs", description = "Submit and steer jobs"),
        (name = "status", description = "Progress, health and metrics"),
        (name = "page", description = "The operator's page and its assets")
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The description, built once when the router is.
static DESCRIPTION: OnceLock<serde_json::Value> = OnceLock::new();

pub(crate) fn publish(description: &utoipa::openapi::OpenApi) {
    if let Ok(json) = serde_json::to_value(description) {
        let _ = DESCRIPTION.set(json);
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "status",
    summary = "This API description (OpenAPI 3.1)",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 401, description = "A token is configured and the request has none or another", body = ErrorBody)
    )
)]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(DESCRIPTION.get().cloned().unwrap_or_default())
}
