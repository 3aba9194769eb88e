//! The HTTPS server of the simulated virt-api: KubeVirt's admission webhooks for migrations
//! ([`migration_admission`]) and pod evictions ([`pod_eviction`]), plus `/readyz`.

pub mod admission;
pub mod migration_admission;
pub mod pod_eviction;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::controllers::Context;
use crate::error::Result;
use crate::install::paths;
use admission::AdmissionRequest;

/// Largest AdmissionReview accepted (the API server sends objects of up to ~3 MiB).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Whether `/readyz` answers 200: set once everything is installed and running.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves HTTPS on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<Context>,
    ready: Readiness,
) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accepting a connection failed: {e}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
            };
            let service = service_fn(move |req| handle(req, ctx.clone(), ready.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

async fn handle(
    req: Request<Incoming>,
    ctx: Arc<Context>,
    ready: Readiness,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if req.method() == Method::GET && (path == paths::READYZ || path == "/healthz") {
        return Ok(if ready.is_ready() {
            reply(StatusCode::OK, "ok", "text/plain")
        } else {
            reply(StatusCode::SERVICE_UNAVAILABLE, "starting", "text/plain")
        });
    }
    if req.method() != Method::POST {
        return Ok(reply(StatusCode::NOT_FOUND, "not found", "text/plain"));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {e}"),
                "text/plain",
            ));
        }
    };
    let review: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("not JSON: {e}"),
                "text/plain",
            ));
        }
    };
    let request = match AdmissionRequest::from_review(&review) {
        Ok(r) => r,
        Err(e) => return Ok(reply(StatusCode::BAD_REQUEST, e, "text/plain")),
    };
    let verdict = match path.as_str() {
        paths::MIGRATION_CREATE_VALIDATE => {
            migration_admission::validate_create(&ctx, &request).await
        }
        paths::MIGRATION_CREATE_MUTATE => migration_admission::mutate_create(&request),
        paths::POD_EVICTION_VALIDATE => pod_eviction::admit(&ctx, &request).await,
        _ => {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                "no such webhook",
                "text/plain",
            ));
        }
    };
    let answer = verdict.into_review(&request.uid);
    Ok(reply(
        StatusCode::OK,
        answer.to_string(),
        "application/json",
    ))
}
