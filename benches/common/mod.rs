//! What more than one bench uses: pages of listed images as the API hands
//! them out (`store`, `cluster`), figures beside their targets ([`report`]),
//! the disk's durable-write floor ([`floor`]), CPU readings ([`cpu`]) and a
//! posted job ([`job`]). Not a bench of its own (`benches/common/` is not
//! discovered as a target); each bench takes what it needs.

#![allow(dead_code)]

pub mod cpu;
pub mod floor;
pub mod job;
pub mod report;

use mapillary_downloader::model::{GeoPoint, ImageMeta};
use serde_json::json;

/// Images per page: the API's maximum, the daemon's default `page_size`.
pub const PAGE: usize = 2_000;

/// How the API hands out ids across pages. It promises no order: ids that
/// rise with the paging are the kind case, scattered ids the worst one for
/// the (job_id, image_id) index (every page dirties pages all over it).
#[derive(Clone, Copy, PartialEq)]
pub enum IdOrder {
    Rising,
    Scattered,
}

pub fn image_id(n: u64, order: IdOrder) -> String {
    let offset = match order {
        IdOrder::Rising => n,
        // A bijection on 0..2^40 (odd multiplier), so ids stay unique.
        IdOrder::Scattered => n.wrapping_mul(0x9E37_79B9_7F4A_7C15) & ((1 << 40) - 1),
    };
    (1_000_000_000_000_000 + offset).to_string()
}

/// Page `page_no` of a job: [`PAGE`] images with every field the API serves,
/// ids unique per `job_seed`.
pub fn page(job_seed: u64, page_no: usize, order: IdOrder) -> Vec<ImageMeta> {
    (0..PAGE)
        .map(|i| {
            let n = job_seed * 1_000_000_000 + (page_no * PAGE + i) as u64;
            let mut extra = serde_json::Map::new();
            extra.insert("creator".into(), json!({"id": "1000", "username": "alice"}));
            extra.insert("exif_orientation".into(), json!(1));
            ImageMeta {
                id: image_id(n, order),
                captured_at: Some(1_500_000_000_000 + n as i64 * 1_000),
                geometry: Some(GeoPoint {
                    kind: Some("Point".into()),
                    coordinates: vec![13.404954 + i as f64 * 1e-6, 52.520008],
                }),
                computed_geometry: Some(GeoPoint {
                    kind: Some("Point".into()),
                    coordinates: vec![13.404955 + i as f64 * 1e-6, 52.520009],
                }),
                altitude: Some(41.2),
                computed_altitude: Some(40.9),
                compass_angle: Some(187.3),
                computed_compass_angle: Some(186.9),
                sequence: Some(format!("seq_{}", n / 300)),
                make: Some("GoPro".into()),
                model: Some("MAX".into()),
                is_pano: Some(false),
                camera_type: Some("perspective".into()),
                width: Some(4000),
                height: Some(3000),
                thumb_original_url: Some(format!(
                    "https://scontent.example/v/t6/{n}.jpg?stp=s4000x3000&oh=00_AfB{n}&oe=6700FFFF"
                )),
                thumb_2048_url: Some(format!("https://scontent.example/v/t6/{n}_2048.jpg")),
                extra,
                ..ImageMeta::default()
            }
        })
        .collect()
}
