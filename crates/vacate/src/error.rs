//! The errors of vacate's Kubernetes shell.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed while {doing}: {source}")]
    Kube {
        doing: String,
        #[source]
        source: kube::Error,
    },
    #[error("the watch caches did not fill within {0:?}; is the API server reachable?")]
    CacheTimeout(std::time::Duration),
    #[error("the API server did not answer in time while carrying out {0}")]
    Timeout(String),
    #[error("node {0} not found")]
    NodeNotFound(String),
    #[error("not acting: {0}")]
    Fenced(String),
    /// KubeVirt's admission webhooks did not answer a request they must answer.
    #[error("{0}")]
    KubeVirtUnavailable(String),
}

impl Error {
    pub fn kube(doing: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let doing = doing.into();
        move |source| Error::Kube { doing, source }
    }

    /// Every label [`Error::metric_label`] returns; the series exist at 0 from the start.
    pub const METRIC_LABELS: [&'static str; 10] = [
        "conflict",
        "throttled",
        "api_server_error",
        "api_rejected",
        "api_unreachable",
        "cache_timeout",
        "timeout",
        "node_not_found",
        "fenced",
        "kubevirt_unavailable",
    ];

    /// A short, stable label for `vacate_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                error if is_throttled(error) => "throttled",
                kube::Error::Api(status) if status.code >= 500 => "api_server_error",
                kube::Error::Api(_) => "api_rejected",
                _ => "api_unreachable",
            },
            Error::CacheTimeout(_) => "cache_timeout",
            Error::Timeout(_) => "timeout",
            Error::NodeNotFound(_) => "node_not_found",
            Error::Fenced(_) => "fenced",
            Error::KubeVirtUnavailable(_) => "kubevirt_unavailable",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The HTTP status code of an API error, if the API server answered.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Whether the API server turned the request away before looking at it: API priority and
/// fairness and the max-in-flight filter answer 429 with the plain text "Too many requests,
/// please try again later." (k8s.io/apiserver, filters/priority-and-fairness.go and
/// filters/maxinflight.go). Unlike a PodDisruptionBudget's 429 ("Cannot evict pod as it would
/// violate the pod's disruption budget.") or an admission webhook's ("admission webhook ...
/// denied the request: ..."), it says nothing about the object: the request is simply tried
/// again.
pub fn is_throttled(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 429 && status.message.starts_with("Too many requests"))
}

/// The API server's message, or the error's text.
pub fn status_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}
