//! `blockers.prometheus_url`: the base URL of a Prometheus server, checked when the file is
//! read. Credentials may be given as the URL's userinfo (`https://user:password@host/`); they
//! are kept apart and never shown, not even in an error about a URL that does not parse.

use std::fmt;

use hyper::Uri;
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Deserializer};

#[derive(Clone, PartialEq, Eq)]
pub struct PrometheusUrl {
    https: bool,
    /// scheme://host[:port][/prefix], without credentials and without a trailing slash.
    shown: String,
    /// User and password, percent-decoded.
    credentials: Option<(String, String)>,
}

impl PrometheusUrl {
    /// Err names what is wrong and the URL without credentials.
    pub fn parse(url: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("invalid Prometheus URL {}: {why}", redact(url));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("it needs http:// or https://"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(invalid("it needs http:// or https://")),
        };
        if rest.contains(['?', '#']) {
            return Err(invalid("it cannot have a query or a fragment"));
        }
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (host, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if host.is_empty() {
            return Err(invalid("it has no host"));
        }
        // The URI parser takes any port; the connector would only complain at the first query.
        if let Some((_, port)) = host.rsplit_once(':').filter(|(_, p)| !p.ends_with(']'))
            && port.parse::<u16>().is_err()
        {
            return Err(invalid(&format!("{port:?} is not a port")));
        }
        let shown = format!(
            "{}://{host}{}",
            scheme.to_ascii_lowercase(),
            prefix.trim_end_matches('/')
        );
        shown.parse::<Uri>().map_err(|e| invalid(&e.to_string()))?;
        let credentials = userinfo.map(|userinfo| {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            (decode(user), decode(password))
        });
        Ok(PrometheusUrl {
            https,
            shown,
            credentials,
        })
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    /// scheme://host[:port][/prefix], without credentials and without a trailing slash: what
    /// messages show, and what the API's paths are appended to.
    pub fn without_credentials(&self) -> &str {
        &self.shown
    }

    /// User and password for basic auth, when the URL has a userinfo.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }
}

impl fmt::Display for PrometheusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for PrometheusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusUrl")
            .field("url", &self.shown)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "(hidden)"),
            )
            .finish()
    }
}

impl<'de> Deserialize<'de> for PrometheusUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PrometheusUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// For `#[serde(deserialize_with = "...")]`: an empty string turns the blocker off.
pub(super) fn optional<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<PrometheusUrl>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    PrometheusUrl::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `url` without its userinfo, for messages about a URL that may not even parse. Everything
/// before the last `@` of the authority-and-path counts as credentials.
fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    // The last `@` anywhere: a password may hold an unencoded `?`, `#` or `/`.
    match url[start..].rfind('@') {
        Some(at) => format!("{}{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_kept_without_a_trailing_slash() {
        let url = PrometheusUrl::parse("http://prom.example:9090/prometheus/").unwrap();
        assert_eq!(
            url.without_credentials(),
            "http://prom.example:9090/prometheus"
        );
        assert!(!url.is_https());
        assert!(PrometheusUrl::parse("HTTPS://prom").unwrap().is_https());
        assert_eq!(
            PrometheusUrl::parse("http://[::1]").unwrap().to_string(),
            "http://[::1]"
        );
        assert_eq!(
            PrometheusUrl::parse("http://[::1]:9090")
                .unwrap()
                .to_string(),
            "http://[::1]:9090"
        );
    }

    #[test]
    fn credentials_are_decoded_and_never_shown() {
        let url = PrometheusUrl::parse("https://vacate:s%40cr%3At@prom.example/prom").unwrap();
        assert_eq!(url.without_credentials(), "https://prom.example/prom");
        assert_eq!(url.credentials(), Some(("vacate", "s@cr:t")));
        let debug = format!("{url:?}");
        assert!(
            !debug.contains("s%40cr") && !debug.contains("s@cr"),
            "{debug}"
        );

        let user_only = PrometheusUrl::parse("http://reader@prom").unwrap();
        assert_eq!(user_only.without_credentials(), "http://prom");
        assert_eq!(user_only.credentials(), Some(("reader", "")));
        assert_eq!(
            PrometheusUrl::parse("http://prom").unwrap().credentials(),
            None
        );
    }

    #[test]
    fn bad_urls_are_named_without_credentials() {
        for url in [
            "prom.example:9090",
            "ftp://user:hunter2@prom.example",
            "user:hunter2@prom.example:9090/x",
            "http://user:hunter2@prom.example:port/",
            "http://user:hunter2@/prom",
            "http://user:hunter2@prom.example/?x=1",
            "http://user:hun/ter2@prom exa mple",
        ] {
            let error = PrometheusUrl::parse(url).unwrap_err();
            assert!(error.starts_with("invalid Prometheus URL"), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
            assert!(!error.contains("hun/ter2"), "{error}");
        }
        assert_eq!(
            redact("http://a:b@host:1/p@th?q=x@y"),
            "http://y",
            "everything up to the last @ counts as credentials: rather too much hidden than a password shown"
        );
        assert_eq!(redact("http://u:pa#ss@prom:9090"), "http://prom:9090");
        assert_eq!(redact("http://host/p"), "http://host/p");
    }
}
