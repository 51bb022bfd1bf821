//! Broken and hostile executables next to good ones, as a node's containers
//! bring them: the agent in node mode, under the chart's default memory
//! limit, logs one line per bad binary with a counted reason, keeps running,
//! stays within the limit and still counts the good programs exactly. Every
//! bad file here still runs (the kernel reads only the program headers), so
//! it is what a node can really hold.

use e2e::{
    Proc,
    cgroup::MemCgroup,
    docker::{container, host_pid, image, image_of, require_docker},
    fixture, http_get,
    node::NodeAgent,
    require_root, wait_for,
};
use object::{Object, ObjectSection, ObjectSegment};
use std::{io::Write, path::Path, process::Command, time::Duration};

/// The chart's default memory limit (charts/gmon-agent/values.yaml).
const LIMIT: u64 = 256 << 20;

/// The spawner cut after its last loadable segment: it runs, but its
/// section headers, symbols and DWARF are gone.
fn truncated(good: &[u8]) -> Vec<u8> {
    let file = object::File::parse(good).unwrap();
    let end = file
        .segments()
        .map(|s| s.file_range())
        .map(|(off, len)| off + len)
        .max()
        .unwrap() as usize;
    assert!(end < good.len(), "nothing after the last segment to cut");
    good[..end].to_vec()
}

/// The file range of section `name`.
fn section_range(data: &[u8], name: &str) -> (usize, usize) {
    let file = object::File::parse(data).unwrap();
    let (off, len) = file.section_by_name(name).unwrap().file_range().unwrap();
    (off as usize, len as usize)
}

/// The spawner with a .gopclntab header whose counts and offsets point far
/// beyond the file. The runtime checks only the magic, quantum, pointer
/// size and text start (moduledataverify1), so the program still runs.
fn corrupt_pclntab(good: &[u8]) -> Vec<u8> {
    let mut data = good.to_vec();
    let (off, _) = section_range(&data, ".gopclntab");
    // pcHeader: magic, pads, minLC, ptrSize (8 bytes), then nfunc, nfiles,
    // textStart, funcnameOffset, cuOffset, filetabOffset, pctabOffset,
    // pclnOffset (8 bytes each). textStart is left alone.
    for field in [1, 2, 4, 5, 6, 7, 8] {
        let at = off + 8 * field;
        data[at..at + 8].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
    }
    data
}

/// The spawner with every section but .go.buildinfo (and the section
/// names) claiming 2^62 bytes: a parser that trusts sh_size allocates or
/// reads that much.
fn absurd_sections(good: &[u8]) -> Vec<u8> {
    let mut data = good.to_vec();
    let u16_at = |d: &[u8], at: usize| u16::from_le_bytes(d[at..at + 2].try_into().unwrap());
    let shoff = u64::from_le_bytes(data[0x28..0x30].try_into().unwrap()) as usize;
    let (shentsize, shnum, shstrndx) = (
        u16_at(&data, 0x3a) as usize,
        u16_at(&data, 0x3c) as usize,
        u16_at(&data, 0x3e) as usize,
    );
    let (buildinfo, _) = section_range(&data, ".go.buildinfo");
    let mut changed = 0;
    for i in 1..shnum {
        let sh = shoff + i * shentsize;
        let kind = u32::from_le_bytes(data[sh + 4..sh + 8].try_into().unwrap());
        let offset = u64::from_le_bytes(data[sh + 0x18..sh + 0x20].try_into().unwrap());
        // SHT_NOBITS (8) has no bytes in the file anyway.
        if i == shstrndx || kind == 8 || offset as usize == buildinfo {
            continue;
        }
        data[sh + 0x20..sh + 0x28].copy_from_slice(&(1u64 << 62).to_le_bytes());
        changed += 1;
    }
    assert!(changed > 10, "only {changed} sections changed");
    data
}

/// A .go.buildinfo section claiming Go 1.24.0, as the Go 1.18+ linker
/// writes it: magic, pointer size 8, flags 2 (inline strings), padding to
/// 32 bytes, then the version and module strings with varint lengths.
fn fake_buildinfo() -> Vec<u8> {
    let mut b = b"\xff Go buildinf:".to_vec();
    b.extend([8, 2]);
    b.resize(32, 0);
    for s in ["go1.24.0", "path\tcommand-line-arguments\n"] {
        b.push(s.len() as u8);
        b.extend(s.as_bytes());
    }
    b
}

/// The static C fixture with that section added: Go build information
/// over a body that is not Go.
fn fake_go(dir: &Path) -> std::path::PathBuf {
    let blob = dir.join("buildinfo");
    std::fs::write(&blob, fake_buildinfo()).unwrap();
    let out = dir.join("fake-go");
    let st = Command::new("objcopy")
        .arg(format!("--add-section=.go.buildinfo={}", blob.display()))
        .arg(fixture("c-waiter"))
        .arg(&out)
        .status()
        .expect("objcopy (binutils) is needed");
    assert!(st.success(), "objcopy");
    out
}

#[test]
fn broken_binaries_are_reported_once_and_good_ones_still_counted() {
    if !require_root("hostile binaries test") || !require_docker() {
        return;
    }
    let Some(cg) = MemCgroup::new("gmon-agent-hostile", LIMIT) else {
        eprintln!("skipping: no memory cgroup controller here");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("spawner")).unwrap();
    let write = |name: &str, data: Vec<u8>| {
        let p = tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    };
    // (image, expected reason, whether it prints "ready" like the spawner)
    let bad = [
        (
            image_of(
                &write("truncated", truncated(&good)),
                "gmon-agent-test/truncated:latest",
            ),
            "bad_elf",
            true,
        ),
        (
            image_of(
                &write("corrupt-pclntab", corrupt_pclntab(&good)),
                "gmon-agent-test/corrupt-pclntab:latest",
            ),
            "bad_pclntab",
            true,
        ),
        (
            image_of(
                &write("absurd-sections", absurd_sections(&good)),
                "gmon-agent-test/absurd-sections:latest",
            ),
            "bad_elf",
            true,
        ),
        (
            image_of(&fake_go(tmp.path()), "gmon-agent-test/fake-go:latest"),
            "bad_pclntab",
            false,
        ),
    ];
    // A good Go binary as a 2 GB sparse file: valid, so probed, without
    // the agent reading 2 GB. On the host: an image layer would store the
    // zeros.
    let sparse = tmp.path().join("sparse-2g");
    std::fs::write(&sparse, &good).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    std::fs::set_permissions(&sparse, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let good_img = image("spawner");

    let include = format!("{}/*", tmp.path().display());
    let mut agent = NodeAgent::start(
        Path::new(env!("CARGO_BIN_EXE_gmon-agent")),
        "WARN",
        &["--include", "/app", "--include", &include],
        Some(&cg),
    );
    let uid = |i: usize| format!("0d1a2b3c-4d5e-6f70-8192-a3b4c5d6e{i:03}");
    let mut running = Vec::new();
    let mut expected = Vec::new();
    for (i, (img, reason, says_ready)) in bad.iter().enumerate() {
        // Two containers of each: still one line per binary.
        for j in 0..2 {
            let mut c = container(
                img,
                &uid(i),
                &tmp.path().join(format!("cid{i}-{j}")),
                &["-rounds=1"],
            );
            if *says_ready {
                let line = c.proc.stdout_lines().next().unwrap().unwrap();
                assert!(line.starts_with("ready"), "{img} runs: {line}");
            }
            let pid = host_pid(&c.id);
            if j == 0 {
                expected.push((pid, *reason, img.clone()));
            }
            running.push(c);
        }
    }
    // Each bad binary: one warning, with its pid, counted under its reason.
    let mut left: Vec<u32> = expected.iter().map(|e| e.0).collect();
    while !left.is_empty() {
        let line = agent.wait_line(Duration::from_secs(10), |l| l.contains("cannot probe"));
        let (i, _) = expected
            .iter()
            .enumerate()
            .find(|(_, e)| line.contains(&format!("pid={} ", e.0)))
            .unwrap_or_else(|| panic!("a warning for no first container: {line}"));
        eprintln!("{}: {line}", expected[i].2);
        left.retain(|&p| p != expected[i].0);
    }
    let mut by_reason = std::collections::BTreeMap::<&str, f64>::new();
    for (_, reason, _) in &expected {
        *by_reason.entry(reason).or_default() += 1.0;
    }
    for (reason, n) in &by_reason {
        let got = wait_for(Duration::from_secs(5), || {
            let m = agent.metric(&format!(
                "gmon_agent_attach_failures_total{{reason=\"{reason}\"}}"
            ));
            (m == *n).then_some(m)
        });
        assert_eq!(
            got,
            Some(*n),
            "attach_failures_total{{reason={reason}}}: {}",
            agent.metric(&format!(
                "gmon_agent_attach_failures_total{{reason=\"{reason}\"}}"
            ))
        );
    }
    assert_eq!(
        agent.metric("gmon_agent_attach_failures_total"),
        expected.len() as f64,
        "no other failure counted"
    );

    // The good programs: the 2 GB sparse copy on the host and a container.
    let mut sparse_proc = Proc::spawn(e2e::piped(&sparse).arg("-rounds=5"));
    let mut good_c = container(
        &good_img,
        &uid(99),
        &tmp.path().join("good"),
        &["-rounds=5"],
    );
    let good_pid = host_pid(&good_c.id);
    agent.wait_probed(&[sparse_proc.pid(), good_pid]);
    let mut stdins = Vec::new();
    let mut outs = Vec::new();
    for p in [&mut sparse_proc, &mut good_c.proc] {
        let mut lines = p.stdout_lines();
        assert!(lines.next().unwrap().unwrap().starts_with("ready"));
        let mut s = p.stdin();
        writeln!(s).unwrap();
        stdins.push(s);
        outs.push(lines);
    }
    for lines in &mut outs {
        assert!(lines.map_while(Result::ok).any(|l| l == "done created=20"));
    }
    for pid in [sparse_proc.pid(), good_pid] {
        let rows = wait_for(Duration::from_secs(10), || {
            let (_, body) =
                http_get(agent.port, &format!("/goroutines?format=json&pid={pid}")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let rows: Vec<serde_json::Value> = v["sites"].as_array()?.clone();
            let done = [
                "main.shortWorker",
                "main.longWorker",
                "main.nestedParent",
                "main.nestedChild",
            ]
            .iter()
            .all(|s| rows.iter().any(|r| r["start"] == *s && r["exited"] == 5));
            done.then_some(rows)
        })
        .unwrap_or_else(|| panic!("pid {pid}: 4 sites x 5 goroutines not all seen exiting"));
        for s in [
            "main.shortWorker",
            "main.longWorker",
            "main.nestedParent",
            "main.nestedChild",
        ] {
            let r = rows.iter().find(|r| r["start"] == s).unwrap();
            assert_eq!(r["created"], 5, "pid {pid} {s}: {r}");
            assert_eq!(r["live"], 0, "pid {pid} {s}: {r}");
        }
    }
    assert!(agent.alive(), "the agent died");
    let warnings = agent
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("cannot probe"))
        .count();
    assert_eq!(warnings, expected.len(), "one warning per bad binary");
    let peak = cg.peak();
    eprintln!(
        "agent: peak memory {} MiB of {} MiB, RSS {} KiB, {} fds",
        peak >> 20,
        LIMIT >> 20,
        agent.rss_kib(),
        agent.fds()
    );
    assert_eq!(cg.oom_kills(), 0, "OOM kills in the agent's cgroup");
    assert!(peak < LIMIT, "peak {peak} at the limit");
    drop(stdins);
    drop(outs);
    for c in running.iter_mut().chain([&mut good_c]) {
        drop(c.proc.child.stdin.take());
        let _ = c.proc.child.wait();
    }
    let _ = sparse_proc.child.wait();
    wait_for(Duration::from_secs(10), || {
        (agent.metric("gmon_agent_binaries_attached") == 0.0).then_some(())
    })
    .expect("detached once the programs exited");
    drop(agent);
}
