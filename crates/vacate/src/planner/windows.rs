//! Maintenance windows: whether one is open at a given moment, and when the next opens.

use chrono::{DateTime, Utc};

use crate::config::{Config, OnClose, RequestKind, WindowConfig};

/// One window at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStatus {
    pub name: String,
    pub open: bool,
    /// When the current opening ends (open windows only).
    pub closes_at: Option<DateTime<Utc>>,
    /// When the window opens next (closed windows only; `None` if never again).
    pub next_open: Option<DateTime<Utc>>,
}

/// A window is open from each time its cron expression matches until `duration` later.
pub fn status(w: &WindowConfig, now: DateTime<Utc>) -> WindowStatus {
    let duration = chrono::Duration::from_std(w.duration.get()).unwrap_or(chrono::Duration::MAX);
    // The latest opening decides: an earlier one closes no later than it.
    let closes_at = w
        .cron
        .previous(now, &w.timezone)
        .and_then(|opened| opened.checked_add_signed(duration))
        .filter(|close| *close > now);
    WindowStatus {
        name: w.name.clone(),
        open: closes_at.is_some(),
        closes_at,
        next_open: if closes_at.is_some() {
            None
        } else {
            w.cron.next(now, &w.timezone)
        },
    }
}

/// What the windows say about drains of one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No window applies to this kind of request: drains start at any time.
    Ungated,
    Open {
        name: String,
    },
    Closed {
        /// The earliest next opening among the windows that apply.
        next_open: Option<DateTime<Utc>>,
        /// Some window that applies asks for drains in progress to be aborted when it closes.
        abort: bool,
        message: String,
    },
}

pub fn verdict(config: &Config, kind: RequestKind, now: DateTime<Utc>) -> Verdict {
    let applying: Vec<&WindowConfig> = config
        .windows
        .iter()
        .filter(|w| w.applies_to.contains(&kind))
        .collect();
    if applying.is_empty() {
        return Verdict::Ungated;
    }
    let statuses: Vec<WindowStatus> = applying.iter().map(|w| status(w, now)).collect();
    if let Some(open) = statuses.iter().find(|s| s.open) {
        return Verdict::Open {
            name: open.name.clone(),
        };
    }
    let next = statuses
        .iter()
        .filter_map(|s| s.next_open.map(|t| (t, s.name.as_str())))
        .min();
    let message = match next {
        Some((at, name)) => format!(
            "outside the maintenance windows for {} requests; window {name} opens at {}",
            kind.as_str(),
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        None => format!(
            "outside the maintenance windows for {} requests, and none opens again",
            kind.as_str()
        ),
    };
    Verdict::Closed {
        next_open: next.map(|(t, _)| t),
        abort: applying.iter().any(|w| w.on_close == OnClose::Abort),
        message,
    }
}
