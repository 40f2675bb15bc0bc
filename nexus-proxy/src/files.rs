//! The files a config names, checked without building anything: what `nexus validate` runs
//! (SPEC §9), and what an embedder can run in its own CI or before a reload.

use nexus_core::config::{Config, ConfigError, ConfigErrors};

/// Read and parse the files `config` names, as the gateway and its server will: TLS
/// certificates and keys (each key matches its certificate) and the client CA, the CA files
/// and client certificates of `https://` upstreams (these two with the `tls` feature), JWT
/// public keys and JWKS files. Every error with its field path; `Ok` when all can be used.
///
/// ```
/// use nexus_proxy::config::Config;
/// let config: Config = serde_json::from_value(serde_json::json!({
///     "upstreams": { "api": { "endpoints": [{ "url": "http://127.0.0.1:8080" }] } },
///     "routes": [{ "name": "api", "paths": [{ "path": "/" }], "upstream": "api", "auth": "main" }],
///     "auth": { "jwt": { "main": { "algorithms": ["RS256"], "public_key_file": "/nonexistent/key.pem" } } },
/// }))
/// .unwrap();
/// let errors = nexus_proxy::files::check(&config).unwrap_err();
/// assert!(errors.has_path("auth.jwt.main.public_key_file"), "{errors}");
/// ```
pub fn check(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    #[cfg(feature = "tls")]
    {
        if let Some(tls) = &config.server.tls
            && let Err(e) = crate::tls::LoadedTls::load(tls)
        {
            errors.extend(e.0);
        }
        for (name, upstream) in &config.upstreams {
            let https = upstream
                .endpoints
                .iter()
                .any(|e| nexus_core::upstream::parse_endpoint_url(&e.url).is_ok_and(|a| a.is_tls()));
            if https && let Err(e) = crate::tls::UpstreamTls::load(name, &upstream.tls.clone().unwrap_or_default()) {
                errors.extend(e.0);
            }
        }
    }
    for (name, jwt) in &config.auth.jwt {
        let files = [("public_key_file", &jwt.public_key_file), ("jwks_file", &jwt.jwks_file)];
        for (key, file) in files.iter().filter_map(|(k, f)| f.as_ref().map(|f| (*k, f))) {
            let path = format!("auth.jwt.{name}.{key}");
            match std::fs::read(file) {
                Err(e) => errors.push(ConfigError::new(path, format!("cannot read {file}: {e}"))),
                Ok(bytes) if key == "jwks_file" => {
                    let keys = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                    if !keys.as_ref().is_some_and(|v| v["keys"].is_array()) {
                        errors.push(ConfigError::new(
                            path,
                            format!("{file} is not a JWKS (a JSON object with \"keys\")"),
                        ));
                    }
                }
                Ok(bytes) => {
                    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
                        errors.push(ConfigError::new(path, format!("{file} is not a PEM public key")));
                    }
                }
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
}
