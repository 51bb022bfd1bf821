//! /goroutines: the creation sites a person reads when a pod's goroutines
//! climb. Housekeeping publishes every site once a second; the endpoint
//! sorts, filters and renders them (a text table, or JSON for
//! `gmon-agent top` and scripts). Sites are merged per process and `go`
//! statement (creation stacks apart), so goroutines found alive at attach
//! and those seen created count in one row.

use crate::model::SiteLive;
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    fmt::Write,
    sync::{Arc, Mutex},
};

/// One creation site in one process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub pid: u32,
    /// "namespace/name" of the pod, in node mode once it is known.
    pub pod: Option<String>,
    pub container: Option<String>,
    pub binary: Option<String>,
    /// Function holding the `go` statement, and its file:line.
    pub creator: String,
    pub creator_at: Option<String>,
    /// The goroutine's own function.
    pub start: String,
    pub live: u64,
    pub created: u64,
    pub exited: u64,
    /// Of `created`, goroutines found alive when the process was probed.
    pub seen_at_attach: u64,
    /// Age of the oldest live goroutine in seconds (a lower bound for
    /// goroutines found alive at attach); 0 when none is live.
    pub oldest_age_seconds: f64,
}

/// Every site, as last published.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct View {
    /// Unix time of the publication, in ms.
    pub taken_unix_ms: u64,
    pub sites: Vec<Row>,
}

/// How to order the rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// Most live goroutines first.
    #[default]
    Live,
    /// Oldest live goroutine first.
    Age,
    /// Most created first (the client sorts by growth rate).
    Rate,
}

/// The endpoint's query string.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Query {
    pub format: Option<String>,
    #[serde(default)]
    pub sort: Sort,
    pub limit: Option<usize>,
    /// "namespace/name".
    pub pod: Option<String>,
    pub pid: Option<u32>,
}

/// What housekeeping publishes and the endpoint reads.
#[derive(Clone, Default)]
pub struct SitesView(Arc<Mutex<Arc<View>>>);

impl SitesView {
    /// Replaces the view with `sites` (merged per process and `go`
    /// statement); `now_ns` is the kernel's clock.
    pub fn publish(&self, sites: &[SiteLive], now_ns: u64) {
        let mut rows: HashMap<(u32, String, Option<String>, String), Row> = HashMap::new();
        for l in sites {
            let s = &l.site;
            let frame = |f: &Option<crate::gobin::Frame>| {
                f.as_ref()
                    .map(|f| f.function.clone())
                    .unwrap_or_else(|| "unknown".into())
            };
            let at = s
                .creator
                .as_ref()
                .and_then(|f| Some(format!("{}:{}", f.file.as_deref()?, f.line?)));
            let key = (l.pid, frame(&s.creator), at, frame(&s.start));
            let r = rows.entry(key.clone()).or_insert_with(|| {
                let p = s.proc.as_deref();
                let k8s = p.and_then(|p| p.k8s.as_ref());
                Row {
                    pid: l.pid,
                    pod: k8s.map(|k| format!("{}/{}", k.pod.namespace, k.pod.name)),
                    container: k8s.and_then(|k| k.container_name.clone()),
                    binary: p.map(|p| p.binary.clone()),
                    creator: key.1.clone(),
                    creator_at: key.2.clone(),
                    start: key.3.clone(),
                    ..Row::default()
                }
            });
            let (created, exited) = (s.counts.created(), s.counts.exited());
            r.live += l.live;
            r.created += created;
            r.exited += exited;
            if s.seen_at_attach {
                r.seen_at_attach += created;
            }
            if let Some(c) = l.oldest_ns {
                r.oldest_age_seconds = r
                    .oldest_age_seconds
                    .max(now_ns.saturating_sub(c) as f64 / 1e9);
            }
        }
        let view = View {
            taken_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default(),
            // The overflow site and sites of new processes before their
            // first goroutine: nothing to show.
            sites: rows
                .into_values()
                .filter(|r| r.created > 0 || r.live > 0)
                .collect(),
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
    }

    /// The last view, filtered and sorted as `q` asks.
    pub fn query(&self, q: &Query) -> View {
        let view = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut sites: Vec<Row> = view
            .sites
            .iter()
            .filter(|r| q.pid.is_none_or(|p| r.pid == p))
            .filter(|r| q.pod.as_ref().is_none_or(|p| r.pod.as_ref() == Some(p)))
            .cloned()
            .collect();
        sort(&mut sites, q.sort);
        if let Some(n) = q.limit {
            sites.truncate(n);
        }
        View {
            taken_unix_ms: view.taken_unix_ms,
            sites,
        }
    }
}

/// Orders rows by `by`, ties by pid and creator (a stable screen).
pub fn sort(rows: &mut [Row], by: Sort) {
    rows.sort_by(|a, b| {
        let key = |r: &Row| match by {
            Sort::Live => (r.live as f64, r.oldest_age_seconds),
            Sort::Age => (r.oldest_age_seconds, r.live as f64),
            Sort::Rate => (r.created as f64, r.live as f64),
        };
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.pid.cmp(&b.pid))
            .then(a.creator.cmp(&b.creator))
            .then(a.start.cmp(&b.start))
    });
}

/// A duration in seconds as a person reads it: 45s, 12m03s, 3h07m, 2d04h.
pub fn human_age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Where a row's goroutines run: the pod, else the pid and binary.
pub fn owner(r: &Row) -> String {
    match (&r.pod, &r.binary) {
        (Some(p), _) => format!("{p} ({})", r.pid),
        (None, Some(b)) => format!("{} {b}", r.pid),
        (None, None) => r.pid.to_string(),
    }
}

/// The plain-text table /goroutines serves by default.
pub fn render_text(v: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8} {:>10} {:>10} {:>9} {:>9}  {:<40} {:<30} PROCESS",
        "LIVE", "CREATED", "EXITED", "ATTACH", "OLDEST", "GO STATEMENT", "START"
    );
    for r in &v.sites {
        let at = r
            .creator_at
            .as_deref()
            .map(short_path)
            .map(|a| format!("{} {a}", r.creator))
            .unwrap_or_else(|| r.creator.clone());
        let _ = writeln!(
            out,
            "{:>8} {:>10} {:>10} {:>9} {:>9}  {:<40} {:<30} {}",
            r.live,
            r.created,
            r.exited,
            r.seen_at_attach,
            human_age(r.oldest_age_seconds),
            at,
            r.start,
            owner(r)
        );
    }
    out
}

/// The last two components of a source path (enough to find the file).
pub fn short_path(p: &str) -> String {
    let mut parts: Vec<&str> = p.rsplitn(3, '/').collect();
    parts.truncate(2);
    parts.reverse();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: u32, creator: &str, live: u64, age: f64, created: u64) -> Row {
        Row {
            pid,
            creator: creator.into(),
            start: "main.f".into(),
            live,
            created,
            oldest_age_seconds: age,
            ..Row::default()
        }
    }

    #[test]
    fn sorts_by_live_age_or_created_with_stable_ties() {
        let mut rows = vec![
            row(2, "b", 5, 10.0, 100),
            row(1, "a", 9, 1.0, 10),
            row(1, "c", 5, 20.0, 1000),
        ];
        sort(&mut rows, Sort::Live);
        let order = |rows: &[Row]| rows.iter().map(|r| r.creator.clone()).collect::<Vec<_>>();
        assert_eq!(order(&rows), ["a", "c", "b"]);
        sort(&mut rows, Sort::Age);
        assert_eq!(order(&rows), ["c", "b", "a"]);
        sort(&mut rows, Sort::Rate);
        assert_eq!(order(&rows), ["c", "b", "a"]);
    }

    #[test]
    fn ages_and_paths_read_short() {
        assert_eq!(human_age(45.9), "45s");
        assert_eq!(human_age(723.0), "12m03s");
        assert_eq!(human_age(3.0 * 3600.0 + 7.0 * 60.0), "3h07m");
        assert_eq!(human_age(2.0 * 86400.0 + 4.0 * 3600.0), "2d04h");
        assert_eq!(short_path("/src/app/leaky/main.go:27"), "leaky/main.go:27");
        assert_eq!(short_path("main.go:3"), "main.go:3");
    }
}
