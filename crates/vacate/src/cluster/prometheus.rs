//! A drain blocker in the manner of kured's `--prometheus-url`/`--alert-filter`: no new drain
//! starts while an instant query against Prometheus returns anything, such as firing alerts.
//! Only the HTTP API's `/api/v1/query` is used; credentials may be given as the URL's
//! userinfo (`https://user:password@host/`) and are sent as basic auth, never shown.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::PrometheusUrl;

/// The largest answer read; a query that blocks drains has no need of more.
const MAX_BODY: usize = 4 << 20;
/// How many series a summary names.
const SHOWN_SERIES: usize = 3;
/// How long one series may be in a summary, in characters.
const MAX_SERIES_CHARS: usize = 160;

/// Asks Prometheus whether anything blocks new drains; answers are cached for `ttl` so many
/// pending nodes cost one query.
pub struct PrometheusGate {
    /// The URL without credentials, for messages.
    shown: String,
    /// `<url>/api/v1/query?query=<query>`, ready to send.
    uri: Uri,
    query: String,
    authorization: Option<HeaderValue>,
    ttl: Duration,
    timeout: Duration,
    transport: Transport,
    cached: Mutex<Option<(Instant, Answer)>>,
}

type Answer = Result<Option<String>, String>;

enum Transport {
    Http(Client<HttpConnector, Empty<Bytes>>),
    Https(Client<HttpsConnector<HttpConnector>, Empty<Bytes>>),
}

impl fmt::Debug for PrometheusGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusGate")
            .field("url", &self.shown)
            .field("query", &self.query)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PrometheusGate {
    /// Err when, for https, the system has no root certificates; the message names the URL
    /// without credentials.
    pub fn new(
        url: &PrometheusUrl,
        query: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Self, String> {
        let uri = query_uri(url, query)?;
        let transport = if url.is_https() {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()
                .map_err(|e| format!("cannot verify {url}: {e}"))?
                .https_only()
                .enable_http1()
                .build();
            Transport::Https(Client::builder(TokioExecutor::new()).build(connector))
        } else {
            Transport::Http(Client::builder(TokioExecutor::new()).build_http())
        };
        Ok(PrometheusGate {
            shown: url.without_credentials().to_string(),
            uri,
            query: query.to_string(),
            authorization: authorization(url),
            ttl,
            timeout,
            transport,
            cached: Mutex::new(None),
        })
    }

    /// Ok(None): the query returned nothing, drains may start.
    /// Ok(Some(summary)): it returned N series; summary is short and human, e.g.
    /// `2 series, e.g. ALERTS{alertname="NodeDown",severity="critical"}` (at most 3 shown).
    /// Err(message): Prometheus could not be asked or answered with an error; callers treat
    /// this as blocking.
    pub async fn check(&self) -> Result<Option<String>, String> {
        // Held while asking: callers that come meanwhile wait for this answer.
        let mut cached = self.cached.lock().await;
        if let Some((at, answer)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return answer.clone();
        }
        let answer = self.ask().await;
        tracing::debug!(url = %self.shown, query = %self.query, ?answer, "asked Prometheus");
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn ask(&self) -> Answer {
        let exchange = async {
            let mut request = Request::get(self.uri.clone()).header(ACCEPT, "application/json");
            if let Some(value) = &self.authorization {
                request = request.header(AUTHORIZATION, value.clone());
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| format!("a request to {}: {e}", self.shown))?;
            let response = match &self.transport {
                Transport::Http(client) => client.request(request).await,
                Transport::Https(client) => client.request(request).await,
            }
            .map_err(|e| {
                format!(
                    "Prometheus at {} could not be asked: {}",
                    self.shown,
                    chain(&e)
                )
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    format!(
                        "Prometheus at {} broke off its answer: {}",
                        self.shown,
                        chain(e.as_ref())
                    )
                })?
                .to_bytes();
            interpret(&self.shown, status, &body)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Prometheus at {} did not answer within {}",
                    self.shown,
                    humantime::format_duration(self.timeout)
                ))
            })
    }
}

/// An error with its causes, `outer: inner: innermost`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Basic auth from the URL's credentials, marked sensitive so that it is never shown.
fn authorization(url: &PrometheusUrl) -> Option<HeaderValue> {
    let (user, password) = url.credentials()?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value =
        HeaderValue::try_from(format!("Basic {token}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    Some(value)
}

/// `<url>/api/v1/query?query=<query>`.
fn query_uri(url: &PrometheusUrl, query: &str) -> Result<Uri, String> {
    format!(
        "{url}/api/v1/query?query={}",
        utf8_percent_encode(query, NON_ALPHANUMERIC)
    )
    .parse()
    .map_err(|e| format!("invalid Prometheus URL {url}: {e}"))
}

/// The body of an answer of the HTTP API.
#[derive(Debug, Deserialize)]
struct ApiAnswer {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Series>),
    Matrix(Vec<Series>),
    Scalar((f64, String)),
    String((f64, String)),
}

#[derive(Debug, Deserialize)]
struct Series {
    #[serde(default)]
    metric: BTreeMap<String, String>,
}

/// What an HTTP answer of Prometheus at `shown` means for drains.
fn interpret(shown: &str, status: u16, body: &[u8]) -> Answer {
    let answer: ApiAnswer = serde_json::from_slice(body).map_err(|e| {
        format!(
            "Prometheus at {shown} answered HTTP {status}, not with its API's JSON ({e}): {}",
            snippet(body)
        )
    })?;
    match (answer.status.as_str(), answer.data) {
        ("success", Some(data)) => Ok(summarise(&data)),
        ("error", _) => Err(format!(
            "Prometheus at {shown} answered {}: {}",
            answer.error_type.as_deref().unwrap_or("an error"),
            answer.error.as_deref().unwrap_or("(no message)")
        )),
        (other, _) => Err(format!(
            "Prometheus at {shown} answered HTTP {status} with status {other:?} and no data"
        )),
    }
}

/// The start of a body that is not JSON, on one line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    shorten(&text.split_whitespace().collect::<Vec<_>>().join(" "), 200)
}

/// None when the result is empty (or a zero scalar, an empty string), else what it holds.
fn summarise(data: &Data) -> Option<String> {
    match data {
        Data::Vector(series) | Data::Matrix(series) if series.is_empty() => None,
        Data::Vector(series) | Data::Matrix(series) => {
            let shown: Vec<String> = series
                .iter()
                .take(SHOWN_SERIES)
                .map(|s| shorten(&series_name(&s.metric), MAX_SERIES_CHARS))
                .collect();
            Some(format!(
                "{} series, e.g. {}",
                series.len(),
                shown.join(", ")
            ))
        }
        // A value that is not a number counts as non-zero: when in doubt, block.
        Data::Scalar((_, value)) => {
            (value.parse::<f64>().ok() != Some(0.0)).then(|| format!("scalar {value}"))
        }
        Data::String((_, value)) => (!value.is_empty()).then(|| format!("string {}", quote(value))),
    }
}

/// `name{label="value",...}` in the manner of Prometheus; `{...}` without a name.
fn series_name(metric: &BTreeMap<String, String>) -> String {
    let name = metric.get("__name__").map_or("", String::as_str);
    let labels: Vec<String> = metric
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

fn quote(value: &str) -> String {
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// At most `max` characters, the last an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "http://prom:9090";

    fn check(body: &str) -> Answer {
        interpret(AT, 200, body.as_bytes())
    }

    #[test]
    fn an_empty_vector_lets_drains_start() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(check(body), Ok(None));
        let body =
            r#"{"status":"success","data":{"resultType":"matrix","result":[]},"warnings":["w"]}"#;
        assert_eq!(check(body), Ok(None));
    }

    #[test]
    fn firing_alerts_are_summarised() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"ALERTS","alertname":"NodeDown","severity":"critical"},"value":[1700000000.1,"1"]},
            {"metric":{"__name__":"ALERTS","alertname":"DiskFull","severity":"warning"},"value":[1700000000.1,"1"]}
        ]}}"#;
        assert_eq!(
            check(body),
            Ok(Some(
                "2 series, e.g. ALERTS{alertname=\"NodeDown\",severity=\"critical\"}, \
                 ALERTS{alertname=\"DiskFull\",severity=\"warning\"}"
                    .into()
            ))
        );
    }

    #[test]
    fn at_most_three_series_are_named() {
        let series: Vec<String> = (0..5)
            .map(|i| format!(r#"{{"metric":{{"job":"j{i}"}},"values":[[1,"1"]]}}"#))
            .collect();
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"matrix","result":[{}]}}}}"#,
            series.join(",")
        );
        assert_eq!(
            check(&body),
            Ok(Some(
                r#"5 series, e.g. {job="j0"}, {job="j1"}, {job="j2"}"#.into()
            ))
        );
    }

    #[test]
    fn label_values_are_escaped_and_long_series_shortened() {
        let metric = BTreeMap::from([
            ("__name__".to_string(), "up".to_string()),
            ("msg".to_string(), "a \"b\"\\\nc".to_string()),
        ]);
        assert_eq!(series_name(&metric), r#"up{msg="a \"b\"\\\nc"}"#);
        assert_eq!(series_name(&BTreeMap::new()), "{}");
        let long = shorten(&"x".repeat(500), MAX_SERIES_CHARS);
        assert_eq!(long.chars().count(), MAX_SERIES_CHARS);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn scalars_and_strings_count_when_non_zero_or_non_empty() {
        let scalar = |v: &str| {
            check(&format!(
                r#"{{"status":"success","data":{{"resultType":"scalar","result":[1700000000,"{v}"]}}}}"#
            ))
        };
        assert_eq!(scalar("0"), Ok(None));
        assert_eq!(scalar("2"), Ok(Some("scalar 2".into())));
        assert_eq!(scalar("NaN"), Ok(Some("scalar NaN".into())));
        let string = |v: &str| {
            check(&format!(
                r#"{{"status":"success","data":{{"resultType":"string","result":[1700000000,"{v}"]}}}}"#
            ))
        };
        assert_eq!(string(""), Ok(None));
        assert_eq!(
            string("maintenance"),
            Ok(Some("string \"maintenance\"".into()))
        );
    }

    #[test]
    fn an_error_answer_names_its_type_and_message() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:7: parse error: unexpected end of input"}"#;
        let error = interpret(AT, 400, body.as_bytes()).unwrap_err();
        assert_eq!(
            error,
            "Prometheus at http://prom:9090 answered bad_data: invalid parameter \"query\": \
             1:7: parse error: unexpected end of input"
        );
        let error = interpret(AT, 503, br#"{"status":"error"}"#).unwrap_err();
        assert!(error.contains("an error"), "{error}");
    }

    #[test]
    fn an_answer_that_is_not_the_api_is_an_error() {
        let error = interpret(
            AT,
            404,
            b"<html>\n  <body>404 page not found</body>\n</html>",
        )
        .unwrap_err();
        assert!(error.contains("HTTP 404"), "{error}");
        assert!(
            error.ends_with("<html> <body>404 page not found</body> </html>"),
            "{error}"
        );
        let error = interpret(AT, 200, br#"{"status":"success"}"#).unwrap_err();
        assert!(error.contains("no data"), "{error}");
        let error = interpret(
            AT,
            200,
            br#"{"status":"success","data":{"resultType":"histogram","result":[]}}"#,
        )
        .unwrap_err();
        assert!(error.contains("HTTP 200"), "{error}");
    }

    fn url(text: &str) -> PrometheusUrl {
        PrometheusUrl::parse(text).unwrap()
    }

    #[test]
    fn the_query_goes_below_the_path_prefix_encoded() {
        let prefixed = url("http://prom.example:9090/prometheus/");
        assert_eq!(
            query_uri(&prefixed, r#"ALERTS{alertstate="firing"}"#)
                .unwrap()
                .to_string(),
            "http://prom.example:9090/prometheus/api/v1/query?query=ALERTS%7Balertstate%3D%22firing%22%7D"
        );
        assert_eq!(
            query_uri(&url("HTTPS://prom"), "up").unwrap().path(),
            "/api/v1/query"
        );
    }

    #[test]
    fn credentials_become_basic_auth_and_never_show() {
        let value =
            authorization(&url("https://vacate:s%40cr%3At@prom.example/prom")).expect("basic auth");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s%40cr"));
        let token = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap();
        assert_eq!(decoded, b"vacate:s@cr:t");

        assert!(authorization(&url("http://reader@prom")).is_some());
        assert!(authorization(&url("http://prom")).is_none());
    }

    /// A loopback server that records each request's head and answers `body`, or keeps
    /// the connection open without a word when `body` is None.
    async fn fake_prometheus(
        body: Option<&'static str>,
    ) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = vec![0; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head[..n]).into_owned());
                let Some(body) = body else {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(stream)
                    });
                    continue;
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        (port, heads)
    }

    #[tokio::test]
    async fn answers_are_cached_and_credentials_sent_as_basic_auth() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"ALERTS","alertname":"NodeDown"},"value":[1,"1"]}]}}"#;
        let (port, heads) = fake_prometheus(Some(body)).await;
        let url = format!("http://vacate:hunter2@127.0.0.1:{port}/prom/");
        let gate = PrometheusGate::new(
            &self::url(&url),
            "ALERTS",
            Duration::from_secs(3600),
            Duration::from_secs(5),
        )
        .unwrap();
        for _ in 0..3 {
            assert_eq!(
                gate.check().await,
                Ok(Some(
                    r#"1 series, e.g. ALERTS{alertname="NodeDown"}"#.into()
                ))
            );
        }
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1, "one query for three checks: {heads:?}");
        let head = heads[0].to_ascii_lowercase();
        assert!(
            head.starts_with("get /prom/api/v1/query?query=alerts http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("authorization: basic dmfjyxrlomh1bnrlcji="),
            "{head}"
        );
        assert!(head.contains("host: 127.0.0.1:"), "{head}");
        assert!(!head.contains("hunter2"), "{head}");
    }

    #[tokio::test]
    async fn silence_and_closed_ports_are_errors() {
        let (port, _) = fake_prometheus(None).await;
        let url = format!("http://vacate:hunter2@127.0.0.1:{port}");
        let gate = PrometheusGate::new(
            &self::url(&url),
            "up",
            Duration::ZERO,
            Duration::from_millis(300),
        )
        .unwrap();
        let error = gate.check().await.unwrap_err();
        assert_eq!(
            error,
            format!("Prometheus at http://127.0.0.1:{port} did not answer within 300ms")
        );

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = format!("http://vacate:hunter2@127.0.0.1:{port}");
        let gate = PrometheusGate::new(
            &self::url(&url),
            "up",
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .unwrap();
        let error = gate.check().await.unwrap_err();
        assert!(
            error.starts_with(&format!(
                "Prometheus at http://127.0.0.1:{port} could not be asked: "
            )),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[tokio::test]
    async fn debug_output_holds_no_credentials() {
        let gate = PrometheusGate::new(
            &url("http://vacate:hunter2@127.0.0.1:9/prom"),
            "up",
            Duration::ZERO,
            Duration::from_secs(1),
        )
        .unwrap();
        let debug = format!("{gate:?}");
        assert!(debug.contains("http://127.0.0.1:9/prom"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
