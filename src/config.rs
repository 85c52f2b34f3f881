//! Config diagnostics every part of tollgate shares: the error list with key paths, the one
//! way a YAML value becomes a typed setting, and the units settings are written in (durations,
//! sizes, secrets from `{env}`/`{file}`). A leaf:
//! each feature parses its own part with these, and the assembly (`crate::gateway`) calls them.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_yaml::Value;

/// One problem in the config, at a key path such as `routes[1].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file, in file order.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "invalid config: {n} error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Deserialize `v` as `T`, reporting a failure at `base` + the path inside `v`.
pub(crate) fn parse<T: DeserializeOwned>(
    base: &str,
    v: Value,
    errs: &mut ConfigErrors,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                base.to_owned()
            } else if inner.starts_with('[') || base.is_empty() {
                format!("{base}{inner}")
            } else {
                format!("{base}.{inner}")
            };
            errs.push(path, e.into_inner().to_string());
            None
        }
    }
}

/// The longest duration any setting takes: beyond it, arithmetic on it (a rate limit's period,
/// a `Retry-After`) stops meaning anything.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest size any setting takes (1 TiB).
const MAX_SIZE: u64 = 1 << 40;

/// A duration written as a string (`500ms`, `2s`, `1m`), parsed with `humantime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"2s\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                let d = humantime::parse_duration(s.trim()).map_err(|e| {
                    E::custom(format!(
                        "bad duration {s:?}: {e} (write e.g. \"500ms\", \"2s\", \"1m\")"
                    ))
                })?;
                if d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "bad duration {s:?}: longer than a year (365d), the most any setting takes"
                    )));
                }
                Ok(Dur(d))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "bad duration {n}: durations need a unit, e.g. \"{n}s\" or \"{n}ms\""
                )))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                self.visit_u64(n.unsigned_abs())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "bad duration {n}: durations are strings with a unit, e.g. \"500ms\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size written as a number of bytes or a string with a unit (`64KiB`, `10MB`), parsed with
/// `bytesize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (bytes, written) = match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Number(n) => match n.as_u64() {
                Some(b) => (b, n.to_string()),
                None => {
                    return Err(de::Error::custom(format!(
                        "bad size {n}: a whole number of bytes"
                    )))
                }
            },
            serde_yaml::Value::String(s) => match s.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => (b.as_u64(), format!("{s:?}")),
                Err(e) => {
                    return Err(de::Error::custom(format!(
                        "bad size {s:?}: {e} (write e.g. 8192, \"64KiB\", \"10MB\")"
                    )))
                }
            },
            _ => {
                return Err(de::Error::custom(
                    "a size is a number of bytes or a string like \"64KiB\"",
                ))
            }
        };
        if bytes > MAX_SIZE {
            return Err(de::Error::custom(format!(
                "bad size {written}: larger than 1TiB, the most any setting takes"
            )));
        }
        Ok(Size(bytes))
    }
}

/// A secret: inline, `{env: NAME}` or `{file: path}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretFile {
    Inline(String),
    Env { env: String },
    File { file: String },
}

impl SecretFile {
    /// Where the secret came from, for an error about its value (never the value itself).
    pub fn describe(&self) -> String {
        match self {
            SecretFile::Inline(_) => String::new(),
            SecretFile::Env { env } => format!(" (environment variable {env})"),
            SecretFile::File { file } => {
                format!(" (file {file}, trailing white space not counted)")
            }
        }
    }

    /// The secret as text (a user name, a password); not UTF-8 is an error at `path`.
    pub fn load_text(&self, path: &str, errs: &mut ConfigErrors) -> Option<String> {
        let v = self.load(path, errs)?;
        String::from_utf8(v)
            .map_err(|_| errs.push(path, "is not UTF-8 text"))
            .ok()
    }

    /// The secret's bytes; the error names the source, never the secret.
    pub fn load(&self, path: &str, errs: &mut ConfigErrors) -> Option<Vec<u8>> {
        match self {
            SecretFile::Inline(s) => Some(s.as_bytes().to_vec()),
            SecretFile::Env { env } => match std::env::var(env) {
                Ok(v) if !v.is_empty() => Some(v.into_bytes()),
                Ok(_) => {
                    errs.push(
                        format!("{path}.env"),
                        format!("environment variable {env} is empty"),
                    );
                    None
                }
                Err(_) => {
                    errs.push(
                        format!("{path}.env"),
                        format!("environment variable {env} is not set"),
                    );
                    None
                }
            },
            SecretFile::File { file } => match std::fs::read(file) {
                Ok(mut v) => {
                    while v.last().is_some_and(|b| b.is_ascii_whitespace()) {
                        v.pop();
                    }
                    Some(v)
                }
                Err(e) => {
                    errs.push(format!("{path}.file"), format!("cannot read {file}: {e}"));
                    None
                }
            },
        }
    }
}
