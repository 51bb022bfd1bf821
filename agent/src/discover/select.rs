//! Which discovered processes node mode probes: executable path globs to
//! include and exclude, and whether containers, the host or both count.
//! Set on the command line or in the YAML config file (`crate::config`).

use super::cgroup::Container;
use globset::{Glob, GlobSet, GlobSetBuilder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad glob {0:?}: {1}")]
    Glob(String, globset::Error),
}

/// Where probed processes may run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Host processes and containers.
    #[default]
    All,
    /// Only processes in containers (a container id in their cgroup).
    Containers,
    /// Only processes outside containers.
    Host,
}

/// Why a process is not probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    NotIncluded,
    Excluded,
    OutOfScope,
}

/// A compiled selection.
#[derive(Debug)]
pub struct Selection {
    include: Option<GlobSet>,
    exclude: GlobSet,
    scope: Scope,
}

fn compile(globs: &[String]) -> Result<GlobSet, Error> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(Glob::new(g).map_err(|e| Error::Glob(g.clone(), e))?);
    }
    b.build().map_err(|e| Error::Glob(globs.join(","), e))
}

impl Selection {
    /// Globs match the executable's path as the process sees it (inside its
    /// container). No include globs means every executable.
    pub fn new(include: &[String], exclude: &[String], scope: Scope) -> Result<Self, Error> {
        Ok(Selection {
            include: (!include.is_empty())
                .then(|| compile(include))
                .transpose()?,
            exclude: compile(exclude)?,
            scope,
        })
    }

    pub fn check(&self, exe: &str, container: &Container) -> Result<(), Rejection> {
        let in_container = container.id.is_some();
        match (self.scope, in_container) {
            (Scope::Containers, false) | (Scope::Host, true) => return Err(Rejection::OutOfScope),
            _ => {}
        }
        if self.include.as_ref().is_some_and(|s| !s.is_match(exe)) {
            return Err(Rejection::NotIncluded);
        }
        if self.exclude.is_match(exe) {
            return Err(Rejection::Excluded);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        Container {
            id: Some("a".repeat(64)),
            pod_uid: None,
        }
    }

    #[test]
    fn globs_and_scope() {
        let s = Selection::new(
            &["/usr/local/bin/*".into()],
            &["**/kubectl".into()],
            Scope::All,
        )
        .unwrap();
        let host = Container::default();
        assert_eq!(s.check("/usr/local/bin/app", &host), Ok(()));
        assert_eq!(s.check("/opt/app", &host), Err(Rejection::NotIncluded));
        assert_eq!(
            s.check("/usr/local/bin/kubectl", &host),
            Err(Rejection::Excluded)
        );
        let c = Selection::new(&[], &[], Scope::Containers).unwrap();
        assert_eq!(c.check("/app", &host), Err(Rejection::OutOfScope));
        assert_eq!(c.check("/app", &container()), Ok(()));
        let h = Selection::new(&[], &[], Scope::Host).unwrap();
        assert_eq!(h.check("/app", &container()), Err(Rejection::OutOfScope));
    }

    #[test]
    fn bad_glob_is_refused() {
        assert!(Selection::new(&["[".into()], &[], Scope::All).is_err());
    }
}
