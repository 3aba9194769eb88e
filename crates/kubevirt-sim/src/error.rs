//! Errors of the simulator.

/// Anything that can go wrong while simulating KubeVirt.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("waiting for {0} timed out")]
    Timeout(String),
    #[error("background task: {0}")]
    Task(String),
    #[error("object without {0}")]
    MissingField(&'static str),
    /// The cache still shows a version of the object that this process already wrote over:
    /// a write based on it would be refused, so it is not sent.
    #[error("the cache of {0} is older than this process's last write of it")]
    StaleCache(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A 409 from the API server: someone else changed the object; retry with fresh state.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }

    /// A 404 from the API server: the object is gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 404)
    }
}

/// Whether a kube error is a 404.
pub fn kube_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether a kube error is a 409 (AlreadyExists or Conflict).
pub fn kube_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
