//! Label selectors in the Kubernetes text form (`pool=gpu,zone!=a,maintenance,!frozen`).
//!
//! Parsed at start-up so that a typo fails before vacate touches the cluster, and kept as
//! text for the API server's `labelSelector` parameter.

use crate::labels::LabelMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(label_key(k)?, label_value(v)?)
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(label_key(k)?, label_value(v)?)
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(label_key(k)?, label_value(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(label_key(k)?)
            } else if part.contains([' ', '(', ')']) {
                return Err(format!(
                    "`{part}`: set-based requirements (in, notin) are not supported; use key=value, key!=value, key or !key"
                ));
            } else {
                Requirement::Exists(label_key(part)?)
            };
            requirements.push(requirement);
        }
        Ok(Self {
            text: text.trim().to_string(),
            requirements,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The selector in the form the API server accepts.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the selector looks at label `key` at all.
    pub fn reads(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| match r {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::Exists(k)
            | Requirement::NotExists(k) => k == key,
        })
    }

    pub fn matches(&self, labels: &impl LabelMap) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => labels.label(k) != Some(v.as_str()),
            Requirement::Exists(k) => labels.label(k).is_some(),
            Requirement::NotExists(k) => labels.label(k).is_none(),
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn label_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    validate_qualified_name(key)?;
    Ok(key.to_string())
}

fn label_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.len() > 63 {
        return Err(format!(
            "label value `{value}` is longer than 63 characters"
        ));
    }
    if !value.is_empty() && !is_name_segment(value) {
        return Err(format!(
            "label value `{value}` must start and end with a letter or digit and contain only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(value.to_string())
}

fn is_name_segment(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks a label or annotation key: an optional DNS prefix, `/`, and a name of at most 63 characters.
pub fn validate_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid {
            return Err(format!(
                "`{key}`: the prefix `{prefix}` is not a lower-case DNS name"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !is_name_segment(name) {
        return Err(format!(
            "`{key}` is not a valid label key (a name of at most 63 letters, digits, '-', '_' or '.', optionally prefixed by a DNS name and '/')"
        ));
    }
    Ok(())
}
