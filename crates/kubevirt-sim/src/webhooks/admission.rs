//! AdmissionReview (admission.k8s.io/v1) requests and responses, reduced to the fields the
//! webhooks use.

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

/// The `request` of an AdmissionReview.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub user_info: UserInfo,
}

/// `request.userInfo`: who made the request.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
}

impl AdmissionRequest {
    pub fn from_review(review: &Value) -> Result<AdmissionRequest, String> {
        let request = review
            .get("request")
            .ok_or("AdmissionReview without request")?;
        serde_json::from_value(request.clone())
            .map_err(|e| format!("malformed AdmissionReview request: {e}"))
    }
}

/// What a webhook decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow,
    /// Allow with a JSON patch (RFC 6902 operations).
    Patch(Vec<Value>),
    /// Deny with an HTTP code and a message (`metav1.Status`); `reason` as in
    /// `metav1.StatusReason` when KubeVirt sets one.
    Deny {
        code: u16,
        message: String,
        reason: Option<&'static str>,
    },
}

impl Verdict {
    /// `denied(...)` of pod-eviction-admitter.go: 429 TooManyRequests.
    pub fn too_many_requests(message: impl Into<String>) -> Verdict {
        Verdict::Deny {
            code: 429,
            message: message.into(),
            reason: None,
        }
    }

    /// `webhookutils.ToAdmissionResponseError`: 400 with the error's text.
    pub fn bad_request(message: impl Into<String>) -> Verdict {
        Verdict::Deny {
            code: 400,
            message: message.into(),
            reason: None,
        }
    }

    /// `webhookutils.ToAdmissionResponse(causes)`: 422 Invalid.
    pub fn invalid(message: impl Into<String>) -> Verdict {
        Verdict::Deny {
            code: 422,
            message: message.into(),
            reason: Some("Invalid"),
        }
    }

    /// The AdmissionReview answering the request with `uid`.
    pub fn into_review(self, uid: &str) -> Value {
        let response = match self {
            Verdict::Allow => json!({"uid": uid, "allowed": true}),
            Verdict::Patch(ops) => {
                let patch =
                    base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string());
                json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch})
            }
            Verdict::Deny {
                code,
                message,
                reason,
            } => {
                let mut status = json!({"code": code, "message": message});
                if let Some(r) = reason {
                    status["reason"] = json!(r);
                }
                json!({"uid": uid, "allowed": false, "status": status})
            }
        };
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_round_trip() {
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "abc", "namespace": "ns", "name": "p", "operation": "CREATE", "subResource": "eviction", "dryRun": true,
                        "object": {"kind": "Eviction"}}});
        let req = AdmissionRequest::from_review(&review).unwrap();
        assert_eq!(
            (req.uid.as_str(), req.dry_run, req.sub_resource.as_deref()),
            ("abc", Some(true), Some("eviction"))
        );
        let out = Verdict::too_many_requests("no").into_review("abc");
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 429);
        let out =
            Verdict::Patch(vec![json!({"op": "add", "path": "/x", "value": 1})]).into_review("abc");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded).unwrap()[0]["op"],
            "add"
        );
    }
}
