//! Reading the YAML config file: parse, apply overrides, validate, version.

use nexus_core::config::{Config, ConfigError, ConfigErrors, Overrides};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The `source` of a config built into the binary (`nexus demo`): nothing to re-read.
pub(crate) const BUILT_IN: &str = "(built-in demo)";

/// A config that passed validation, with where and when it came from.
#[derive(Debug, Clone)]
pub(crate) struct LoadedConfig {
    pub(crate) config: Config,
    /// First 12 hex digits of the SHA-256 of the file's bytes.
    pub(crate) version: String,
    pub(crate) source: PathBuf,
    pub(crate) loaded_at: SystemTime,
}

/// Read, parse, override and validate a config file.
pub(crate) fn load(path: &Path, overrides: &Overrides) -> Result<LoadedConfig, ConfigErrors> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigErrors(vec![ConfigError::new("", format!("cannot read {}: {e}", path.display()))]))?;
    let config = parse(&bytes, overrides)?;
    Ok(LoadedConfig { config, version: version_of(&bytes), source: path.to_path_buf(), loaded_at: SystemTime::now() })
}

/// The config version: first 12 hex digits of SHA-256 of the bytes.
pub(crate) fn version_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Parse YAML bytes into a validated config, with overrides applied.
pub(crate) fn parse(bytes: &[u8], overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let value = nexus_core::config::yaml_document(bytes)?;
    let mut errors = Vec::new();
    let mut config = match Config::from_json(value) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.extend(e.0);
            None
        }
    };
    if let Some(c) = &mut config
        && let Err(e) = overrides.apply(c)
    {
        errors.extend(e.0);
    }
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_name_their_field_paths() {
        let yaml = br#"
upstreams:
  user-v1:
    endpoints: [{ url: "http://127.0.0.1:1" }]
    timeout: 5 parsecs
routes:
  - name: r
    paths: [{ path: /, type: prefix }]
    upstreamz: user-v1
"#;
        let e = parse(yaml, &Overrides::default()).unwrap_err();
        assert!(e.has_path("upstreams.user-v1.timeout"), "{e}");
        assert!(e.has_path("routes[0].upstreamz"), "{e}");
    }

    #[test]
    fn an_empty_file_is_refused() {
        for empty in [&b""[..], b"\n  \n"] {
            let e = parse(empty, &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("empty"), "{e}");
        }
    }

    #[test]
    fn syntax_errors_give_a_line() {
        let e = parse(b"routes: [\n  - {", &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn a_key_given_twice_is_an_error_not_a_silent_replacement() {
        let yaml = b"upstreams:\n  a:\n    endpoints: [{ url: \"http://127.0.0.1:1\" }]\n\
            routes:\n  - { name: r, paths: [{ path: / }], upstream: a }\nroutes: []\n";
        let e = parse(yaml, &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("duplicate entry with key \"routes\""), "{e}");
    }

    #[test]
    fn version_is_twelve_hex_digits_of_sha256() {
        // sha256("") = e3b0c44298fc1c149afbf4c8996fb924...
        assert_eq!(version_of(b""), "e3b0c44298fc");
    }
}
