//! Which item each tar goes to: a collection becomes `<collection>`,
//! `<collection>-2`, `<collection>-3`, … so that no item passes IA's limits
//! (`ia.max_item_bytes`, `ia.max_item_files`).
//!
//! Pure functions over what the store says is placed and what is on disk, so
//! the rules are unit-tested without a database: tars in date order (a
//! date's addenda `<date>.N.tar` after it), each to the last item while it
//! has room, else to a fresh one; a tar over the limit on its own goes alone
//! into a fresh item; a placement once recorded never changes (the caller
//! passes only tars not yet placed).

use super::headers::MetaTag;
use crate::store::{UploadFile, UploadFileKind, UploadItem};
use std::collections::BTreeSet;

/// Files an item holds besides its tars: `metadata.jsonl.gz` and
/// `__ia_thumb__.jpg`. Counted against the file limit from the start.
pub const ITEM_FILES: u64 = 2;

/// IA's item limits, as configured (`ia.max_item_bytes`, `ia.max_item_files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of tars in one item.
    pub max_bytes: u64,
    /// Most files in one item, its own files included.
    pub max_files: u64,
}

/// The limits `[ia]` sets.
pub fn limits(settings: &crate::config::IaSettings) -> Limits {
    Limits {
        max_bytes: settings.max_item_bytes,
        max_files: settings.max_item_files,
    }
}

/// What an item already holds: its tars' bytes and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemLoad {
    /// 1 for `<collection>`, N for `<collection>-N`.
    pub part: u32,
    /// Bytes of the tars placed in it.
    pub bytes: u64,
    /// Tars placed in it.
    pub tars: u64,
}

/// Each recorded item's tars, as the planner weighs them.
pub fn item_loads(items: &[UploadItem], placed: &[UploadFile]) -> Vec<ItemLoad> {
    items
        .iter()
        .map(|i| {
            let tars = placed
                .iter()
                .filter(|f| f.item_id == i.id && f.kind == UploadFileKind::Tar);
            ItemLoad {
                part: i.part,
                bytes: tars.clone().map(|f| f.bytes).sum(),
                tars: tars.count() as u64,
            }
        })
        .collect()
}

/// A tar on disk, not yet placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTar {
    /// `<date>.tar` or `<date>.N.tar`.
    pub name: String,
    /// Its size.
    pub bytes: u64,
}

/// Where one tar goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The item's part number.
    pub part: u32,
    /// The tar's name.
    pub name: String,
}

/// Why a collection cannot be uploaded as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The identifier breaks IA's rule; nothing is sent.
    #[error(
        "{0:?} cannot be an Internet Archive identifier (it must match \
         ^[A-Za-z0-9][A-Za-z0-9._-]{{2,99}}$); nothing was uploaded"
    )]
    BadIdentifier(String),
}

/// The identifier of part `part` of `collection`: the collection's name for
/// part 1, `<collection>-N` after; checked against IA's rule.
pub fn identifier(collection: &str, part: u32) -> Result<String, PlanError> {
    let id = if part <= 1 {
        collection.to_string()
    } else {
        format!("{collection}-{part}")
    };
    if is_valid_identifier(&id) {
        Ok(id)
    } else {
        Err(PlanError::BadIdentifier(id))
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9._-]{2,99}$`.
pub fn is_valid_identifier(id: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && (3..=100).contains(&id.len())
        && chars.all(ok)
}

/// A tar's place in date order: its date, then its addendum number (the
/// first tar of a date is 0). `unknown-date` sorts after every date.
pub fn tar_order(name: &str) -> (String, u32) {
    let stem = name.strip_suffix(".tar").unwrap_or(name);
    match stem.rsplit_once('.') {
        Some((date, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (date.to_string(), n.parse().unwrap_or(u32::MAX))
        }
        _ => (stem.to_string(), 0),
    }
}

/// The capture date a tar holds (`YYYY-MM-DD` or `unknown-date`).
pub fn tar_date(name: &str) -> String {
    tar_order(name).0
}

/// Places `tars` (none placed before) after what `items` hold. Date order;
/// each tar to the last item if it fits there (or that item is empty), else
/// to a fresh item. A tar over a limit on its own thus sits alone.
pub fn place(items: &[ItemLoad], tars: &[LocalTar], limits: Limits) -> Vec<Placement> {
    let mut tars: Vec<&LocalTar> = tars.iter().collect();
    tars.sort_by_key(|t| tar_order(&t.name));
    let mut last = items.iter().max_by_key(|i| i.part).copied();
    let mut placed = Vec::with_capacity(tars.len());
    for tar in tars {
        let target = match last {
            Some(item) if item.tars == 0 || fits(&item, tar.bytes, limits) => item,
            Some(item) => ItemLoad {
                part: item.part + 1,
                bytes: 0,
                tars: 0,
            },
            None => ItemLoad {
                part: 1,
                bytes: 0,
                tars: 0,
            },
        };
        placed.push(Placement {
            part: target.part,
            name: tar.name.clone(),
        });
        last = Some(ItemLoad {
            part: target.part,
            bytes: target.bytes + tar.bytes,
            tars: target.tars + 1,
        });
    }
    placed
}

fn fits(item: &ItemLoad, bytes: u64, limits: Limits) -> bool {
    item.bytes.saturating_add(bytes) <= limits.max_bytes
        && item.tars + 1 + ITEM_FILES <= limits.max_files
}

/// The `.meta` tags of part `part`: the collection's, with " (part N)" at
/// the end of the title of every part after the first.
pub fn part_tags(mut tags: Vec<MetaTag>, part: u32) -> Vec<MetaTag> {
    if part > 1 {
        for (tag, values) in &mut tags {
            if tag == "title" {
                for value in values.iter_mut() {
                    value.push_str(&format!(" (part {part})"));
                }
            }
        }
    }
    tags
}

/// The capture dates of an item's tars: the lines of the collection's
/// metadata its own `metadata.jsonl.gz` keeps.
pub fn item_dates<'a>(tar_names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    tar_names.into_iter().map(tar_date).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 100,
        max_files: 5,
    };

    fn tar(name: &str, bytes: u64) -> LocalTar {
        LocalTar {
            name: name.into(),
            bytes,
        }
    }

    fn parts(placed: &[Placement]) -> Vec<(u32, &str)> {
        placed.iter().map(|p| (p.part, p.name.as_str())).collect()
    }

    #[test]
    fn identifiers_follow_ia_rule_and_number_the_parts() {
        assert_eq!(
            identifier("mapillary-bob-2048", 1).unwrap(),
            "mapillary-bob-2048"
        );
        assert_eq!(
            identifier("mapillary-bob-2048", 3).unwrap(),
            "mapillary-bob-2048-3"
        );
        assert!(identifier("ab", 1).is_err(), "too short");
        assert!(identifier("-abc", 1).is_err(), "must start alphanumeric");
        assert!(identifier("mapillary-b b-256", 1).is_err());
        assert!(identifier("mapillary-bé-256", 1).is_err());
        assert!(identifier(&"a".repeat(100), 1).is_ok());
        assert!(identifier(&"a".repeat(99), 2).is_err(), "the suffix counts");
        let message = identifier("-x", 1).unwrap_err().to_string();
        assert!(message.contains("nothing was uploaded"), "{message}");
    }

    #[test]
    fn tars_sort_by_date_then_addendum() {
        let mut names = [
            "2024-01-02.tar",
            "2024-01-01.10.tar",
            "2024-01-01.tar",
            "2024-01-01.2.tar",
        ];
        names.sort_by_key(|n| tar_order(n));
        assert_eq!(
            names,
            [
                "2024-01-01.tar",
                "2024-01-01.2.tar",
                "2024-01-01.10.tar",
                "2024-01-02.tar"
            ]
        );
        assert_eq!(tar_date("unknown-date.3.tar"), "unknown-date");
    }

    #[test]
    fn a_first_upload_fills_items_in_date_order_with_whole_tars() {
        let tars = [
            tar("2024-01-03.tar", 40),
            tar("2024-01-01.tar", 40),
            tar("2024-01-02.tar", 40),
            tar("2024-01-04.tar", 20),
        ];
        let placed = place(&[], &tars, LIMITS);
        assert_eq!(
            parts(&placed),
            [
                (1, "2024-01-01.tar"),
                (1, "2024-01-02.tar"),
                (2, "2024-01-03.tar"),
                (2, "2024-01-04.tar")
            ]
        );
    }

    #[test]
    fn a_tar_over_the_limit_sits_alone_in_a_fresh_item() {
        let tars = [
            tar("2024-01-01.tar", 10),
            tar("2024-01-02.tar", 500),
            tar("2024-01-03.tar", 10),
        ];
        let placed = place(&[], &tars, LIMITS);
        assert_eq!(
            parts(&placed),
            [
                (1, "2024-01-01.tar"),
                (2, "2024-01-02.tar"),
                (3, "2024-01-03.tar")
            ]
        );
        // First of all: it takes the empty first item, alone.
        let placed = place(&[], &[tar("a.tar", 500), tar("b.tar", 1)], LIMITS);
        assert_eq!(parts(&placed), [(1, "a.tar"), (2, "b.tar")]);
    }

    #[test]
    fn the_file_limit_counts_the_items_own_files() {
        let tars: Vec<LocalTar> = (1..=7)
            .map(|d| tar(&format!("2024-01-0{d}.tar"), 1))
            .collect();
        let placed = place(&[], &tars, LIMITS);
        // 5 files an item: 2 of its own, 3 tars.
        let per_part: Vec<u32> = placed.iter().map(|p| p.part).collect();
        assert_eq!(per_part, [1, 1, 1, 2, 2, 2, 3]);
    }

    #[test]
    fn later_tars_go_to_the_last_item_with_room() {
        let items = [
            ItemLoad {
                part: 1,
                bytes: 90,
                tars: 2,
            },
            ItemLoad {
                part: 2,
                bytes: 50,
                tars: 1,
            },
        ];
        let placed = place(
            &items,
            &[tar("2024-01-01.1.tar", 30), tar("2024-02-01.tar", 30)],
            LIMITS,
        );
        assert_eq!(
            parts(&placed),
            [(2, "2024-01-01.1.tar"), (3, "2024-02-01.tar")]
        );
    }

    #[test]
    fn parts_after_the_first_say_so_in_their_title() {
        let facts = crate::package::item::ItemFacts::new("mapillary-bob-256", true, 3, None, None);
        let tags: Vec<MetaTag> = facts
            .unwrap()
            .tags()
            .into_iter()
            .map(|(t, v)| (t.to_string(), v))
            .collect();
        let title = |part| part_tags(tags.clone(), part)[0].1[0].clone();
        assert_eq!(title(1), "Mapillary images by bob");
        assert_eq!(title(2), "Mapillary images by bob (part 2)");
        let dates = item_dates(["2024-01-01.tar", "2024-01-01.1.tar", "2024-01-02.tar"]);
        assert_eq!(
            dates.into_iter().collect::<Vec<_>>(),
            ["2024-01-01", "2024-01-02"]
        );
    }
}
