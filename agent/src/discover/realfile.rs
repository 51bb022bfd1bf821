//! The real file behind a process's executable. Containers run binaries
//! through overlayfs, where every container's mount has its own device
//! number, so /proc/PID/exe of two containers of one image looks like two
//! files. Uprobes attach to the real (lower or upper layer) inode, so
//! probing both would fire every probe twice: the identity that counts is
//! the layer file's, found through the overlay mount's layer directories.

use crate::gobin::BinaryId;
use std::{io, os::unix::fs::MetadataExt, path::Path};

/// The (device, inode) uprobes see for `pid`'s executable.
pub fn real_binary_id(pid: u32) -> io::Result<BinaryId> {
    let exe = format!("/proc/{pid}/exe");
    let meta = std::fs::metadata(&exe)?;
    let seen = BinaryId {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let Some(mount) = overlay_mount(&mountinfo, meta.dev()) else {
        return Ok(seen); // not on overlayfs: what stat says is real
    };
    let path = std::fs::read_link(&exe)?;
    let Ok(rel) = path.strip_prefix(&mount.mount_point) else {
        return Ok(seen);
    };
    // Layer paths are the host's: as they are when the agent runs on the
    // host, else through the host's root (an agent container with hostPID).
    for root in ["/", "/proc/1/root"] {
        for layer in &mount.layers {
            let candidate = Path::new(root)
                .join(layer.trim_start_matches('/'))
                .join(rel);
            if let Ok(m) = std::fs::metadata(&candidate)
                && m.ino() == meta.ino()
            {
                return Ok(BinaryId {
                    dev: m.dev(),
                    ino: m.ino(),
                });
            }
        }
    }
    Ok(seen)
}

#[derive(Debug, PartialEq, Eq)]
struct OverlayMount {
    mount_point: String,
    /// upperdir first, then lowerdirs, as overlayfs looks them up.
    layers: Vec<String>,
}

/// The overlay mount with device `dev` in a mountinfo text.
fn overlay_mount(mountinfo: &str, dev: u64) -> Option<OverlayMount> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major}:{minor}");
    for line in mountinfo.lines() {
        let (pre, post) = line.split_once(" - ")?;
        let f: Vec<&str> = pre.split(' ').collect();
        let p: Vec<&str> = post.split(' ').collect();
        if f.get(2) != Some(&want.as_str()) || p.first() != Some(&"overlay") {
            continue;
        }
        let opts = p.get(2)?;
        let mut layers = Vec::new();
        let mut lower = Vec::new();
        for o in opts.split(',') {
            if let Some(u) = o.strip_prefix("upperdir=") {
                layers.push(unescape(u));
            } else if let Some(l) = o.strip_prefix("lowerdir=") {
                lower.extend(l.split(':').map(unescape));
            }
        }
        layers.extend(lower);
        return Some(OverlayMount {
            mount_point: unescape(f.get(4)?),
            layers,
        });
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
103 53 0:41 / / rw,relatime master:3 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/APD:/var/lib/docker/overlay2/l/D3X,upperdir=/var/lib/docker/overlay2/ef23/diff,workdir=/var/lib/docker/overlay2/ef23/work
104 103 0:43 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
";

    #[test]
    fn finds_the_overlay_by_device_with_upper_layer_first() {
        let m = overlay_mount(SAMPLE, libc::makedev(0, 41)).unwrap();
        assert_eq!(m.mount_point, "/");
        assert_eq!(
            m.layers,
            [
                "/var/lib/docker/overlay2/ef23/diff",
                "/var/lib/docker/overlay2/l/APD",
                "/var/lib/docker/overlay2/l/D3X"
            ]
        );
        assert_eq!(overlay_mount(SAMPLE, libc::makedev(0, 43)), None);
        assert_eq!(overlay_mount(SAMPLE, libc::makedev(8, 1)), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trail\\04"), "/trail\\04");
    }

    #[test]
    fn host_processes_keep_their_stat_identity() {
        let me = real_binary_id(std::process::id()).unwrap();
        let m = std::fs::metadata("/proc/self/exe").unwrap();
        assert_eq!((me.dev, me.ino), (m.dev(), m.ino()));
    }
}
