//! Parser for `.go.buildinfo`: the Go release and main module a binary was
//! built with (what `go version -m` prints).

/// `\xff Go buildinf:` — the section's 14-byte magic.
const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Header flag: version and module info are inline varint strings (Go 1.18+).
const FLAG_INLINE: u8 = 0x2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Go build information (.go.buildinfo); this is not a Go binary")]
    Missing,
    #[error(".go.buildinfo is truncated or corrupt")]
    Corrupt,
    #[error("built with a Go release before 1.18 (old build information format)")]
    PreGo118,
    #[error("unrecognised Go version string {0:?}")]
    BadVersion(String),
}

/// A Go release such as go1.23.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    /// Parses `go1.23.5`, `go1.24rc1`, `go1.22` or `devel go1.25-abc ...`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.strip_prefix("devel ").unwrap_or(s);
        let s = s.strip_prefix("go")?;
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let mut parts = s[..end].split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = match parts.next() {
            Some(p) => p.ok()?,
            None => 0,
        };
        Some(GoVersion {
            major,
            minor,
            patch,
        })
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What `.go.buildinfo` says about a binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// The raw version string, e.g. `go1.23.5`.
    pub version_string: String,
    pub version: GoVersion,
    /// Main package path (`path` line of the module info), if recorded.
    pub main_path: Option<String>,
    /// Main module path and version (`mod` line), if recorded.
    pub main_module: Option<String>,
    /// Build settings (`build` lines), e.g. ("-buildmode", "pie").
    pub settings: Vec<(String, String)>,
}

/// Parses the contents of the `.go.buildinfo` section.
pub fn parse(section: &[u8]) -> Result<BuildInfo, Error> {
    if section.len() < 32 || &section[..14] != MAGIC {
        return Err(Error::Missing);
    }
    let flags = section[15];
    if flags & FLAG_INLINE == 0 {
        return Err(Error::PreGo118);
    }
    let mut rest = &section[32..];
    let version_string =
        String::from_utf8_lossy(read_bytes(&mut rest).ok_or(Error::Corrupt)?).into_owned();
    let modinfo = read_bytes(&mut rest).unwrap_or_default();
    let version =
        GoVersion::parse(&version_string).ok_or(Error::BadVersion(version_string.clone()))?;
    let mut info = BuildInfo {
        version_string,
        version,
        main_path: None,
        main_module: None,
        settings: Vec::new(),
    };
    // The module info is framed by 16-byte sentinels; its lines are
    // tab-separated: "path\tP", "mod\tM\tV\tSUM", "build\tK=V".
    let body = match modinfo.len() {
        n if n >= 32 => String::from_utf8_lossy(&modinfo[16..n - 16]).into_owned(),
        _ => String::new(),
    };
    for line in body.lines() {
        let mut f = line.split('\t');
        match f.next() {
            Some("path") => info.main_path = f.next().map(str::to_owned),
            Some("mod") => {
                info.main_module = Some(f.take(2).collect::<Vec<_>>().join("@"));
            }
            Some("build") => {
                if let Some((k, v)) = f.next().and_then(|kv| kv.split_once('=')) {
                    info.settings.push((k.to_owned(), v.to_owned()));
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

fn read_bytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len: u64 = 0;
    let mut i = 0;
    loop {
        let c = *b.get(i)?;
        len |= ((c & 0x7f) as u64) << (7 * i);
        i += 1;
        if c & 0x80 == 0 {
            break;
        }
        if i >= 10 {
            return None;
        }
    }
    let end = i.checked_add(usize::try_from(len).ok()?)?;
    let s = b.get(i..end)?;
    *b = &b[end..];
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(version: &str, modinfo: &str) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(8);
        b.push(FLAG_INLINE);
        b.resize(32, 0);
        for s in [version, modinfo] {
            b.push(s.len() as u8);
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    #[test]
    fn parses_versions() {
        let v = |s| GoVersion::parse(s);
        assert_eq!(v("go1.23.5").unwrap().to_string(), "go1.23.5");
        assert_eq!(v("go1.24rc1").unwrap().minor, 24);
        assert_eq!(v("go1.22").unwrap().patch, 0);
        assert_eq!(v("devel go1.25-abcdef Tue").unwrap().minor, 25);
        assert_eq!(v("1.23"), None);
        assert!(v("go1.19.8").unwrap() < v("go1.23.0").unwrap());
    }

    #[test]
    fn parses_inline_buildinfo() {
        let sentinel = "0123456789abcdef";
        let modinfo = format!(
            "{sentinel}path\tex/cmd\nmod\tex\t(devel)\t\nbuild\t-buildmode=pie\n{sentinel}"
        );
        let info = parse(&section("go1.23.5", &modinfo)).unwrap();
        assert_eq!(info.version.minor, 23);
        assert_eq!(info.main_path.as_deref(), Some("ex/cmd"));
        assert_eq!(info.main_module.as_deref(), Some("ex@(devel)"));
        assert_eq!(
            info.settings,
            vec![("-buildmode".to_owned(), "pie".to_owned())]
        );
    }

    #[test]
    fn rejects_bad_sections() {
        assert!(matches!(parse(b"nope"), Err(Error::Missing)));
        let mut old = section("go1.10", "");
        old[15] = 0;
        assert!(matches!(parse(&old), Err(Error::PreGo118)));
        let mut cut = section("go1.23.5", "");
        cut.truncate(36);
        assert!(matches!(parse(&cut), Err(Error::Corrupt)));
        assert!(matches!(
            parse(&section("gox", "")),
            Err(Error::BadVersion(_))
        ));
    }
}
