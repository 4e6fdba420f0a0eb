//! The one checker of the fault scenarios: it reads what every client and
//! worker recorded and what the database holds, and checks the promises
//! (an acknowledged write is stored exactly once, a task is done once with
//! its result, no write ends with an unknown outcome while a node could
//! answer). It prints one line per property with its counts, then fails
//! on the first property broken.

use std::collections::{BTreeMap, HashSet};

use super::chat::History;
use super::{Cluster, Tally};

/// One property's counts and whether it held.
#[derive(Debug)]
pub struct Line {
    pub property: &'static str,
    pub counts: String,
    pub held: bool,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<Line>,
    /// Figures measured, not checked ([`Report::note`]).
    pub notes: Vec<(&'static str, String)>,
}

// === impl Report ===

impl Report {
    /// Every acknowledged `blacklist.add` of `tallies` is stored exactly
    /// once, and nothing is stored that no client sent.
    pub fn writes(&mut self, cluster: &Cluster, tallies: &[Tally]) -> &mut Report {
        let stored = cluster.blacklist_ids();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &stored {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        let acked: Vec<&String> = tallies.iter().flat_map(|t| &t.acked).collect();
        let sent = acked.len() + tallies.iter().map(|t| t.unknown.len()).sum::<usize>();
        let missing = acked
            .iter()
            .filter(|id| !counts.contains_key(id.as_str()))
            .count();
        let twice = counts.values().filter(|&&n| n > 1).count();
        let extra = stored.len().saturating_sub(sent);
        self.lines.push(Line {
            property: "acknowledged writes stored exactly once",
            counts: format!(
                "{} acknowledged, {} stored, {missing} missing, {twice} stored twice, {extra} never sent",
                acked.len(),
                stored.len()
            ),
            held: missing == 0 && twice == 0 && extra == 0,
        });
        self
    }

    /// No write ended *outcome unknown*, and no client saw an error it did
    /// not retry (some node could answer throughout).
    pub fn no_unknown(&mut self, tallies: &[Tally]) -> &mut Report {
        let unknown: usize = tallies.iter().map(|t| t.unknown.len()).sum();
        let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.errors).collect();
        self.lines.push(Line {
            property: "no write left outcome unknown or failed",
            counts: format!(
                "{unknown} unknown, {} errors{}",
                errors.len(),
                errors
                    .first()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
            held: unknown == 0 && errors.is_empty(),
        });
        self
    }

    /// Each task of `job` done once with its result: `expect(seq)` is the
    /// result its payload must give.
    pub fn tasks(
        &mut self,
        cluster: &Cluster,
        job: u64,
        total: usize,
        expect: impl Fn(usize) -> serde_json::Value,
    ) -> &mut Report {
        self.jobs(cluster, &[(job, total)], expect)
    }

    /// [`Report::tasks`] over several jobs, `(job, tasks)`, in one line.
    pub fn jobs(
        &mut self,
        cluster: &Cluster,
        jobs: &[(u64, usize)],
        expect: impl Fn(usize) -> serde_json::Value,
    ) -> &mut Report {
        let (mut done, mut wrong, mut other) = (0, 0, 0);
        for (job, _) in jobs {
            let out = cluster
                .cli("no.session")
                .args(["job", "results", &job.to_string(), "--json"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let rows = v["results"].as_array().cloned().unwrap_or_else(|| vec![v]);
                for r in rows {
                    let seq = r["seq"].as_u64().unwrap_or(u64::MAX) as usize;
                    match r["state"].as_str() {
                        Some("done") if r["result"] == expect(seq) => done += 1,
                        Some("done") => wrong += 1,
                        _ => other += 1,
                    }
                }
            }
        }
        let total: usize = jobs.iter().map(|(_, n)| n).sum();
        self.lines.push(Line {
            property: "every task done once, with its result",
            counts: format!(
                "{total} submitted, {done} done with the right result, {wrong} with another, {other} not done"
            ),
            held: done == total && wrong == 0 && other == 0,
        });
        self
    }

    /// Every acknowledged message delivered exactly once, in order per
    /// sender; a message whose send ended unknown delivered at most once;
    /// nothing delivered that was never sent; no sender or listener error.
    pub fn messages(&mut self, h: &History) -> &mut Report {
        let mut delivered: BTreeMap<(usize, usize, u64), usize> = BTreeMap::new();
        let mut disorder = 0;
        for (to, inbox) in h.inboxes.iter().enumerate() {
            let mut last: BTreeMap<usize, u64> = BTreeMap::new();
            for &(from, n) in inbox {
                *delivered.entry((from, to, n)).or_default() += 1;
                if last.insert(from, n).is_some_and(|prev| prev >= n) {
                    disorder += 1;
                }
            }
        }
        let key = |from: usize, &(to, n): &(usize, u64)| (from, to, n);
        let acked: HashSet<_> = h
            .sent
            .iter()
            .enumerate()
            .flat_map(|(from, s)| s.acked.iter().map(move |m| key(from, m)))
            .collect();
        let unknown: HashSet<_> = h
            .sent
            .iter()
            .enumerate()
            .flat_map(|(from, s)| s.unknown.iter().map(move |m| key(from, m)))
            .collect();
        let missing = acked.iter().filter(|k| !delivered.contains_key(k)).count();
        let twice = delivered.values().filter(|&&c| c > 1).count();
        let extra = delivered
            .keys()
            .filter(|k| !acked.contains(k) && !unknown.contains(k))
            .count();
        let errors: Vec<&String> = h
            .sent
            .iter()
            .flat_map(|s| &s.errors)
            .chain(&h.listen_errors)
            .collect();
        self.lines.push(Line {
            property: "every acknowledged message delivered once, in order per sender",
            counts: format!(
                "{} acknowledged, {} delivered, {missing} missing, {twice} twice, {disorder} out of order, {extra} never sent; {} unknown; {} errors{}",
                acked.len(),
                delivered.len(),
                unknown.len(),
                errors.len(),
                errors
                    .first()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
            held: missing == 0 && twice == 0 && disorder == 0 && extra == 0 && errors.is_empty(),
        });
        self
    }

    /// A figure the scenario measured, printed with `--` instead of
    /// ok or FAIL: it is not checked.
    pub fn note(&mut self, what: &'static str, counts: String) -> &mut Report {
        self.notes.push((what, counts));
        self
    }

    /// A property the scenario measured itself.
    pub fn line(&mut self, property: &'static str, counts: String, held: bool) -> &mut Report {
        self.lines.push(Line {
            property,
            counts,
            held,
        });
        self
    }

    /// The report as printed: the scenario, then a line per property.
    pub fn text(&self, scenario: &str) -> String {
        let mut out = format!("scenario: {scenario}\n");
        for l in &self.lines {
            out += &format!(
                "  {:<4} {}: {}\n",
                if l.held { "ok" } else { "FAIL" },
                l.property,
                l.counts
            );
        }
        for (what, counts) in &self.notes {
            out += &format!("  --   {what}: {counts}\n");
        }
        out
    }

    /// Prints every line, then fails naming the properties broken.
    pub fn assert(&self, scenario: &str) {
        print!("{}", self.text(scenario));
        let broken: Vec<&str> = self
            .lines
            .iter()
            .filter(|l| !l.held)
            .map(|l| l.property)
            .collect();
        assert!(broken.is_empty(), "{scenario}: broken: {broken:?}");
    }
}
