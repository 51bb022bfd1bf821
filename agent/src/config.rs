//! The YAML config file (`--config`): every key optional, unknown keys
//! refused. Command-line flags override or add to it.

use crate::{discover::select::Scope, export::otlp::settings::OtlpFile};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the config file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("config file {0}: {1} (top-level keys: include, exclude, scope, otlp, kubernetes)")]
    Yaml(String, serde_yaml::Error),
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node mode: executable path globs to probe.
    #[serde(default)]
    pub include: Vec<String>,
    /// Node mode: executable path globs never to probe.
    #[serde(default)]
    pub exclude: Vec<String>,
    pub scope: Option<Scope>,
    /// OTLP export, as the `--otlp-*` flags.
    #[serde(default)]
    pub otlp: OtlpFile,
    /// Kubernetes pod metadata, as the `--k8s-*` flags.
    #[serde(default)]
    pub kubernetes: crate::k8s::KubeFile,
}

impl Config {
    /// The file's settings, or the defaults without one.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Read(name.clone(), e))?;
        serde_yaml::from_str(&text).map_err(|e| Error::Yaml(name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_section_and_rejects_unknown_keys() {
        let c: Config = serde_yaml::from_str(
            "include: ['/srv/**']\nexclude: ['**/debug-*']\nscope: containers\n\
             otlp:\n  endpoint: http://collector:4317\n  protocol: grpc\n  interval: 10s\n  \
             headers: {x-tenant: a}\n  max_sites: 50\n  histogram: exponential\n",
        )
        .unwrap();
        assert_eq!(c.include, ["/srv/**"]);
        assert_eq!(c.scope, Some(Scope::Containers));
        assert_eq!(c.otlp.max_sites, Some(50));
        assert_eq!(c.otlp.headers["x-tenant"], "a");
        let e = serde_yaml::from_str::<Config>("inclde: ['x']\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = serde_yaml::from_str::<Config>("otlp: {endpont: x}\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
