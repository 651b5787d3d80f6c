//! Mapillary Graph API + CDN client.
//!
//! - [`client`]: [`MapillaryClient`], one attempt per call, token only on the API origin.
//! - [`error`]: [`MapillaryError`] and the [`RetryDecision`] each failure carries.
//! - [`limiter`]: the one shared limiter that keeps API calls under `calls_per_minute`.
//! - [`cdn_gate`]: holds every download while the CDN refuses most of them (HTTP 429).
//! - [`hedge`]: a second request for a download gone quiet far past the usual (the tail).
//! - [`backoff`]: exponential retry delays with jitter, for the daemon's retries.
//! - [`urls`]: token stripping, `oe=` expiry, keeping page links on the API origin.

pub mod backoff;
pub mod cdn_gate;
pub mod client;
pub mod error;
pub mod hedge;
pub mod limiter;
pub mod urls;

pub use backoff::{backoff_delay, backoff_delay_with};
pub use client::{ClientSettings, ImagePage, ImagesAnswer, MAX_IDS_PER_CALL, MapillaryClient};
pub use error::{MAX_RETRY_AFTER, MapillaryError, RetryDecision, parse_retry_after};
pub use limiter::{Limiter, SharedBudget};
pub use urls::{strip_token, url_expires_at, with_limit};
