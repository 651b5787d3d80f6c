//! Mapillary Graph API + CDN client.
