//! The config model of SPEC §3: schema, parsing with field paths, validation
//! that reports every error, and layered loading (environment > flags > file >
//! defaults).
//!
//! The schema works on a [`serde_json::Value`], so every front end (the YAML file through
//! [`Config::from_yaml`], JSON, a test's `json!`) shares one schema and one set of error
//! messages.
//!
//! ```
//! use nexus_core::config::Config;
//! let errors = Config::from_json(serde_json::json!({
//!     "routes": [{ "name": "a", "paths": [{ "path": "/" }], "upstream": "nope", "upstreamz": 1 }]
//! }))
//! .unwrap_err();
//! let text = errors.to_string();
//! assert!(text.contains("routes[0].upstreamz: unknown key"));
//! ```

mod load;
mod schema;
mod units;
mod validate;

pub use load::{Env, Overrides, ProcessEnv};
pub use schema::*;
pub use units::{ByteSize, Duration};
pub use validate::otlp_endpoint;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;

/// One config error: where (a field path such as `routes[0].upstream`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path, e.g. `upstreams.user-v1.timeout`; empty for the document itself.
    pub path: String,
    /// What is wrong, with a hint where one helps.
    pub message: String,
}

impl ConfigError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Every error found in a config, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some error sits at exactly this path.
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A YAML document as the JSON value [`Config::from_json`] reads (see
/// [`Config::from_yaml`]; the binary applies its overrides between the two). Feature `yaml`.
#[cfg(feature = "yaml")]
#[cfg_attr(docsrs, doc(cfg(feature = "yaml")))]
pub fn yaml_document(bytes: &[u8]) -> Result<Value, ConfigErrors> {
    let one = |message: String| ConfigErrors(vec![ConfigError::new("", message)]);
    // An empty file is a file caught mid-write (or truncated by mistake), never a config:
    // taking it would replace every route with none.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(one("the config file is empty".into()));
    }
    // Through YAML's own value first: its mappings refuse a key given twice.
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_slice(bytes).map_err(|e| {
        let at = e.location().map(|l| format!(" (line {}, column {})", l.line(), l.column())).unwrap_or_default();
        one(format!("invalid YAML{at}: {e}"))
    })?;
    serde_json::to_value(yaml).map_err(|e| one(format!("invalid YAML: {e}")))
}

const TOP_KEYS: &[&str] = &["server", "logging", "tracing", "admin", "upstreams", "auth", "rate_limits", "routes"];

impl Config {
    /// Parse and validate a config document. Each route, upstream, rate limit and
    /// auth policy is read on its own, so one bad entry does not hide the errors
    /// of the next: every error comes back, each with its field path.
    pub fn from_json(value: Value) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut info = ParseInfo::default();
        let config = parse_document(value, &mut errors, &mut info);
        if let Some(config) = &config {
            validate::validate(config, &info, &mut errors);
        }
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Parse and validate a YAML document, the file format of the `nexus` binary: an empty
    /// document, a syntax error (with its line and column) and a key given twice in one
    /// mapping (a second `routes:` would silently replace the first) are errors; then as
    /// [`from_json`](Self::from_json). Feature `yaml` (on by default).
    ///
    /// ```
    /// use nexus_core::config::Config;
    /// let yaml = b"upstreams:\n  a:\n    endpoints: [{ url: http://127.0.0.1:1 }]\nroutes: []\nroutes: []\n";
    /// let errors = Config::from_yaml(yaml).unwrap_err().to_string();
    /// assert!(errors.contains("duplicate entry with key \"routes\""), "{errors}");
    /// ```
    #[cfg(feature = "yaml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "yaml")))]
    pub fn from_yaml(bytes: &[u8]) -> Result<Config, ConfigErrors> {
        Self::from_json(yaml_document(bytes)?)
    }

    /// Validate a config built in code (or modified after parsing).
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        validate::validate(self, &ParseInfo::default(), &mut errors);
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }

    /// Number of routes and upstreams, phrased as `nexus validate` prints it:
    /// `1 route, 2 upstreams`.
    pub fn summary(&self) -> String {
        fn plural(n: usize, word: &str) -> String {
            if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
        }
        format!("{}, {}", plural(self.routes.len(), "route"), plural(self.upstreams.len(), "upstream"))
    }
}

/// What parsing dropped, so validation keeps the user's indices and does not
/// report a reference to an entry that failed to parse as unknown.
#[derive(Debug, Default)]
pub(crate) struct ParseInfo {
    /// Original `routes[i]` index of each parsed route; empty = identity.
    pub(crate) route_index: Vec<usize>,
    /// Names of map entries (`upstreams.x`, `rate_limits.x`, `auth.jwt.x`) that failed to parse.
    pub(crate) failed: std::collections::HashSet<String>,
}

fn parse_document(value: Value, errors: &mut Vec<ConfigError>, info: &mut ParseInfo) -> Option<Config> {
    let obj = match value {
        Value::Null => Map::new(),
        Value::Object(m) => m,
        _ => {
            errors.push(ConfigError::new(
                "",
                "the config must be a mapping of sections (server, upstreams, routes, ...)",
            ));
            return None;
        }
    };
    let mut config = Config::default();
    for (key, v) in obj {
        match key.as_str() {
            "server" => set(&mut config.server, section("server", v, errors)),
            "logging" => set(&mut config.logging, section("logging", v, errors)),
            "tracing" if v.is_null() => config.tracing = Some(TracingConfig::default()),
            "tracing" => config.tracing = section("tracing", v, errors),
            "admin" => set(&mut config.admin, section("admin", v, errors)),
            "upstreams" => config.upstreams = entries("upstreams", v, errors, info),
            "rate_limits" => config.rate_limits = entries("rate_limits", v, errors, info),
            "auth" => match v {
                Value::Null => {}
                Value::Object(auth) => {
                    for (k, v) in auth {
                        if k == "jwt" {
                            config.auth.jwt = entries("auth.jwt", v, errors, info);
                        } else {
                            errors.push(unknown_key(&format!("auth.{k}"), &["jwt"]));
                        }
                    }
                }
                _ => errors.push(ConfigError::new("auth", "expected a mapping")),
            },
            "routes" => match v {
                Value::Null => {}
                Value::Array(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        if let Some(route) = section::<RouteConfig>(&format!("routes[{i}]"), item, errors) {
                            config.routes.push(route);
                            info.route_index.push(i);
                        }
                    }
                }
                _ => errors.push(ConfigError::new("routes", "expected a list of routes")),
            },
            other => errors.push(unknown_key(other, TOP_KEYS)),
        }
    }
    Some(config)
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn unknown_key(path: &str, expected: &[&str]) -> ConfigError {
    ConfigError::new(path, format!("unknown key (expected one of: {})", expected.join(", ")))
}

/// Deserialize a map section entry by entry, so each bad entry reports its own errors.
fn entries<T: DeserializeOwned>(
    path: &str,
    v: Value,
    errors: &mut Vec<ConfigError>,
    info: &mut ParseInfo,
) -> std::collections::BTreeMap<String, T> {
    match v {
        Value::Null => Default::default(),
        Value::Object(m) => m
            .into_iter()
            .filter_map(|(k, v)| {
                let full = format!("{path}.{k}");
                let parsed = section(&full, v, errors);
                if parsed.is_none() {
                    info.failed.insert(full);
                }
                parsed.map(|t| (k, t))
            })
            .collect(),
        _ => {
            errors.push(ConfigError::new(path, "expected a mapping of names to entries"));
            Default::default()
        }
    }
}

/// Deserialize one value and report every error in it, each with its full path: after an
/// error at a key, the key is set aside and the rest is read again (at most a few dozen
/// times), so an unknown key does not hide a bad duration beside it. `None` when nothing
/// could be read; otherwise what could be read (without the bad keys) so the semantic checks
/// still run on it, the errors already recorded keeping the config from being used.
fn section<T: DeserializeOwned>(prefix: &str, v: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
    let mut v = if v.is_null() { Value::Object(Map::new()) } else { v };
    let mut set_aside: Vec<String> = Vec::new();
    for _ in 0..32 {
        let e = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let segments: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
        let mut path = prefix.to_string();
        for seg in &segments {
            use serde_path_to_error::Segment;
            match seg {
                Segment::Seq { index } => path.push_str(&format!("[{index}]")),
                Segment::Map { key } => {
                    path.push('.');
                    path.push_str(key);
                }
                Segment::Enum { variant } => {
                    path.push('.');
                    path.push_str(variant);
                }
                Segment::Unknown => {}
            }
        }
        let error = describe_serde_error(path, &e.into_inner().to_string());
        // A key set aside that was required: its own error already says what is wrong.
        if set_aside.contains(&error.path) {
            return None;
        }
        // Where to go on from: the key the error is at (an unknown key names itself).
        let key_path = error.path.strip_prefix(prefix).map(|p| p.trim_start_matches('.').to_string());
        errors.push(error);
        let key_path = key_path.filter(|p| !p.is_empty())?;
        if !remove_at(&mut v, &key_path) {
            return None;
        }
        set_aside.push(format!("{prefix}.{key_path}"));
    }
    None
}

/// Remove the key at `path` (`a.b[2].c`) from `v`; whether there was one.
fn remove_at(v: &mut Value, path: &str) -> bool {
    let mut parts: Vec<&str> = Vec::new();
    for dotted in path.split('.') {
        let mut rest = dotted;
        while let Some(open) = rest.find('[') {
            if open > 0 {
                parts.push(&rest[..open]);
            }
            let close = rest[open..].find(']').map_or(rest.len(), |c| open + c + 1);
            parts.push(&rest[open..close]);
            rest = &rest[close..];
        }
        if !rest.is_empty() {
            parts.push(rest);
        }
    }
    let Some((last, parents)) = parts.split_last() else { return false };
    let mut at = v;
    for part in parents {
        let next = match part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            Some(index) => index.parse::<usize>().ok().and_then(|i| at.get_mut(i)),
            None => at.get_mut(*part),
        };
        match next {
            Some(n) => at = n,
            None => return false,
        }
    }
    match (last.strip_prefix('[').and_then(|p| p.strip_suffix(']')), at) {
        (None, Value::Object(map)) => map.remove(*last).is_some(),
        _ => false,
    }
}

/// Rephrase serde's messages: name the unknown or missing key by its own path.
fn describe_serde_error(mut path: String, msg: &str) -> ConfigError {
    let backticked = |rest: &str| rest.split('`').nth(1).map(str::to_string);
    if let Some(rest) = msg.strip_prefix("unknown field ")
        && let Some(key) = backticked(rest)
    {
        let expected = rest.split_once("expected ").map(|(_, e)| e.replace('`', "")).unwrap_or_default();
        if !path.ends_with(&format!(".{key}")) && path != key {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
        }
        let message =
            if expected.is_empty() { "unknown key".to_string() } else { format!("unknown key (expected {expected})") };
        return ConfigError::new(path, message);
    }
    if let Some(rest) = msg.strip_prefix("missing field ")
        && let Some(key) = backticked(rest)
    {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&key);
        return ConfigError::new(path, "is required");
    }
    ConfigError::new(path, plain_words(msg))
}

/// serde's type words in the config's words: `expected usize` is "a whole number",
/// `struct UpstreamConfig with 8 elements` is "a mapping".
fn plain_words(msg: &str) -> String {
    fn kind(word: &str) -> String {
        let word = word.trim();
        if word.starts_with("struct ") || word == "a map" || word == "map" {
            return "a mapping".into();
        }
        if word == "a sequence" || word == "sequence" {
            return "a list".into();
        }
        if ["usize", "u64", "u32", "u16", "u8"].contains(&word) {
            return "a whole number".into();
        }
        if ["i64", "i32", "f64", "f32"].contains(&word) {
            return "a number".into();
        }
        if word == "a boolean" || word == "bool" {
            return "true or false".into();
        }
        if let Some(s) = word.strip_prefix("string ") {
            return format!("the string {s}");
        }
        if let Some(n) = word.strip_prefix("integer ").or_else(|| word.strip_prefix("floating point ")) {
            return format!("the number {}", n.trim_matches('`'));
        }
        if let Some(b) = word.strip_prefix("boolean ") {
            return b.trim_matches('`').to_string();
        }
        if word == "unit value" || word == "null" {
            return "nothing".into();
        }
        word.to_string()
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {}, found {}", kind(expected), kind(found));
    }
    if let Some(rest) = msg.strip_prefix("invalid length ")
        && let Some((_, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {}, found a list", kind(expected));
    }
    if let Some(rest) = msg.strip_prefix("invalid value: ")
        && let Some((found, expected)) = rest.split_once(", expected ")
    {
        return format!("{} is out of range for {}", kind(found), kind(expected));
    }
    msg.to_string()
}

#[cfg(test)]
mod tests;
