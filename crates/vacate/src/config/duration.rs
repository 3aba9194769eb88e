//! Durations written as in `30s`, `5m` or `1h30m`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

const MAX: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ConfigDuration(Duration);

impl ConfigDuration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for ConfigDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let d = humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration such as 30s, 5m or 1h30m ({e})"
            ))
        })?;
        // Far beyond any sensible setting, and safe to add to any date vacate handles.
        if d > MAX {
            return Err(serde::de::Error::custom(format!(
                "`{text}` is longer than 10 years"
            )));
        }
        Ok(Self(d))
    }
}
