//! Renewing image URLs with `GET /?ids=`, and telling deleted images apart.
//!
//! The Graph API fails a whole `?ids=` call (error #803) when any one id no
//! longer exists, naming one of them. Left alone, one deleted image would
//! fail its 49 neighbours' refresh forever. [`renew`] settles every id of a
//! batch with a bounded number of calls: it drops the ids an error names and
//! asks again (k + 1 calls for k deleted ids), and bisects when an error names
//! none it asked for (at most 2n − 1 calls for n ids).

use crate::mapillary::{ImagesAnswer, MapillaryError};
use crate::model::ImageMeta;
use std::collections::HashMap;
use std::future::Future;

/// What a batch's renewal learned about each id.
#[derive(Debug, Default)]
pub struct Renewal {
    /// Fresh metadata (with URLs) of every id the API still has.
    pub fresh: HashMap<String, ImageMeta>,
    /// Ids the API says do not exist: deleted on Mapillary.
    pub deleted: Vec<String>,
    /// Ids whose object the answer had but we could not read, with why:
    /// no proof of deletion, an error of the image.
    pub unreadable: Vec<(String, String)>,
    /// Ids left unsettled because a call failed for another reason, and why.
    pub unsettled: Option<(Vec<String>, MapillaryError)>,
    /// API calls made.
    pub calls: usize,
}

/// Asks `fetch` (one `GET /?ids=` call) about `ids`, isolating ids that no
/// longer exist. An id absent from a successful answer counts as deleted.
/// The first failure of another kind stops the renewal: the ids it had not
/// settled come back in `unsettled` with that error.
pub async fn renew<F, Fut>(ids: Vec<String>, mut fetch: F) -> Renewal
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: Future<Output = Result<ImagesAnswer, MapillaryError>>,
{
    let mut renewal = Renewal::default();
    let mut groups = vec![ids];
    while let Some(group) = groups.pop() {
        if group.is_empty() {
            continue;
        }
        renewal.calls += 1;
        match fetch(group.clone()).await {
            Ok(mut answer) => {
                for id in group {
                    if let Some(meta) = answer.found.remove(&id) {
                        renewal.fresh.insert(id, meta);
                    } else if let Some(reason) = answer.unreadable.remove(&id) {
                        renewal.unreadable.push((id, reason));
                    } else {
                        renewal.deleted.push(id);
                    }
                }
            }
            Err(MapillaryError::Missing { ids: named, .. }) => {
                if group.len() == 1 {
                    renewal.deleted.extend(group);
                    continue;
                }
                let (gone, rest): (Vec<String>, Vec<String>) =
                    group.into_iter().partition(|id| named.contains(id));
                if gone.is_empty() {
                    // The error named none of these: halve and ask each half.
                    let mut rest = rest;
                    let second = rest.split_off(rest.len() / 2);
                    groups.push(second);
                    groups.push(rest);
                } else {
                    renewal.deleted.extend(gone);
                    groups.push(rest);
                }
            }
            Err(error) => {
                let mut left = group;
                left.extend(groups.into_iter().flatten());
                renewal.unsettled = Some((left, error));
                break;
            }
        }
    }
    renewal
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ids(range: std::ops::Range<u64>) -> Vec<String> {
        range.map(|i| i.to_string()).collect()
    }

    /// A fake `?ids=` call: 803 naming the first missing id it was asked
    /// about (or none, when `name_ids` is false), else every id's metadata.
    async fn answer(
        asked: Vec<String>,
        missing: &HashSet<String>,
        name_ids: bool,
    ) -> Result<ImagesAnswer, MapillaryError> {
        if let Some(gone) = asked.iter().find(|id| missing.contains(*id)) {
            return Err(MapillaryError::Missing {
                ids: if name_ids { vec![gone.clone()] } else { vec![] },
                message: "(#803) Some of the aliases you requested do not exist".into(),
            });
        }
        Ok(ImagesAnswer {
            found: asked
                .into_iter()
                .map(|id| {
                    let meta = ImageMeta {
                        id: id.clone(),
                        ..Default::default()
                    };
                    (id, meta)
                })
                .collect(),
            unreadable: HashMap::new(),
        })
    }

    /// An object the answer has but we cannot read is not a deleted image.
    #[tokio::test]
    async fn an_unreadable_object_is_not_counted_deleted() {
        let r = renew(ids(0..3), |asked| async move {
            let mut answer = answer(asked, &HashSet::new(), true).await?;
            answer.found.remove("1");
            answer
                .unreadable
                .insert("1".into(), "captured_at: invalid type".into());
            Ok(answer)
        })
        .await;
        assert!(r.deleted.is_empty(), "{:?}", r.deleted);
        assert_eq!(
            r.unreadable,
            vec![("1".to_string(), "captured_at: invalid type".to_string())]
        );
        assert_eq!(r.fresh.len(), 2);
    }

    async fn run(n: u64, missing: &[u64], name_ids: bool) -> Renewal {
        let missing: HashSet<String> = missing.iter().map(u64::to_string).collect();
        renew(ids(0..n), |asked| {
            let missing = missing.clone();
            async move { answer(asked, &missing, name_ids).await }
        })
        .await
    }

    #[tokio::test]
    async fn a_named_deleted_id_costs_one_more_call() {
        let r = run(50, &[17], true).await;
        assert_eq!(r.deleted, vec!["17".to_string()]);
        assert_eq!(r.fresh.len(), 49);
        assert_eq!(r.calls, 2);
        assert!(r.unsettled.is_none());
    }

    #[tokio::test]
    async fn forty_nine_deleted_of_fifty_still_renews_the_live_one() {
        let missing: Vec<u64> = (0..50).filter(|i| *i != 33).collect();
        let r = run(50, &missing, true).await;
        assert_eq!(r.fresh.keys().collect::<Vec<_>>(), vec!["33"]);
        assert_eq!(r.deleted.len(), 49);
        assert!(r.calls <= 51, "{} calls", r.calls);
    }

    #[tokio::test]
    async fn unnamed_errors_bisect_within_two_n_calls() {
        for missing in [vec![0], vec![49], vec![3, 40], (0..50).collect::<Vec<_>>()] {
            let r = run(50, &missing, false).await;
            let mut deleted: Vec<u64> = r.deleted.iter().map(|d| d.parse().unwrap()).collect();
            deleted.sort_unstable();
            assert_eq!(deleted, missing);
            assert_eq!(r.fresh.len(), 50 - missing.len());
            assert!(r.calls < 100, "{} calls for {missing:?}", r.calls);
        }
    }

    #[tokio::test]
    async fn another_failure_leaves_the_rest_unsettled() {
        let mut calls = 0;
        let r = renew(ids(0..10), |asked| {
            calls += 1;
            let first = calls == 1;
            async move {
                if first {
                    Err(MapillaryError::Missing {
                        ids: vec!["4".into()],
                        message: "803".into(),
                    })
                } else {
                    let _ = asked;
                    Err(MapillaryError::Transient("503".into()))
                }
            }
        })
        .await;
        assert_eq!(r.deleted, vec!["4".to_string()]);
        let (left, error) = r.unsettled.expect("unsettled");
        assert_eq!(left.len(), 9);
        assert!(matches!(error, MapillaryError::Transient(_)));
    }

    #[tokio::test]
    async fn ids_absent_from_a_success_are_deleted() {
        let r = renew(ids(0..3), |asked| async move {
            let mut answer = answer(asked, &HashSet::new(), true).await?;
            answer.found.remove("1");
            Ok(answer)
        })
        .await;
        assert_eq!(r.deleted, vec!["1".to_string()]);
        assert_eq!(r.calls, 1);
    }
}
