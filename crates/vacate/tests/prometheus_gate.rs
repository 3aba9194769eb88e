//! The drain blocker against a real Prometheus (Debian's `prometheus` package), without a
//! cluster: an alert that fires while a test-controlled gauge is 1 blocks, and stops blocking
//! once the gauge is 0 again; a query Prometheus rejects and a Prometheus that is not there
//! are errors.

mod support;

use std::time::Duration;

use anyhow::{Result, anyhow, bail, ensure};
use support::prometheus::{FlagExporter, Prometheus, PrometheusSetup};
use testbed::wait_for;
use vacate::cluster::prometheus::PrometheusGate;
use vacate::config::PrometheusUrl;

const FIRING: &str = r#"ALERTS{alertstate="firing"}"#;
const TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes and rule evaluations happen every second; this leaves room for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn gate(url: &str, query: &str) -> Result<PrometheusGate> {
    let url = PrometheusUrl::parse(url).map_err(|e| anyhow!(e))?;
    PrometheusGate::new(&url, query, Duration::ZERO, TIMEOUT).map_err(|e| anyhow!(e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_blocks_drains_until_it_stops() -> Result<()> {
    let flag = FlagExporter::start().await?;
    let prometheus = PrometheusSetup::default()
        .scrape("flag", flag.port)
        .alert("VacateTestBlock", &format!("{} == 1", FlagExporter::METRIC))
        .route_prefix("/prometheus")
        .start()
        .await?;
    blocks_while_firing(&flag, &prometheus)
        .await
        .map_err(|e| anyhow!("{e:#}\n\nprometheus's log:\n{}", prometheus.log()))
}

async fn blocks_while_firing(flag: &FlagExporter, prometheus: &Prometheus) -> Result<()> {
    let url = prometheus.url();
    let alerts = gate(&url, FIRING)?;

    // The flag has been scraped at 0 and the rule evaluated since: nothing fires.
    let lowered = format!("{} == 0", FlagExporter::METRIC);
    wait_for("Prometheus to scrape the flag", DEADLINE, || async {
        Ok(!prometheus.query(&lowered).await?.is_empty())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answer = alerts.check().await;
    ensure!(answer == Ok(None), "with the flag at 0: {answer:?}");

    // The gauge itself, as a query: a series with its labels.
    let answer = gate(&url, FlagExporter::METRIC)?.check().await;
    let expected = format!(
        r#"1 series, e.g. {}{{instance="127.0.0.1:{}",job="flag"}}"#,
        FlagExporter::METRIC,
        flag.port
    );
    ensure!(answer == Ok(Some(expected)), "the gauge: {answer:?}");

    flag.set(true);
    let blocked = std::sync::Mutex::new(None);
    wait_for("the alert to fire", DEADLINE, || async {
        match alerts.check().await {
            Ok(summary) => {
                let firing = summary.is_some();
                *blocked.lock().unwrap() = summary;
                Ok(firing)
            }
            Err(e) => bail!(e),
        }
    })
    .await?;
    let summary = blocked.into_inner().unwrap().unwrap_or_default();
    eprintln!("blocked: {summary}");
    ensure!(
        summary.starts_with("1 series, e.g. ALERTS{")
            && summary.contains(r#"alertname="VacateTestBlock""#)
            && summary.contains(r#"alertstate="firing""#),
        "the summary of the firing alert: {summary}"
    );

    flag.set(false);
    wait_for("the alert to stop", DEADLINE, || async {
        match alerts.check().await {
            Ok(summary) => Ok(summary.is_none()),
            Err(e) => bail!(e),
        }
    })
    .await?;

    let error = gate(&url, "ALERTS{")?
        .check()
        .await
        .expect_err("a query with bad syntax is an error");
    eprintln!("bad query: {error}");
    ensure!(
        error.starts_with(&format!("Prometheus at {url} answered bad_data: "))
            && error.contains("parse error"),
        "the error of a bad query: {error}"
    );
    Ok(())
}

#[tokio::test]
async fn a_prometheus_that_is_not_there_is_an_error() -> Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}");
    let error = gate(&url, FIRING)?
        .check()
        .await
        .expect_err("a closed port is an error");
    eprintln!("closed port: {error}");
    ensure!(
        error.starts_with(&format!("Prometheus at {url} could not be asked: ")),
        "the error of a closed port: {error}"
    );
    Ok(())
}
