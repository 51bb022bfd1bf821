//! The long soak, by hand (needs root): SOAK_ROUNDS (default 10) rounds of
//! Go's net/http test suite of every supported release with 200
//! short-lived processes of 10 binaries next to each, under the agent in
//! node mode within the chart's default memory limit. Prints the figures
//! (e2e::soak); the test `soak` runs two rounds and asserts on them.
//!
//! Run: sudo cargo bench -p agent --bench soak

fn main() {
    let rounds = std::env::var("SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let f = e2e::soak::run(
        std::path::Path::new(env!("CARGO_BIN_EXE_gmon-agent")),
        rounds,
    );
    println!("{f}");
}
