//! `gmon-agent top`: the agent's /goroutines as a live terminal table, so
//! a person on the node sees a leak in seconds: every creation site with
//! its live goroutines, their growth per minute over the last minute, the
//! oldest one's age, and in red the sites whose live count has only grown
//! since top started watching them (over the last minute at most) while
//! none of their goroutines went away: their oldest goroutine is older
//! than the window. Healthy sites whose short-lived goroutines happen to
//! rise a few samples in a row are not marked: their oldest is young.

use crate::export::view::{self, Row, Sort, View};
use clap::Parser;
use std::{
    collections::{HashMap, VecDeque},
    io::{IsTerminal, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

#[derive(Debug, Parser)]
#[command(
    name = "gmon-agent top",
    about = "Live goroutines per creation site, from a running gmon-agent"
)]
pub struct TopCli {
    /// The agent's metrics endpoint
    #[arg(long, default_value = "127.0.0.1:5500", value_name = "HOST:PORT")]
    pub addr: String,
    /// Order: live goroutines, oldest age, or growth per minute
    #[arg(long, value_enum, default_value = "live")]
    pub sort: Sort,
    /// Only this pod (NAMESPACE/NAME)
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
    /// Only this process
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Seconds between refreshes
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub interval: f64,
    /// Rows shown
    #[arg(long, default_value_t = 25, value_name = "N")]
    pub rows: usize,
    /// Print one screen after this many refreshes and exit (no screen control)
    #[arg(long, value_name = "N")]
    pub once: Option<u32>,
}

/// Growth is measured over this window.
const WINDOW: Duration = Duration::from_secs(60);

type Key = (u32, String, Option<String>, String);

fn key(r: &Row) -> Key {
    (
        r.pid,
        r.creator.clone(),
        r.creator_at.clone(),
        r.start.clone(),
    )
}

/// Live counts per site over the last minute.
#[derive(Default)]
pub struct History {
    seen: HashMap<Key, VecDeque<(Instant, u64)>>,
}

/// What the history says about one site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// Live goroutines gained per minute over the window (negative: lost).
    pub per_minute: f64,
    /// The live count never fell over the window and rose, and the oldest
    /// goroutine is older than the window.
    pub only_grows: bool,
}

impl History {
    /// Adds a sample of every site at `at`; sites not in it are forgotten.
    pub fn add(&mut self, at: Instant, rows: &[Row]) {
        let mut next = HashMap::with_capacity(rows.len());
        for r in rows {
            let k = key(r);
            let mut h = self.seen.remove(&k).unwrap_or_default();
            h.push_back((at, r.live));
            while h.len() > 2 && at.duration_since(h[1].0) >= WINDOW {
                h.pop_front();
            }
            next.insert(k, h);
        }
        self.seen = next;
    }

    pub fn trend(&self, r: &Row) -> Trend {
        let Some(h) = self.seen.get(&key(r)) else {
            return Trend {
                per_minute: 0.0,
                only_grows: false,
            };
        };
        let (first, last) = (h[0], h[h.len() - 1]);
        let secs = last.0.duration_since(first.0).as_secs_f64();
        let per_minute = match secs > 0.0 {
            true => (last.1 as f64 - first.1 as f64) / secs * 60.0,
            false => 0.0,
        };
        let never_fell = h.iter().zip(h.iter().skip(1)).all(|(a, b)| b.1 >= a.1);
        Trend {
            per_minute,
            only_grows: never_fell && last.1 > first.1 && r.oldest_age_seconds >= secs,
        }
    }
}

/// Fetches the view (plain HTTP/1.0; the endpoint is local and unencrypted).
pub fn fetch(addr: &str, cli: &TopCli) -> Result<View, String> {
    let mut path = "/goroutines?format=json".to_owned();
    if let Some(p) = &cli.pod {
        path.push_str(&format!("&pod={}", p.replace('/', "%2F")));
    }
    if let Some(p) = cli.pid {
        path.push_str(&format!("&pid={p}"));
    }
    let unreachable = |e: std::io::Error| {
        format!(
            "cannot reach gmon-agent at {addr}: {e}; is it running, with its metrics port there (--addr HOST:PORT)?"
        )
    };
    let mut s = TcpStream::connect(addr).map_err(unreachable)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(unreachable)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(unreachable)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(unreachable)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} answered something that is not HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!(
            "{addr}/goroutines answered {status}: is this gmon-agent 0.2 or newer?"
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("{addr}/goroutines: unreadable answer: {e}"))
}

/// One screen: a header line and the table, `rows` sites at most.
pub fn render(v: &View, h: &History, cli: &TopCli, colour: bool) -> String {
    let mut rows: Vec<&Row> = v.sites.iter().collect();
    if cli.sort == Sort::Rate {
        rows.sort_by(|a, b| {
            h.trend(b)
                .per_minute
                .partial_cmp(&h.trend(a).per_minute)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    let live: u64 = v.sites.iter().map(|r| r.live).sum();
    let growing = v.sites.iter().filter(|r| h.trend(r).only_grows).count();
    let mut out = format!(
        "gmon-agent top - {} - {} sites, {live} live goroutines, {growing} only growing - sort: {:?}\n\n",
        cli.addr,
        v.sites.len(),
        cli.sort
    );
    out.push_str(&format!(
        "{:>8} {:>9} {:>9} {:>10}  {:<44} {:<28} PROCESS\n",
        "LIVE", "GROWTH/m", "OLDEST", "CREATED", "GO STATEMENT", "START"
    ));
    for r in rows.into_iter().take(cli.rows) {
        let t = h.trend(r);
        let at = match &r.creator_at {
            Some(a) => format!("{} {}", r.creator, view::short_path(a)),
            None => r.creator.clone(),
        };
        let line = format!(
            "{:>8} {:>+9.1} {:>9} {:>10}  {:<44} {:<28} {}",
            r.live,
            t.per_minute,
            view::human_age(r.oldest_age_seconds),
            r.created,
            at,
            r.start,
            view::owner(r)
        );
        match (colour, t.only_grows) {
            (true, true) => out.push_str(&format!("\x1b[31m{line}\x1b[0m\n")),
            (false, true) => out.push_str(&format!("{line}  <- only grows\n")),
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

/// Runs `top` until interrupted (or `--once` refreshes).
pub fn main(cli: TopCli) -> Result<(), String> {
    if cli.interval.is_nan() || cli.interval <= 0.0 {
        return Err("--interval must be a positive number of seconds".into());
    }
    let every = Duration::from_secs_f64(cli.interval);
    let tty = std::io::stdout().is_terminal();
    let mut h = History::default();
    let mut n = 0u32;
    loop {
        let mut v = fetch(&cli.addr, &cli)?;
        view::sort(&mut v.sites, cli.sort);
        h.add(Instant::now(), &v.sites);
        n += 1;
        match cli.once {
            Some(k) if n >= k => {
                print!("{}", render(&v, &h, &cli, tty));
                return Ok(());
            }
            Some(_) => {}
            None => {
                let screen = render(&v, &h, &cli, tty);
                let mut out = std::io::stdout().lock();
                // Home and clear, then the screen.
                let _ = write!(out, "\x1b[H\x1b[2J{screen}");
                let _ = out.flush();
            }
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(live: u64) -> Row {
        Row {
            pid: 1,
            creator: "main.leak".into(),
            start: "main.wait".into(),
            live,
            oldest_age_seconds: 3600.0,
            ..Row::default()
        }
    }

    #[test]
    fn growth_per_minute_and_only_grows() {
        let mut h = History::default();
        let t0 = Instant::now();
        for (s, live) in [(0, 10), (10, 12), (20, 12), (30, 20)] {
            h.add(t0 + Duration::from_secs(s), &[row(live)]);
        }
        let t = h.trend(&row(20));
        assert!((t.per_minute - 20.0).abs() < 1e-9, "{t:?}");
        assert!(t.only_grows);
        // One fall and it is not a leak shape.
        h.add(t0 + Duration::from_secs(40), &[row(19)]);
        assert!(!h.trend(&row(19)).only_grows);
        // Flat is not growing either.
        let mut flat = History::default();
        flat.add(t0, &[row(4)]);
        flat.add(t0 + Duration::from_secs(1), &[row(4)]);
        assert!(!flat.trend(&row(4)).only_grows);
        // Rising with young goroutines only: turnover, not a leak.
        let young = Row {
            oldest_age_seconds: 0.05,
            ..row(20)
        };
        assert!(!h.trend(&young).only_grows || h.trend(&young).per_minute < 0.0);
        let mut rising = History::default();
        rising.add(t0, &[row(1)]);
        rising.add(t0 + Duration::from_secs(5), &[row(3)]);
        assert!(rising.trend(&row(3)).only_grows);
        assert!(
            !rising
                .trend(&Row {
                    oldest_age_seconds: 0.05,
                    ..row(3)
                })
                .only_grows
        );
    }

    #[test]
    fn the_window_is_a_minute() {
        let mut h = History::default();
        let t0 = Instant::now();
        // A drop long ago is forgotten once a minute has passed.
        h.add(t0, &[row(50)]);
        for s in 1..=70 {
            h.add(t0 + Duration::from_secs(s), &[row(s)]);
        }
        let t = h.trend(&row(70));
        assert!(t.only_grows, "{t:?}");
        assert!((t.per_minute - 60.0).abs() < 1.5, "{t:?}");
    }
}
