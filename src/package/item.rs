//! The Internet Archive item files of a packed collection, as the Python
//! tool writes them so its upload tools work on our output:
//! `__ia_thumb__.jpg` (the collection's first image small enough to decode, at most 256×256) and
//! `.meta/<tag>/<n>` (one value per file, no trailing newline).
//!
//! Where we differ on purpose: dates are UTC (the date folders are too, the
//! Python tool used the machine's zone here), the image count is the number
//! of distinct archived images (the Python tool counted every metadata line,
//! its end marker included), and the description says what the tars hold
//! (one capture date each, not one sequence).

use super::tarball;
use crate::archive::Archive;
use crate::archive::member_name;
use crate::store::Store;
use crate::units::group_digits;
use chrono::{DateTime, Utc};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// The Internet Archive's item thumbnail, in the collection folder.
pub const THUMB_FILE: &str = "__ia_thumb__.jpg";
/// The folder of the item's tag files (the Python tool's `.meta/`).
pub const META_DIR: &str = ".meta";
/// The thumbnail's bound, each side.
const THUMB_SIDE: u32 = 256;

/// Images tried, in capture order, for the thumbnail.
const THUMB_CANDIDATES: u32 = 16;

/// Writes `__ia_thumb__.jpg` from the collection's first image (by capture
/// time), unless it exists: a re-sync keeps the item's face. An image too
/// large to decode in memory (the image crate's limit) gives way to the
/// next; any other failure ends the attempt (finishing reports it), so a
/// damaged collection is not read file by file here before packing.
pub async fn write_thumbnail(
    store: &Arc<Store>,
    files: &Archive,
    folder: &Path,
    collection: &str,
) -> anyhow::Result<()> {
    let target = folder.join(THUMB_FILE);
    if files.exists(&target).await? {
        return Ok(());
    }
    let candidates = store
        .collection_images(collection, None, THUMB_CANDIDATES)
        .await?;
    let mut too_large = Vec::new();
    for image in candidates {
        let id = image.meta.id.clone();
        let Some(bytes) = read_archived(store, files, folder, collection, &id, &image.path).await?
        else {
            anyhow::bail!(
                "cannot make {THUMB_FILE}: the file of image {id} is neither loose nor in a tar"
            );
        };
        let (target, files) = (target.clone(), files.clone());
        let made = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let thumb = thumbnail(&bytes)?;
            files.write_atomically(&target, |out| out.write_all(&thumb))?;
            Ok(())
        })
        .await?;
        match made {
            Ok(()) => return Ok(()),
            Err(e) if is_too_large(&e) => too_large.push(id),
            Err(e) => return Err(e.context(format!("cannot make {THUMB_FILE} from image {id}"))),
        }
    }
    if too_large.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "cannot make {THUMB_FILE}: images {} are too large to decode",
        too_large.join(", ")
    )
}

fn is_too_large(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<image::ImageError>(),
        Some(image::ImageError::Limits(_))
    )
}

/// A JPEG of `image` (JPEG or WebP) fitting in 256×256, aspect kept, never
/// enlarged; quality 75, like Pillow's default.
pub fn thumbnail(image: &[u8]) -> anyhow::Result<Vec<u8>> {
    // The image crate's default limit (512 MiB of pixels) refuses a very
    // large panorama: the caller then takes the next image.
    let decoded = image::load_from_memory(image)?;
    let small = if decoded.width() > THUMB_SIDE || decoded.height() > THUMB_SIDE {
        decoded.thumbnail(THUMB_SIDE, THUMB_SIDE)
    } else {
        decoded
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75)
        .encode_image(&small.into_rgb8())?;
    Ok(out)
}

/// An archived image's bytes: its loose file, or its member in the tar of
/// the packing that holds it (a tar in a bucket is downloaded to the spool
/// for this, then removed).
pub async fn read_archived(
    store: &Store,
    files: &Archive,
    folder: &Path,
    collection: &str,
    image_id: &str,
    path: &str,
) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(bytes) = files.read_async(Path::new(path)).await? {
        return Ok(Some(bytes));
    }
    let Some(copy) = store.archived_copy(collection, image_id).await? else {
        return Ok(None);
    };
    let Some(packing) = copy.packing_id else {
        return Ok(None);
    };
    let Some(packing) = store.packing(packing).await? else {
        return Ok(None);
    };
    let Some(member) = member_name(folder, &copy.path) else {
        return Ok(None);
    };
    let Some((tar, temporary)) = files.local_copy(&folder.join(&packing.tar_name)).await? else {
        return Ok(None);
    };
    let read = tokio::task::spawn_blocking(move || {
        let read = tarball::read_member(&tar, &member);
        if temporary {
            let _ = std::fs::remove_file(&tar);
        }
        read
    })
    .await??;
    Ok(read)
}

/// What `.meta/` says about a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFacts {
    /// Whose collection it is.
    pub username: String,
    /// Its quality.
    pub quality: String,
    /// Whether it holds WebP files.
    pub webp: bool,
    /// Whether its images are in tars.
    pub packed: bool,
    /// Images it holds.
    pub image_count: u64,
    /// `YYYY-MM-DD` (UTC) or `unknown`.
    pub first_date: String,
    /// `YYYY-MM-DD` (UTC) or `unknown`.
    pub last_date: String,
}

impl ItemFacts {
    /// Facts from a collection name (`mapillary-<user>-<quality>[-webp]`)
    /// and its images. `None` for a name that is not one.
    pub fn new(
        collection: &str,
        packed: bool,
        image_count: u64,
        first_ms: Option<i64>,
        last_ms: Option<i64>,
    ) -> Option<ItemFacts> {
        let rest = collection.strip_prefix("mapillary-")?;
        let (rest, webp) = match rest.strip_suffix("-webp") {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let (username, quality) = rest.rsplit_once('-')?;
        let date = |ms: Option<i64>| {
            ms.and_then(DateTime::<Utc>::from_timestamp_millis)
                .map(|t| t.format("%Y-%m-%d").to_string())
        };
        let (first_date, last_date) = match (date(first_ms), date(last_ms)) {
            (Some(first), Some(last)) => (first, last),
            _ => ("unknown".to_string(), "unknown".to_string()),
        };
        Some(ItemFacts {
            username: username.to_string(),
            quality: quality.to_string(),
            webp,
            packed,
            image_count,
            first_date,
            last_date,
        })
    }

    /// The item's description: who, how many, what resolution, when, and
    /// how the files are laid out.
    fn description(&self) -> String {
        let user = &self.username;
        let resolution = if self.quality == "original" {
            "original resolution".to_string()
        } else {
            format!("{}px resolution", self.quality)
        };
        let mut description = format!(
            "Street-level imagery from Mapillary user '{user}'. Contains {} images in {resolution} \
             captured between {} and {}.",
            group_digits(self.image_count),
            self.first_date,
            self.last_date
        );
        if self.packed {
            description.push_str(" Images are packed into one tar file per capture date (UTC).");
        }
        if self.webp {
            description.push_str(" Images were recompressed with WebP.");
        }
        description.push_str(
            " Images are organized by capture date and sequence ID and include EXIF metadata with \
             GPS coordinates, camera information, and compass direction.\n\n",
        );
        description.push_str(&format!("Downloaded using {}.", scanner()));
        description
    }

    /// The tags, in the Python tool's order, each with its values.
    pub fn tags(&self) -> Vec<(&'static str, Vec<String>)> {
        let user = &self.username;
        let description = self.description();
        let one = |value: String| vec![value];
        vec![
            ("title", one(format!("Mapillary images by {user}"))),
            ("description", one(description)),
            (
                "subject",
                [
                    "mapillary",
                    "street-view",
                    "computer-vision",
                    "geospatial",
                    "photography",
                ]
                .map(String::from)
                .to_vec(),
            ),
            ("creator", one(user.clone())),
            ("date", one(self.first_date.clone())),
            (
                "coverage",
                one(format!("{} - {}", self.first_date, self.last_date)),
            ),
            (
                "licenseurl",
                one("https://creativecommons.org/licenses/by-sa/4.0/".into()),
            ),
            ("mediatype", one("data".into())),
            ("collection", one("mapillary-images".into())),
            (
                "source",
                one(format!("https://www.mapillary.com/app/user/{user}")),
            ),
            ("scanner", one(scanner())),
            // The Python tool's searchable tag (`mapillary_downloader:*`):
            // archives made by either tool are found together.
            (
                "mapillary_downloader",
                one(env!("CARGO_PKG_VERSION").into()),
            ),
        ]
    }
}

fn scanner() -> String {
    format!("mapillary-downloader {} (Rust)", env!("CARGO_PKG_VERSION"))
}

/// Writes `.meta/<tag>/<n>` for `collection`, each file atomically and
/// only when its text changed.
pub async fn write_meta_tags(
    store: &Store,
    files: &Archive,
    folder: &Path,
    collection: &str,
    packed: bool,
) -> anyhow::Result<()> {
    let (count, first, last) = store.collection_summary(collection).await?;
    let Some(facts) = ItemFacts::new(collection, packed, count, first, last) else {
        anyhow::bail!("{collection:?} is not a mapillary-<user>-<quality> collection name");
    };
    let meta = folder.join(META_DIR);
    let files = files.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for (tag, values) in facts.tags() {
            for (index, value) in values.iter().enumerate() {
                let path = meta.join(tag).join(index.to_string());
                if files
                    .read(&path)
                    .is_ok_and(|old| old.as_deref() == Some(value.as_bytes()))
                {
                    continue;
                }
                files.write_atomically(&path, |out| out.write_all(value.as_bytes()))?;
            }
        }
        Ok(())
    })
    .await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_and_tags_follow_the_python_tool() {
        let facts = ItemFacts::new(
            "mapillary-jo-ann-2048-webp",
            true,
            12_345,
            Some(1_556_668_800_000),
            Some(1_627_603_200_000),
        )
        .unwrap();
        assert_eq!(
            (facts.username.as_str(), facts.quality.as_str()),
            ("jo-ann", "2048")
        );
        assert!(facts.webp);
        let tags = facts.tags();
        let names: Vec<&str> = tags.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            names,
            [
                "title",
                "description",
                "subject",
                "creator",
                "date",
                "coverage",
                "licenseurl",
                "mediatype",
                "collection",
                "source",
                "scanner",
                "mapillary_downloader"
            ]
        );
        let get = |tag: &str| tags.iter().find(|(t, _)| *t == tag).unwrap().1.clone();
        assert_eq!(get("title"), ["Mapillary images by jo-ann"]);
        assert_eq!(get("date"), ["2019-05-01"]);
        assert_eq!(get("coverage"), ["2019-05-01 - 2021-07-30"]);
        assert_eq!(get("subject").len(), 5);
        let description = &get("description")[0];
        assert!(
            description.starts_with(
                "Street-level imagery from Mapillary user 'jo-ann'. Contains 12,345 images in \
                 2048px resolution captured between 2019-05-01 and 2021-07-30."
            ),
            "{description}"
        );
        assert!(description.contains("recompressed with WebP"));
        assert!(description.contains("\n\nDownloaded using mapillary-downloader"));
        let plain = ItemFacts::new("mapillary-bob-original", false, 1, None, None).unwrap();
        assert!(!plain.webp);
        assert_eq!(plain.first_date, "unknown");
        assert!(plain.tags()[1].1[0].contains("in original resolution"));
        assert!(ItemFacts::new("other-bob-original", false, 1, None, None).is_none());
    }

    #[test]
    fn a_thumbnail_fits_in_256_and_never_grows() {
        let encode = |w: u32, h: u32| {
            let mut out = std::io::Cursor::new(Vec::new());
            image::DynamicImage::ImageRgb8(image::RgbImage::new(w, h))
                .write_to(&mut out, image::ImageFormat::Jpeg)
                .unwrap();
            out.into_inner()
        };
        let thumb = image::load_from_memory(&thumbnail(&encode(1000, 500)).unwrap()).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (256, 128));
        let thumb = image::load_from_memory(&thumbnail(&encode(100, 40)).unwrap()).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (100, 40));
    }
}
