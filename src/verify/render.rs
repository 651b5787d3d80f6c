//! The `verify` report for a terminal.

use super::{ProblemKind, VerifyReport};
use crate::units::group_digits;

/// Problems of each kind a text report lists.
const SHOWN: usize = 10;

/// Each kind with its label, in the order a report lists them.
const KINDS: [(ProblemKind, &str); 6] = [
    (ProblemKind::Missing, "missing"),
    (ProblemKind::Corrupt, "corrupt"),
    (ProblemKind::Unreadable, "unreadable (left in place)"),
    (ProblemKind::NotAFile, "not a file (left in place)"),
    (
        ProblemKind::Undecodable,
        "undecodable but matching their SHA-256 (left in place)",
    ),
    (
        ProblemKind::Outside,
        "stored paths outside their collection (refused, nothing moved)",
    ),
];

/// The report for a terminal: the counts, then the first few problems of
/// each kind, then what `repair` did or would do.
pub fn render(report: &VerifyReport, repair: bool) -> String {
    let mut out = format!(
        "verified {} images: {} ok, {} missing, {} corrupt, {} unreadable, {} not a file, \
         {} undecodable, {} outside their collection",
        group_digits(report.checked),
        group_digits(report.ok),
        group_digits(report.missing),
        group_digits(report.corrupt),
        group_digits(report.unreadable),
        group_digits(report.not_a_file),
        group_digits(report.undecodable),
        group_digits(report.outside),
    );
    if report.hashed > 0 {
        out.push_str(&format!(
            " ({} archived before checksums: SHA-256 computed{})",
            group_digits(report.hashed),
            if repair {
                " and stored"
            } else {
                "; run with --repair to store it"
            }
        ));
    }
    if report.held_on_ia_only > 0 {
        out.push_str(&format!(
            "; {} held on the Internet Archive only (their tars removed once archive.org \
             confirmed them: not read here, not missing)",
            group_digits(report.held_on_ia_only)
        ));
    }
    out.push('\n');
    for (kind, label) in KINDS {
        let count = report.count(kind);
        if count == 0 {
            continue;
        }
        out.push_str(&format!("{label}:\n"));
        for problem in report
            .problems
            .iter()
            .filter(|p| p.kind == kind)
            .take(SHOWN)
        {
            out.push_str(&format!(
                "  {} (image {}, job {}): {}\n",
                problem.location, problem.image_id, problem.job_id, problem.detail
            ));
        }
        if count > SHOWN as u64 {
            out.push_str(&format!(
                "  ... and {} more\n",
                group_digits(count - SHOWN as u64)
            ));
        }
    }
    if !report.is_clean() {
        if repair {
            out.push_str(&format!(
                "repair: {} images queued again and their jobs reopened ({} damaged files moved \
                 to the quarantine folder, none deleted); a running daemon fetches them now, or \
                 run `mapillary-downloader download` with the same arguments\n",
                group_digits(report.requeued),
                group_digits(report.quarantined)
            ));
        } else {
            out.push_str(
                "run again with --repair to queue missing and corrupt images for download again \
                 (damaged files are moved to quarantine, never deleted)\n",
            );
        }
    }
    out
}
