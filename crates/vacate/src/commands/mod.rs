//! The subcommands of the `vacate` binary.

pub mod drain;
pub mod plan;
pub mod run;
pub mod status;

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, LogFormat};

/// Exit status for configuration errors, distinct from a failed drain (1).
pub const EXIT_CONFIG: u8 = 2;

/// Loads the configuration or explains what is wrong with it.
pub fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("vacate: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// `vacate check-config FILE`.
pub fn check_config(path: &Path) -> ExitCode {
    match load_config(Some(path)) {
        Ok(_) => {
            println!("{}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub fn init_logging(config: &Config) {
    // log.level was validated with the configuration (VACATE_LOG__LEVEL overrides it).
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// A client for the cluster in KUBECONFIG or, inside a pod, its service account.
///
/// The client's own retries are turned off: a 429 from an eviction is an answer (a
/// PodDisruptionBudget, or KubeVirt asking for a migration) that vacate records and retries
/// with its own backoff, not a reason to block the drain loop inside a request.
pub async fn client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot find the cluster ({e}); set KUBECONFIG or run inside a pod with a service account"
        )
    })?;
    client_for(config).map_err(|e| anyhow::anyhow!("cannot build a client for the cluster: {e}"))
}

/// Bytes each connection reads at a time, and so the most its read buffer holds.
///
/// hyper's default read buffer grows with what a connection reads, up to about 400 kB, and
/// keeps its size while the connection lives: every watch's connection, after a page of a
/// first list or a relist, held that much for as long as it watched. 16 KiB is a TLS
/// record's worth; a page of a list is read in more reads, into no larger a buffer.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// kube's client stack for `config` (TLS with its certificates, the connect, read and write
/// timeouts, the authentication and extra headers it names), without the client's retries,
/// and with each connection's read buffer bounded to [`READ_BUFFER_BYTES`].
pub fn client_for(config: kube::Config) -> kube::Result<kube::Client> {
    use kube::client::ConfigExt;
    use tower::ServiceBuilder;

    if let Some(proxy) = &config.proxy_url {
        return Err(kube::Error::ProxyProtocolUnsupported {
            proxy_url: Box::new(proxy.clone()),
        });
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let tls = config.rustls_https_connector_with_connector(http)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(tls);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http1_read_buf_exact_size(READ_BUFFER_BYTES)
            .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// Starts the engine's watches for the nodes of `filter`, without leader election, and waits
/// until its caches are filled: the shell of the one-shot commands.
pub(crate) async fn start_shell(
    client: &kube::Client,
    config: &std::sync::Arc<crate::config::Config>,
    filter: crate::cluster::watch::NodeFilter,
) -> anyhow::Result<crate::cluster::Shell> {
    let shell = crate::cluster::Shell::start(
        client.clone(),
        config.clone(),
        crate::metrics::Metrics::new(),
        filter,
        None,
    );
    shell
        .ctx
        .stores
        .wait_until_ready(std::time::Duration::from_secs(60))
        .await?;
    Ok(shell)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A list far larger than a connection's read buffer arrives whole, through the same
    /// stack the daemon uses.
    #[tokio::test]
    async fn a_list_larger_than_the_read_buffer_arrives_whole() {
        let items: Vec<serde_json::Value> = (0..3000)
            .map(|i| {
                serde_json::json!({
                    "metadata": {"name": format!("node-{i:05}"), "labels": {"zone": "a".repeat(40)}}
                })
            })
            .collect();
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "7"},
            "items": items,
        })
        .to_string();
        assert!(body.len() > 10 * READ_BUFFER_BYTES, "{} bytes", body.len());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(body.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let client = client_for(config).expect("a client");
        let nodes = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client)
            .list(&Default::default())
            .await
            .expect("the list");
        assert_eq!(nodes.items.len(), 3000);
        assert_eq!(
            nodes.items[2999].metadata.name.as_deref(),
            Some("node-02999")
        );
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /api/v1/nodes"), "{request}");
    }

    /// kube's client supports no proxy without features vacate leaves off; saying so beats
    /// connecting straight to the cluster past the proxy the kubeconfig names.
    #[tokio::test]
    async fn a_proxy_in_the_kubeconfig_is_refused() {
        let mut config = kube::Config::new("https://10.0.0.1:6443".parse().unwrap());
        config.proxy_url = Some("http://proxy.example:3128".parse().unwrap());
        let Err(err) = client_for(config) else {
            panic!("a proxy is refused")
        };
        assert!(err.to_string().contains("proxy.example"), "{err}");
    }
}
