//! Each bench's figures beside their targets, one line each, and the verdict.
//!
//! `scripts/bench` runs every bench and makes one table of what they found:
//! with `BENCH_REPORT=<file>` set, each figure is also appended to that file
//! as one tab-separated row (bench, figure, target, measured, verdict), so
//! the table never depends on the wording of a bench's printout.

use std::io::Write;

/// The figures one bench run found, and the targets it missed.
pub struct Figures {
    bench: String,
    missed: Vec<String>,
}

impl Figures {
    /// The figures of bench `bench` (its name in `benches/`).
    pub fn new(bench: &str) -> Figures {
        Figures {
            bench: bench.to_string(),
            missed: Vec::new(),
        }
    }

    /// A figure against its target: printed, recorded, and counted if missed.
    pub fn check(&mut self, figure: &str, target: &str, measured: &str, met: bool) {
        let verdict = if met { "MET" } else { "MISSED" };
        println!("  {figure:<52} {measured:>24}  (target {target})  {verdict}");
        if !met {
            self.missed.push(figure.to_string());
        }
        self.record(figure, target, measured, verdict);
    }

    /// A figure with no target of its own (a floor, a breakdown): printed
    /// and recorded for the table, never a miss.
    pub fn info(&mut self, figure: &str, measured: &str) {
        println!("  {figure:<52} {measured:>24}");
        self.record(figure, "-", measured, "info");
    }

    /// Ok when every target was met; otherwise an error naming the misses
    /// (the bench then exits non-zero).
    pub fn finish(self) -> anyhow::Result<()> {
        if self.missed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("targets missed: {}", self.missed.join(", "))
        }
    }

    fn record(&self, figure: &str, target: &str, measured: &str, verdict: &str) {
        let Some(path) = std::env::var_os("BENCH_REPORT") else {
            return;
        };
        let clean = |s: &str| s.replace(['\t', '\n'], " ");
        let row = format!(
            "{}\t{}\t{}\t{}\t{}\n",
            clean(&self.bench),
            clean(figure),
            clean(target),
            clean(measured),
            verdict
        );
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(row.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot append to BENCH_REPORT {}: {e}", path.display());
        }
    }
}
