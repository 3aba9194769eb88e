//! Cron expressions and IANA time zones, parsed at start-up.
//!
//! Both the 5-field form (`0 2 * * SUN`) and the 6-field form with seconds in front
//! (`30 0 2 * * SUN`) are accepted; a 5-field expression runs at second 0. Day of month and
//! day of week both apply when both are given, so `0 2 1-7 * SUN` is the first Sunday of the
//! month (`0 2 * * SUN#1` says the same). This is the reading of tokio-cron-scheduler, which
//! fires vacate's schedules, so what is validated here is what runs.

use std::fmt;

use chrono::{DateTime, Timelike, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Deserializer};

#[derive(Clone)]
pub struct CronExpr {
    text: String,
    /// The expression with the seconds field, as tokio-cron-scheduler wants it.
    six_fields: String,
    cron: Cron,
}

impl CronExpr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        let six_fields = match fields {
            5 => format!("0 {}", text.trim()),
            6 => text.trim().to_string(),
            n => {
                return Err(format!(
                    "`{text}` has {n} fields; write 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)"
                ));
            }
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(&six_fields)
            .map_err(|e| format!("`{text}` is not a cron expression: {e}"))?;
        Ok(Self {
            text: text.trim().to_string(),
            six_fields,
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn six_fields(&self) -> &str {
        &self.six_fields
    }

    /// The last time the expression matched at or before `now`, in `zone`.
    pub fn previous(&self, now: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        // Matches are whole seconds; croner keeps the fraction of an inclusive `now`.
        let now = now.with_nanosecond(0).unwrap_or(now);
        let mut found = self
            .cron
            .find_previous_occurrence(&now.with_timezone(&zone.0), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))?;
        // croner searches local clock time: in the hour a clock goes back it can answer an
        // earlier match than the latest one. Step forward over later matches not after `now`.
        for _ in 0..4 {
            match self.raw_next(found, zone) {
                Some(later) if later <= now => found = later,
                _ => break,
            }
        }
        Some(found)
    }

    /// The next time the expression matches after `now`, in `zone`.
    pub fn next(&self, now: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        let mut found = self.raw_next(now, zone)?;
        // Around a clock going back croner may answer a time already past.
        for _ in 0..4 {
            if found > now {
                return Some(found);
            }
            found = self.raw_next(found, zone)?;
        }
        (found > now).then_some(found)
    }

    fn raw_next(&self, after: DateTime<Utc>, zone: &Zone) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&zone.0), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronExpr({:?})", self.text)
    }
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An IANA time zone such as `Europe/Berlin`; `UTC` by default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Zone(pub chrono_tz::Tz);

impl Default for Zone {
    fn default() -> Self {
        Self(chrono_tz::UTC)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.trim().parse::<chrono_tz::Tz>().map(Self).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{text}` is not an IANA time zone such as UTC or Europe/Berlin"
            ))
        })
    }
}
