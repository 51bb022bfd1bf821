//! The soak, two rounds (bounded for CI): Go's net/http test suite of every
//! supported release, and 200 short-lived processes of 10 binaries, under
//! the agent in node mode within the chart's default memory limit
//! (e2e::soak). `cargo bench -p agent --bench soak` runs more rounds.

use e2e::{require_root, soak};

#[test]
fn net_http_suites_and_churn_pass_under_the_agent_and_leave_nothing() {
    if !require_root("soak") {
        return;
    }
    let f = soak::run(std::path::Path::new(env!("CARGO_BIN_EXE_gmon-agent")), 2);
    eprintln!("{f}");
    assert_eq!(
        f.suite_passed, f.suite_runs,
        "every net/http suite passes traced"
    );
    assert_eq!(
        f.short_lived,
        200 * f.suite_runs,
        "every short-lived spawner finished"
    );
    assert!(
        f.links_during > 0,
        "no uprobe link seen while the suites ran"
    );
    assert_eq!(f.links_end, 0, "uprobe links left for exited binaries");
    assert_eq!(f.attached_end, 0.0, "binaries still attached");
    assert_eq!(
        f.tracked_end, f.tracked_start,
        "processes_tracked back to baseline"
    );
    assert_eq!(f.oom_kills, 0);
    assert!(f.cgroup_peak < soak::LIMIT);
    assert_eq!(f.lost, 0.0, "events lost");
    assert_eq!(f.attach_failures, 0.0);
    // Each suite creates thousands of goroutines; each spawner 4 and more.
    assert!(f.goroutines_created > 10_000.0, "{}", f.goroutines_created);
    // Stated bounds: no fd kept, RSS within 16 MiB of the start.
    assert!(
        f.fds_end <= f.fds_start,
        "fds {} -> {}",
        f.fds_start,
        f.fds_end
    );
    assert!(
        f.rss_kib_end < f.rss_kib_start + 16 * 1024,
        "RSS {} -> {} KiB",
        f.rss_kib_start,
        f.rss_kib_end
    );
}
