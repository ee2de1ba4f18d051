//! Who is on the other end of a stream: the pod named in its projected ServiceAccount token.
//!
//! The apiserver is the only judge: a TokenReview with audience `bulwark` says whether the token
//! is valid and, for a token bound to a pod (the kubelet's projected tokens are), which pod —
//! name and uid in the user's extra fields. Reviews are cached briefly by token hash, so a
//! sidecar's acknowledgements do not cost one review each.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use bulwark_api::{distribution::AUDIENCE, snapshot::ObjectRef};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// How long a positive review is trusted. Short: a deleted pod's token stops working soon.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// The pod a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub pod: ObjectRef,
    pub uid: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("the token is not bound to a pod (use the pod's projected token, audience {AUDIENCE})")]
    NotBound,
    #[error("cannot review the token: {0}")]
    Api(#[from] kube::Error),
}

impl AuthError {
    /// The metric label and HTTP status of this failure.
    pub fn kind(&self) -> (&'static str, u16) {
        match self {
            AuthError::Missing => ("missing", 401),
            AuthError::Rejected(_) => ("rejected", 401),
            AuthError::NotBound => ("not_bound", 403),
            AuthError::Api(_) => ("review_failed", 503),
        }
    }
}

pub struct Authenticator {
    client: Client,
    cache: Mutex<HashMap<u128, (PodIdentity, Instant)>>,
}

impl Authenticator {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
        }
    }

    /// The identity behind an `Authorization` header value.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<PodIdentity, AuthError> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let hash = xxhash_rust::xxh3::xxh3_128(token.as_bytes());
        if let Some((identity, at)) = self.cache.lock().expect("auth cache").get(&hash)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(identity.clone());
        }
        let identity = self.review(token).await?;
        let mut cache = self.cache.lock().expect("auth cache");
        cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        cache.insert(hash, (identity.clone(), Instant::now()));
        Ok(identity)
    }

    async fn review(&self, token: &str) -> Result<PodIdentity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == AUDIENCE)
        {
            return Err(AuthError::Rejected(format!("audience is not {AUDIENCE}")));
        }
        let user = status.user.unwrap_or_default();
        identity_of(
            user.username.as_deref().unwrap_or_default(),
            &user.extra.unwrap_or_default(),
        )
    }
}

/// Reads the pod from a reviewed user: `system:serviceaccount:<ns>:<sa>` plus the pod's name and
/// uid in `extra`.
fn identity_of(
    username: &str,
    extra: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<PodIdentity, AuthError> {
    let mut parts = username.splitn(4, ':');
    let (Some("system"), Some("serviceaccount"), Some(namespace), Some(sa)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Rejected(format!(
            "{username} is not a ServiceAccount"
        )));
    };
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let (Some(name), Some(uid)) = (first(POD_NAME), first(POD_UID)) else {
        return Err(AuthError::NotBound);
    };
    Ok(PodIdentity {
        pod: ObjectRef {
            namespace: namespace.to_string(),
            name,
        },
        uid,
        service_account: sa.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_pod_bound_service_account_token_names_its_pod() {
        let extra = BTreeMap::from([
            (POD_NAME.to_string(), vec!["api-0".to_string()]),
            (POD_UID.to_string(), vec!["1234".to_string()]),
        ]);
        let id = identity_of("system:serviceaccount:shop:api", &extra).unwrap();
        assert_eq!(id.pod.namespace, "shop");
        assert_eq!(id.pod.name, "api-0");
        assert_eq!(id.uid, "1234");
        assert_eq!(id.service_account, "api");
    }

    #[test]
    fn other_tokens_are_refused() {
        assert!(matches!(
            identity_of("system:serviceaccount:shop:api", &BTreeMap::new()),
            Err(AuthError::NotBound)
        ));
        assert!(matches!(
            identity_of("alice", &BTreeMap::new()),
            Err(AuthError::Rejected(_))
        ));
    }
}
