//! gmon's stdout format: one logfmt line per created goroutine, exactly as
//! Go's slog text handler writes it, e.g.
//! `time=2024-03-20T05:10:57.752Z level=INFO msg="goroutine is created" goroutine_id=22 stack.0=runtime.newproc1 ...`
//! (stack.0 is the innermost frame). Exits are logged at DEBUG.

use crate::model::{Goroutine, Sink};
use rustc_hash::FxHashMap;
use std::{fmt::Write as _, io::Write, str::FromStr};
use time::{OffsetDateTime, UtcOffset};

/// slog's levels, in increasing severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "DEBUG" => Ok(Level::Debug),
            "INFO" => Ok(Level::Info),
            "WARN" => Ok(Level::Warn),
            "ERROR" => Ok(Level::Error),
            _ => Err(format!(
                "log level {s:?} is not one of DEBUG, INFO, WARN, ERROR"
            )),
        }
    }
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Converts kernel monotonic timestamps to wall-clock times.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
    tz: UtcOffset,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    /// Call before starting threads: the local offset is only read safely
    /// while the process is single-threaded.
    pub fn new() -> Self {
        Clock {
            offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
            tz: UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC),
        }
    }

    pub fn utc() -> Self {
        Clock {
            offset_ns: 0,
            tz: UtcOffset::UTC,
        }
    }

    /// Wall-clock ns since the Unix epoch.
    fn wall_ns(&self, ktime_ns: u64) -> i128 {
        ktime_ns as i128 + self.offset_ns
    }

    fn at(&self, wall_ns: i128) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(wall_ns)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(self.tz)
    }

    fn wall(&self, ktime_ns: u64) -> OffsetDateTime {
        self.at(self.wall_ns(ktime_ns))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Writes a time as slog does: RFC 3339 with milliseconds.
fn write_time(out: &mut String, t: OffsetDateTime) {
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
    let off = t.offset();
    if off.is_utc() {
        out.push('Z');
    } else {
        let (h, m, _) = off.as_hms();
        let sign = if off.is_negative() { '-' } else { '+' };
        let _ = write!(out, "{sign}{:02}:{:02}", h.abs(), m.abs());
    }
}

/// slog quotes a value that is empty or has a space, '=', '"' or a
/// non-printable character.
fn needs_quoting(s: &str) -> bool {
    s.is_empty()
        || s.chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control() || c == '\u{fffd}')
}

/// Appends `s` as slog writes a string value (Go strconv.Quote rules).
pub fn write_value(out: &mut String, s: &str) {
    if !needs_quoting(s) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The gmon-compatible log sink.
pub struct GmonLog<W: Write> {
    out: W,
    level: Level,
    clock: Clock,
    line: String,
    /// Creation lines differ only in time and goroutine id: the head is
    /// reused within one millisecond (the kernel times it spans), the
    /// stack part per site.
    created_head: (std::ops::Range<u64>, String),
    stacks: FxHashMap<u64, String>,
    /// Lines that could not be written (e.g. stdout closed); exported.
    pub write_errors: u64,
}

impl<W: Write> GmonLog<W> {
    pub fn new(out: W, level: Level, clock: Clock) -> Self {
        GmonLog {
            out,
            level,
            clock,
            line: String::with_capacity(512),
            created_head: (0..0, String::new()),
            stacks: FxHashMap::default(),
            write_errors: 0,
        }
    }

    fn start(&mut self, ktime_ns: u64, level: Level, msg: &str) {
        self.line.clear();
        write_head(&mut self.line, self.clock.wall(ktime_ns), level, msg);
    }

    fn finish(&mut self) {
        self.line.push('\n');
        if self.out.write_all(self.line.as_bytes()).is_err() {
            self.write_errors += 1;
        }
    }

    /// Whether creations get a line (INFO and DEBUG).
    pub fn logs_creations(&self) -> bool {
        self.level <= Level::Info
    }

    /// Write errors since the last call (for the exported counter).
    pub fn take_write_errors(&mut self) -> u64 {
        std::mem::take(&mut self.write_errors)
    }

    pub fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.write_errors += 1;
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for GmonLog<W> {
    fn created(&mut self, g: &Goroutine) {
        // Goroutines found alive at attach were not created now: no line.
        if self.level > Level::Info || g.site.seen_at_attach {
            return;
        }
        // slog shows milliseconds: one head serves a whole wall-clock ms.
        if !self.created_head.0.contains(&g.created_ns) {
            let ms = self.clock.wall_ns(g.created_ns).div_euclid(1_000_000);
            let head = &mut self.created_head.1;
            head.clear();
            write_head(
                head,
                self.clock.at(ms * 1_000_000),
                Level::Info,
                "goroutine is created",
            );
            head.push_str(" goroutine_id=");
            let start = ms * 1_000_000 - self.clock.offset_ns;
            let k = |ns: i128| ns.clamp(0, u64::MAX as i128) as u64;
            self.created_head.0 = k(start)..k(start + 1_000_000);
        }
        let stack = self.stacks.entry(g.site.id).or_insert_with(|| {
            let mut s = String::new();
            for (i, f) in g.site.stack.iter().enumerate() {
                let _ = write!(s, " stack.{i}=");
                write_value(&mut s, &f.function);
            }
            write_proc(&mut s, g);
            s.push('\n');
            s
        });
        // Straight into the writer's buffer: the parts are cached, only
        // the id is new.
        let mut goid = itoa::Buffer::new();
        let parts = [
            self.created_head.1.as_bytes(),
            goid.format(g.goid).as_bytes(),
            stack.as_bytes(),
        ];
        if parts.iter().any(|p| self.out.write_all(p).is_err()) {
            self.write_errors += 1;
        }
    }

    fn exited(&mut self, g: &Goroutine, exited_ns: u64) {
        if self.level > Level::Debug {
            return;
        }
        self.start(exited_ns, Level::Debug, "goroutine is exited");
        let uptime = exited_ns.saturating_sub(g.created_ns) as f64 / 1e9;
        let _ = write!(
            self.line,
            " goroutine_id={} pid={} uptime={uptime}",
            g.goid, g.pid
        );
        for (key, f) in [("created_by", &g.site.creator), ("start", &g.site.start)] {
            if let Some(f) = f {
                let _ = write!(self.line, " {key}=");
                write_value(&mut self.line, &f.function);
            }
        }
        write_proc(&mut self.line, g);
        self.finish();
    }

    fn site_gone(&mut self, site_id: u64) {
        self.stacks.remove(&site_id);
    }
}

/// Node mode: where the goroutine ran (exits already name the pid).
fn write_proc(out: &mut String, g: &Goroutine) {
    let Some(p) = g.site.proc.as_deref() else {
        return;
    };
    if !out.contains(" pid=") {
        let _ = write!(out, " pid={}", p.pid);
    }
    out.push_str(" binary=");
    write_value(out, &p.binary);
    for (key, v) in [("container_id", &p.container_id), ("pod_uid", &p.pod_uid)] {
        if let Some(v) = v {
            let _ = write!(out, " {key}={v}");
        }
    }
    if let Some(k) = &p.k8s {
        for (key, v) in [
            ("namespace", Some(&k.pod.namespace)),
            ("pod", Some(&k.pod.name)),
            ("container", k.container_name.as_ref()),
        ] {
            if let Some(v) = v {
                let _ = write!(out, " {key}=");
                write_value(out, v);
            }
        }
    }
}

/// `time=... level=... msg=...`, the start of every slog line.
fn write_head(out: &mut String, t: OffsetDateTime, level: Level, msg: &str) {
    out.push_str("time=");
    write_time(out, t);
    out.push_str(" level=");
    out.push_str(level.as_str());
    out.push_str(" msg=");
    write_value(out, msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{gobin::Frame, model::Site};

    fn frame(f: &str) -> Frame {
        Frame {
            function: f.into(),
            file: None,
            line: None,
        }
    }

    fn goroutine() -> Goroutine<'static> {
        Goroutine {
            pid: 7,
            goid: 22,
            parent_goid: 1,
            // 2024-03-20T05:10:57.752Z
            created_ns: 1_710_911_457_752_000_000,
            // Leaked: a test's sites live as long as it does.
            site: Box::leak(Box::new(Site {
                id: 1,
                stack: vec![
                    frame("runtime.newproc1"),
                    frame("net/http.(*Server).Serve"),
                    frame("runtime.goexit"),
                ],
                creator: Some(frame("net/http.(*Server).Serve")),
                start: Some(frame("net/http.(*conn).serve")),
                proc: None,
                seen_at_attach: false,
                counts: Default::default(),
            })),
        }
    }

    #[test]
    fn creation_line_matches_gmon() {
        let mut log = GmonLog::new(Vec::new(), Level::Info, Clock::utc());
        log.created(&goroutine());
        log.exited(&goroutine(), 1_710_911_458_752_000_000);
        assert_eq!(
            String::from_utf8(log.into_inner()).unwrap(),
            "time=2024-03-20T05:10:57.752Z level=INFO msg=\"goroutine is created\" goroutine_id=22 \
             stack.0=runtime.newproc1 stack.1=net/http.(*Server).Serve stack.2=runtime.goexit\n"
        );
    }

    #[test]
    fn cached_heads_and_stacks_give_the_same_lines() {
        let mut log = GmonLog::new(Vec::new(), Level::Info, Clock::utc());
        let mut g = goroutine();
        log.created(&g);
        g.goid = 23;
        g.created_ns += 999_999; // 05:10:57.752999: same millisecond
        log.created(&g);
        g.goid = 24;
        g.created_ns += 1; // next millisecond
        log.created(&g);
        let out = String::from_utf8(log.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        let tail =
            "stack.0=runtime.newproc1 stack.1=net/http.(*Server).Serve stack.2=runtime.goexit";
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("time=2024-03-20T05:10:57.752Z "),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].ends_with(&format!("goroutine_id=23 {tail}")),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("time=2024-03-20T05:10:57.753Z "),
            "{}",
            lines[2]
        );
        assert!(
            lines[2].ends_with(&format!("goroutine_id=24 {tail}")),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn exit_line_only_at_debug() {
        let mut log = GmonLog::new(Vec::new(), Level::Debug, Clock::utc());
        log.exited(&goroutine(), 1_710_911_458_752_000_000);
        let s = String::from_utf8(log.into_inner()).unwrap();
        assert_eq!(
            s,
            "time=2024-03-20T05:10:58.752Z level=DEBUG msg=\"goroutine is exited\" goroutine_id=22 pid=7 \
             uptime=1 created_by=net/http.(*Server).Serve start=net/http.(*conn).serve\n"
        );
        let mut quiet = GmonLog::new(Vec::new(), Level::Warn, Clock::utc());
        quiet.created(&goroutine());
        assert!(quiet.into_inner().is_empty());
    }

    #[test]
    fn quoting_follows_slog() {
        let q = |s| {
            let mut o = String::new();
            write_value(&mut o, s);
            o
        };
        assert_eq!(q("main.main.gowrap1"), "main.main.gowrap1");
        assert_eq!(q("net/http.(*conn).serve"), "net/http.(*conn).serve");
        assert_eq!(q(""), "\"\"");
        assert_eq!(q("a b"), "\"a b\"");
        assert_eq!(q("k=v"), "\"k=v\"");
        assert_eq!(q("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!("debug".parse::<Level>(), Ok(Level::Debug));
        assert_eq!("WARN".parse::<Level>(), Ok(Level::Warn));
        assert!("loud".parse::<Level>().is_err());
    }
}
