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
    /// What went wrong, for a human; never a secret.
    pub error: String,
}

/// `GET /healthz`'s answer while the database answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// The OpenAPI description, assembled from the handlers' annotations.
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

/// The answers `guard` and `auth` give before any handler runs, on every
/// operation they can reach: 401 (no token or another, where `auth` asks for
/// one), 403 (a Host not trusted without a token; a cross-site state change)
/// and, where a body may come, 413 for a declared length over the limit.
struct GuardAnswers;

impl Modify for GuardAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::Operation;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let answer = |operation: &mut Operation, status: &str, description: &str| {
            operation
                .responses
                .responses
                .entry(status.into())
                .or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build()
                        .into()
                });
        };
        let unauthorized = "A token is configured and the request has none or another";
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = crate::api::auth::is_open_path(path);
            let reads = [item.get.as_mut(), item.head.as_mut()];
            let writes = [
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for operation in reads.into_iter().flatten() {
                if !open {
                    answer(operation, "401", unauthorized);
                }
                if path != crate::api::auth::OPEN_PATH {
                    answer(
                        operation,
                        "403",
                        "Without a token, the Host is not localhost, 127.0.0.1, [::1], the listen address or in api.allowed_hosts",
                    );
                }
            }
            for operation in writes.into_iter().flatten() {
                answer(operation, "401", unauthorized);
                answer(
                    operation,
                    "403",
                    "A cross-site request (Sec-Fetch-Site: cross-site, or an Origin other than this server), or without a token a Host that is not trusted",
                );
                answer(
                    operation,
                    "413",
                    "The declared Content-Length is over 256 KiB",
                );
            }
        }
    }
}

/// The description, built once when the router is.
static DESCRIPTION: OnceLock<serde_json::Value> = OnceLock::new();

/// Completes the description the router's routes made (the guard's
/// answers apply to every route, so they are added once all are there) and
/// serves it from then on.
pub(crate) fn publish(description: &utoipa::openapi::OpenApi) {
    let mut description = description.clone();
    GuardAnswers.modify(&mut description);
    if let Ok(json) = serde_json::to_value(&description) {
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
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)
    )
)]
pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(DESCRIPTION.get().cloned().unwrap_or_default())
}
