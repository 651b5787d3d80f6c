//! Listing parts: pages of `GET /images` for a user or an organization, in
//! the job's bbox or one tile of it.
//!
//! A listing always ends: an empty page, or a `next` whose cursor this run
//! already followed, is the part's last page, whatever `next` says (Graph
//! APIs may send a `next` to an empty page whose `next` is itself).
//!
//! A bbox search can be capped to one page: a full page with no `next` in a
//! tile may hide more images, so the tile is split into quarters, each listed
//! as a part of its own, down to about 1e-4° a side; a tile still full there
//! is reported in the job's note.
//!
//! A "Query Timeout" halves the job's page size (to 100 at least) for the
//! rest of the job, stored cursors included.

use super::{Listing, Stored};
use crate::clock::now_ms;
use crate::engine::EngineContext;
use crate::mapillary::{ImagePage, MapillaryError, with_limit};
use crate::model::{Bbox, ListedImage};
use crate::selection::PartSpec;
use crate::store::{Job, PageWrite, Part, PartStep};
use tracing::{debug, info, warn};

/// Smallest page size a query timeout may bring a job down to.
pub const MIN_PAGE_SIZE: u32 = 100;

/// Empty pages in a row, each with a fresh `next`, after which a listing
/// ends (with a job note). The API says to stop only when `next` is absent,
/// and one that filters after paging serves runs of empty pages (a `pano`
/// filter on a big account): the bound is only for a chain of fresh cursors
/// that never ends. A `next` back to a page already read ends it at once.
pub const MAX_EMPTY_PAGES_IN_A_ROW: u32 = 1_000;

/// Tiles are not split below about this many degrees a side.
pub const TILE_FLOOR_DEGREES: f64 = 1e-4;

/// The identity of a page link: its `after` cursor when it has one, else the
/// link without its `limit` and `access_token` and with its query pairs in
/// order, so a `next` that repeats the page just read is recognised however
/// the server (or [`with_limit`]) arranged its query.
fn cursor_of(link: &str) -> String {
    let Ok(url) = url::Url::parse(link) else {
        return link.to_string();
    };
    if let Some((_, after)) = url.query_pairs().find(|(k, _)| k == "after") {
        return after.into_owned();
    }
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "limit" && k != "access_token")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort();
    let mut identity = url.clone();
    identity.set_fragment(None);
    identity.set_query(None);
    if !pairs.is_empty() {
        identity.query_pairs_mut().extend_pairs(pairs);
    }
    identity.into()
}

/// Fetches and stores the next page of a listing part.
pub(super) async fn step(
    ctx: &EngineContext,
    job: &Job,
    part: &Part,
    tile: Option<Bbox>,
    listing: &mut Listing,
) -> anyhow::Result<Stored> {
    let page_size = job.page_size.unwrap_or_else(|| ctx.client.page_size());
    let url = match &part.cursor {
        Some(cursor) => with_limit(cursor, page_size),
        None => ctx.client.listing_url(
            &job.selection.source,
            &job.selection.filters,
            tile,
            page_size,
        ),
    };
    let page = match fetch(ctx, job, &url, page_size).await? {
        Ok(page) => page,
        Err(failure) => return Ok(failure),
    };
    listing.seen.insert(cursor_of(&url));
    let served = page.images.len();
    let empty = served == 0 && page.skipped == 0;
    let next = where_next(ctx, job, listing, page.next.as_deref(), empty).await?;
    let kept: Vec<ListedImage> = page
        .images
        .into_iter()
        .filter(|image| job.selection.matches(image))
        .collect();
    // Items that did not parse still filled the page.
    let capped = next.is_none() && (served + page.skipped) as u64 >= u64::from(page_size);
    let quarters = match tile {
        Some(tile) if capped => split_capped(ctx, job, tile).await?,
        _ => Vec::new(),
    };
    let step = match next {
        Some(link) => PartStep::Next(link),
        None if !quarters.is_empty() => PartStep::Replace(&quarters),
        None => PartStep::Done,
    };
    let task = listing.task.as_ref();
    let new_images = ctx
        .store
        .store_page(PageWrite {
            job_id: job.id,
            part: part.seq,
            images: &kept,
            missing: &[],
            step,
            task,
            now_ms: now_ms(),
        })
        .await?;
    debug!(
        job = job.id,
        served,
        kept = kept.len(),
        new_images,
        "stored a page"
    );
    Ok(Stored::Images(new_images))
}

/// One page of the listing, or the failure to store for it. A query
/// timeout halves the job's page size first (down to [`MIN_PAGE_SIZE`]).
async fn fetch(
    ctx: &EngineContext,
    job: &Job,
    url: &str,
    page_size: u32,
) -> anyhow::Result<Result<ImagePage, Stored>> {
    match ctx.client.fetch_page(url).await {
        Ok(page) => Ok(Ok(page)),
        Err(MapillaryError::QueryTimeout(detail)) if page_size > MIN_PAGE_SIZE => {
            let smaller = (page_size / 2).max(MIN_PAGE_SIZE);
            ctx.store.set_page_size(job.id, smaller).await?;
            info!(
                job = job.id,
                page_size = smaller,
                "query timeout; asking for smaller pages"
            );
            Ok(Err(Stored::Failure(MapillaryError::QueryTimeout(detail))))
        }
        Err(error) => Ok(Err(Stored::Failure(error))),
    }
}

/// The page's `next` link, unless the listing must end here: after
/// [`MAX_EMPTY_PAGES_IN_A_ROW`] empty pages (with a job note), or on a link
/// back to a page already read. `empty`: the page had no item at all.
async fn where_next<'p>(
    ctx: &EngineContext,
    job: &Job,
    listing: &mut Listing,
    next: Option<&'p str>,
    empty: bool,
) -> anyhow::Result<Option<&'p str>> {
    // Counts a part's own run: a page with items, or a part's end, resets it.
    let empty_with_next = empty && next.is_some();
    listing.empty_pages = if empty_with_next {
        listing.empty_pages + 1
    } else {
        0
    };
    if empty_with_next && listing.empty_pages >= MAX_EMPTY_PAGES_IN_A_ROW {
        listing.empty_pages = 0;
        let note = format!(
            "{MAX_EMPTY_PAGES_IN_A_ROW} empty pages in a row, each with a next link: the listing ends here"
        );
        warn!(job = job.id, %note);
        ctx.store
            .set_job_note(job.id, Some(&note), now_ms())
            .await?;
        return Ok(None);
    }
    if let Some(link) = next
        && listing.seen.contains(&cursor_of(link))
    {
        warn!(
            job = job.id,
            "the next link leads back to a page already read; ending the listing"
        );
        return Ok(None);
    }
    Ok(next)
}

/// The parts a capped tile is listed again as ([`split`]); a tile too small
/// to split is noted on the job instead, as possibly missing images.
async fn split_capped(ctx: &EngineContext, job: &Job, tile: Bbox) -> anyhow::Result<Vec<PartSpec>> {
    let quarters = split(tile);
    if quarters.is_empty() {
        let note = format!(
            "the bbox tile {} still returns a full page at the smallest tile size; some images in it may be missing",
            tile.to_query()
        );
        warn!(job = job.id, %note);
        ctx.store
            .set_job_note(job.id, Some(&note), now_ms())
            .await?;
    } else {
        debug!(job = job.id, tile = %tile.to_query(), "a full page without next: splitting the tile");
    }
    Ok(quarters)
}

/// The parts a capped tile is listed again as: its quarters (halves when one
/// side is already at the floor); none once both sides are.
fn split(tile: Bbox) -> Vec<PartSpec> {
    let width = tile.east - tile.west;
    let height = tile.north - tile.south;
    let xs: Vec<(f64, f64)> = if width >= 2.0 * TILE_FLOOR_DEGREES {
        let mid = tile.west + width / 2.0;
        vec![(tile.west, mid), (mid, tile.east)]
    } else {
        vec![(tile.west, tile.east)]
    };
    let ys: Vec<(f64, f64)> = if height >= 2.0 * TILE_FLOOR_DEGREES {
        let mid = tile.south + height / 2.0;
        vec![(tile.south, mid), (mid, tile.north)]
    } else {
        vec![(tile.south, tile.north)]
    };
    if xs.len() == 1 && ys.len() == 1 {
        return Vec::new();
    }
    let mut parts = Vec::new();
    for &(south, north) in &ys {
        for &(west, east) in &xs {
            if let Ok(bbox) = Bbox::new(west, south, east, north) {
                parts.push(PartSpec::Listing { bbox: Some(bbox) });
            }
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_split_into_quarters_down_to_the_floor() {
        let tile = Bbox::new(0.0, 0.0, 1.0, 1.0).unwrap();
        let parts = split(tile);
        assert_eq!(parts.len(), 4);
        let boxes: Vec<Bbox> = parts
            .iter()
            .map(|p| match p {
                PartSpec::Listing { bbox: Some(b) } => *b,
                other => panic!("{other:?}"),
            })
            .collect();
        let area: f64 = boxes
            .iter()
            .map(|b| (b.east - b.west) * (b.north - b.south))
            .sum();
        assert!((area - 1.0).abs() < 1e-12, "the quarters cover the tile");
        let thin = Bbox::new(0.0, 0.0, 1.0, 1.5e-4).unwrap();
        assert_eq!(split(thin).len(), 2, "only the wide side is halved");
        let tiny = Bbox::new(0.0, 0.0, 1.5e-4, 1.5e-4).unwrap();
        assert!(split(tiny).is_empty(), "at the floor");
    }

    #[test]
    fn cursors_are_the_after_parameter() {
        assert_eq!(cursor_of("https://h/images?limit=5&after=QV&x=1"), "QV");
        assert_eq!(cursor_of("https://h/images?limit=5"), "https://h/images");
    }

    /// A `next` without `after` that is the page just read: the stored link
    /// had its `limit` moved to the end by `with_limit`, the server's did not.
    #[test]
    fn a_link_without_after_is_known_whatever_its_limit_and_order() {
        let served = "https://h/images?limit=50&creator_username=a&fields=id";
        let asked = with_limit(served, 50);
        assert_ne!(asked, served);
        assert_eq!(cursor_of(&asked), cursor_of(served));
        assert_eq!(
            cursor_of("https://h/images?fields=id&creator_username=a&access_token=T"),
            cursor_of(served)
        );
        assert_ne!(
            cursor_of("https://h/images?creator_username=b&fields=id"),
            cursor_of(served)
        );
    }
}
