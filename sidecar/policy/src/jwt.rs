//! Bearer tokens for `JWTClaim` key parts: where a policy reads the token, and the claims it
//! trusts from it.
//!
//! The token is read from the policy's `jwt.header` (default `Authorization`). From
//! `Authorization` the `Bearer ` scheme (any case) is stripped, and a value with another scheme
//! (`Basic ...`) is no token; any other header carries the bare token. The token must be
//! base64url text and dots only, with exactly three dot-separated parts.
//!
//! Without `jwt.verification` the payload is only decoded (it must be a JSON object): a forged
//! claim only changes whose counter a request is charged to, which a client could do as well by
//! sending no token. With it, the token's claims are used only if
//! [`jsonwebtoken`] verifies its signature with the policy's key (one PEM key or HMAC secret, or
//! from a JWKS document the key its `kid` names) and algorithms, its `exp`
//! (required) and `nbf` (60 s leeway), and its `iss` and `aud` when the policy names them. A
//! token that fails gives no claims, like a missing one, so it is charged to the `""` counter
//! with every other unauthenticated request and can never spend someone else's.
//!
//! Verified tokens are remembered (by their exact text, up to [`CACHE_CAPACITY`] per policy)
//! until they expire: a client sends the same token for many requests, and a public-key
//! signature check costs far more than the rest of the request (BENCHMARKS.md).

use crate::lock::lock;
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bulwark_api::crd::common::{JwtSource, JwtVerification};
use bulwark_api::snapshot::{PolicySource, SecretString, secret_key_id};
use http::{HeaderMap, HeaderName, header::AUTHORIZATION};
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, Validation,
    jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use prometheus::IntCounter;
use serde_json::{Map, Value};

use crate::compile::{CompileEnv, CompileError};
use crate::matching::header_str;

pub mod metrics;
mod ring_verifier;

pub use ring_verifier::install as use_ring_for_verification;

/// Base64url as JWTs use it (no padding), also accepting padding.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Verification keys by [`secret_key_id`], as the snapshot carries them.
pub type JwtKeys = BTreeMap<String, SecretString>;

/// A token's claims.
pub type Claims = Arc<Map<String, Value>>;

/// Verified tokens remembered per policy. At about 1 KB per token (text and claims), a full
/// cache holds about 4 MB.
pub const CACHE_CAPACITY: usize = 4096;

/// Seconds of clock skew allowed on `exp` and `nbf` (jsonwebtoken's default, kept explicit
/// because the cache checks them too).
const LEEWAY: u64 = 60;

/// A policy's bearer-token source.
pub struct TokenClaims {
    header: HeaderName,
    /// `Authorization`: strip the `Bearer ` scheme.
    bearer: bool,
    verifier: Option<Verifier>,
}

struct Verifier {
    /// One key (PEM or HMAC secret), or a JWKS document's keys, chosen by the token's `kid`.
    keys: Vec<VerificationKey>,
    validation: Validation,
    verified_tokens: Arc<VerifiedTokens>,
    verified: IntCounter,
    rejected: IntCounter,
}

struct VerificationKey {
    kid: Option<String>,
    key: DecodingKey,
}

/// Tokens that passed verification, by their exact text (long-lived state: see [`crate::state`]).
#[derive(Default)]
pub struct VerifiedTokens(Mutex<HashMap<Box<str>, Verified>>);

impl VerifiedTokens {
    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token that passed verification, valid until `exp` (plus leeway).
struct Verified {
    claims: Claims,
    exp: u64,
    nbf: u64,
}

impl std::fmt::Debug for TokenClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClaims")
            .field("header", &self.header)
            .field("verified", &self.verifier.is_some())
            .finish()
    }
}

impl TokenClaims {
    /// From the policy's optional `jwt` source; `keys` holds the verification key it names.
    /// Errors name the field under `jwt`.
    pub fn compile(
        jwt: Option<&JwtSource>,
        source: &PolicySource,
        keys: &JwtKeys,
        env: &CompileEnv<'_>,
    ) -> Result<Self, CompileError> {
        let header = jwt.map_or("Authorization", |j| j.header.as_str());
        let header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            CompileError::new(
                "jwt.header",
                format!("{header:?} is not a valid header name"),
            )
        })?;
        let verifier = match jwt.and_then(|j| j.verification.as_ref()) {
            None => None,
            Some(v) => {
                use_ring_for_verification();
                Some(
                    Verifier::compile(v, source, keys, env)
                        .map_err(|e| e.under("jwt.verification"))?,
                )
            }
        };
        Ok(Self {
            bearer: header == AUTHORIZATION,
            header,
            verifier,
        })
    }

    /// The header the token is read from.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The claims of the request's token: verified if the policy asks, else decoded. `None`
    /// for a missing, malformed or (when verifying) unverified token.
    pub fn claims(&self, headers: &HeaderMap) -> Option<Claims> {
        let token = self.token(headers)?;
        match &self.verifier {
            None => decode_payload(token).map(Arc::new),
            Some(verifier) => verifier.claims(token, jsonwebtoken::get_current_timestamp()),
        }
    }

    fn token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let value = header_str(headers.get(&self.header)?)?.trim();
        let token = if self.bearer {
            strip_bearer(value)?
        } else {
            value
        };
        // A compact JWS is base64url text and dots: anything else (a scheme, spaces) is no token.
        let jws_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=');
        (token.bytes().all(jws_byte) && token.split('.').count() == 3).then_some(token)
    }
}

impl Verifier {
    /// The claims of `token` if it verifies at `now` (Unix seconds).
    fn claims(&self, token: &str, now: u64) -> Option<Claims> {
        let outcome = self
            .remembered(token, now)
            .unwrap_or_else(|| self.verify(token, now));
        match outcome {
            Some(_) => self.verified.inc(),
            None => self.rejected.inc(),
        }
        outcome
    }

    /// `Some(outcome)` if `token` was verified before: its claims while it is valid, `None`
    /// (and forgotten) once it has expired.
    fn remembered(&self, token: &str, now: u64) -> Option<Option<Claims>> {
        let mut tokens = lock(&self.verified_tokens.0);
        let seen = tokens.get(token)?;
        if now <= seen.exp.saturating_add(LEEWAY) && seen.nbf <= now.saturating_add(LEEWAY) {
            return Some(Some(seen.claims.clone()));
        }
        tokens.remove(token);
        Some(None)
    }

    /// The key that may have signed `token`: the one key; or, from a JWKS, the key of the
    /// token's `kid` (without a `kid`, only a set of one key will do).
    fn key_for(&self, token: &str) -> Option<&DecodingKey> {
        let only = match self.keys.as_slice() {
            [only] if only.kid.is_none() => return Some(&only.key),
            [only] => Some(&only.key),
            _ => None,
        };
        match jsonwebtoken::decode_header(token).ok()?.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .map(|k| &k.key),
            None => only,
        }
    }

    fn verify(&self, token: &str, now: u64) -> Option<Claims> {
        let key = self.key_for(token)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation).ok()?;
        let seconds = |name: &str| {
            data.claims
                .get(name)
                .and_then(Value::as_f64)
                .map(|s| s as u64)
        };
        let verified = Verified {
            exp: seconds("exp")?, // required by the validation
            nbf: seconds("nbf").unwrap_or(0),
            claims: Arc::new(data.claims),
        };
        let claims = verified.claims.clone();
        let mut tokens = lock(&self.verified_tokens.0);
        if tokens.len() >= CACHE_CAPACITY {
            tokens.retain(|_, t| now <= t.exp.saturating_add(LEEWAY));
            if tokens.len() >= CACHE_CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), verified);
        Some(claims)
    }

    fn compile(
        spec: &JwtVerification,
        source: &PolicySource,
        keys: &JwtKeys,
        env: &CompileEnv<'_>,
    ) -> Result<Self, CompileError> {
        let algorithms = spec
            .algorithms
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<Algorithm>().map_err(|_| {
                    CompileError::new(
                        format!("algorithms[{i}]"),
                        format!("unknown algorithm {a:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let family = algorithms
            .first()
            .map(|a| a.family())
            .ok_or_else(|| CompileError::new("algorithms", "at least one algorithm is required"))?;
        if let Some(i) = algorithms.iter().position(|a| a.family() != family) {
            return Err(CompileError::new(
                format!("algorithms[{i}]"),
                "algorithms must all suit the one key: HS*, RS*/PS*, ES* or EdDSA",
            ));
        }
        let id = secret_key_id(&source.namespace, &spec.key_secret_ref);
        let material = keys.get(&id).ok_or_else(|| {
            CompileError::new(
                "keySecretRef",
                format!("Secret key {id} is not available to this sidecar"),
            )
        })?;
        let keys = verification_keys(material.expose(), family, &algorithms)
            .map_err(|e| CompileError::new("keySecretRef", format!("Secret key {id}: {e}")))?;
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY;
        if let Some(issuer) = &spec.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        if spec.audiences.is_empty() {
            // No audience named: any `aud` is fine (jsonwebtoken would refuse every token
            // that has one).
            validation.validate_aud = false;
        } else {
            validation.set_audience(&spec.audiences);
            validation.required_spec_claims.insert("aud".into());
        }
        let policy = format!("{}/{}", source.namespace, source.name);
        // Verified tokens stay valid while the policy's key and checks are the same: kept across
        // snapshots (any other policy change no longer re-verifies every client's token).
        let identity = format!(
            "{policy}\n{}\n{}",
            serde_json::to_string(spec).expect("a spec serialises"),
            material.expose()
        );
        let verified_tokens = env.state.claim(
            xxhash_rust::xxh3::xxh3_64(identity.as_bytes()),
            VerifiedTokens::default,
        );
        let counter = |result| {
            env.metrics
                .jwt
                .verifications
                .with_label_values(&[policy.as_str(), result])
        };
        Ok(Self {
            keys,
            validation,
            verified_tokens,
            verified: counter("verified"),
            rejected: counter("rejected"),
        })
    }
}

/// The keys in a Secret key's text: a JWKS document (`{"keys": [...]}`; keys for encryption, of
/// another family or of an algorithm not listed are skipped), else one PEM public key, or for
/// HMAC the secret's bytes.
fn verification_keys(
    text: &str,
    family: AlgorithmFamily,
    algorithms: &[Algorithm],
) -> Result<Vec<VerificationKey>, String> {
    let looks_like_json = text.trim_start().starts_with('{');
    let jwks = serde_json::from_str::<JwkSet>(text);
    if let Ok(set) = jwks {
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let usable = jwk.common.public_key_use != Some(PublicKeyUse::Encryption)
                && jwk_family(jwk) == Some(family)
                && jwk.common.key_algorithm.is_none_or(|alg| {
                    algorithms
                        .iter()
                        .any(|&listed| KeyAlgorithm::from(listed) == alg)
                });
            if usable {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("keys[{i}]: {e}"))?;
                keys.push(VerificationKey {
                    kid: jwk.common.key_id.clone(),
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "the JWKS has no signing key for {family:?} algorithms {algorithms:?}"
            ));
        }
        return Ok(keys);
    }
    let bytes = text.as_bytes();
    let key = match family {
        AlgorithmFamily::Hmac => Ok(DecodingKey::from_secret(bytes)),
        _ if looks_like_json => {
            let e = jwks.err().map(|e| e.to_string()).unwrap_or_default();
            return Err(format!("not a JWKS document: {e}"));
        }
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(bytes),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(bytes),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(bytes),
    }
    .map_err(|e| format!("not a PEM public key for {family:?} algorithms: {e}"))?;
    Ok(vec![VerificationKey { kid: None, key }])
}

fn jwk_family(jwk: &Jwk) -> Option<AlgorithmFamily> {
    match jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(AlgorithmFamily::Rsa),
        AlgorithmParameters::EllipticCurve(_) => Some(AlgorithmFamily::Ec),
        AlgorithmParameters::OctetKeyPair(_) => Some(AlgorithmFamily::Ed),
        AlgorithmParameters::OctetKey(_) => Some(AlgorithmFamily::Hmac),
        _ => None,
    }
}

/// The payload of a compact JWS, unverified, if it is a JSON object.
fn decode_payload(token: &str) -> Option<Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = BASE64URL.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn strip_bearer(value: &str) -> Option<&str> {
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case("bearer ")
        .then(|| value[7..].trim_start())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::PolicyMetrics;
    use bulwark_api::crd::common::SecretKeyRef;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// A token source without verification, reading `header`.
    pub(crate) fn unverified(header: &str) -> TokenClaims {
        let jwt = JwtSource {
            header: header.into(),
            verification: None,
        };
        TokenClaims::compile(
            Some(&jwt),
            &PolicySource::default(),
            &JwtKeys::new(),
            &CompileEnv::local(&PolicyMetrics::unregistered()),
        )
        .unwrap()
    }

    /// A token with `payload` and a signature nobody checks.
    pub(crate) fn unsigned_token(payload: &Value) -> String {
        let enc = |v: &Value| BASE64URL.encode(v.to_string());
        format!(
            "{}.{}.signature",
            enc(&json!({"alg": "HS256", "typ": "JWT"})),
            enc(payload)
        )
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    fn sub(claims: Option<Claims>) -> Option<String> {
        claims.map(|c| c["sub"].as_str().unwrap_or_default().to_owned())
    }

    #[test]
    fn bearer_stripping() {
        let t = unsigned_token(&json!({"sub": "u"}));
        let source = unverified("Authorization");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            sub(source.claims(&headers))
        };
        for value in [
            format!("Bearer {t}"),
            format!("bearer {t}"),
            format!("BEARER   {t}"),
            format!(" Bearer {t} "),
        ] {
            assert_eq!(with(&value).as_deref(), Some("u"), "{value:?}");
        }
        for value in [
            t.clone(),
            format!("Basic {t}"),
            "Bearer".into(),
            "Bearer x".into(),
        ] {
            assert_eq!(with(&value), None, "{value:?}");
        }
    }

    #[test]
    fn another_header_carries_the_bare_token() {
        let t = unsigned_token(&json!({"sub": "u"}));
        let source = unverified("X-Token");
        let mut headers = HeaderMap::new();
        headers.insert("x-token", t.parse().unwrap());
        assert_eq!(sub(source.claims(&headers)).as_deref(), Some("u"));
        headers.insert("x-token", format!("Bearer {t}").parse().unwrap());
        assert_eq!(source.claims(&headers), None);
        assert_eq!(
            source.claims(&bearer(&t)),
            None,
            "Authorization is not read"
        );
    }

    #[test]
    fn malformed_tokens_give_no_claims() {
        let source = unverified("Authorization");
        let enc = |s: &str| BASE64URL.encode(s);
        let padded = format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"sub":"padded"}"#)
        );
        assert_eq!(
            sub(source.claims(&bearer(&padded))).as_deref(),
            Some("padded")
        );
        for bad in [
            "not-a-token".to_owned(),
            format!("h.{}", enc(r#"{"sub":"u"}"#)),
            format!("h.{}.s.x", enc(r#"{"sub":"u"}"#)),
            format!("h.{}.s", enc("[1,2]")),
            format!("h.{}.s", enc("not json")),
            "h.!!!.s".to_owned(),
        ] {
            assert_eq!(source.claims(&bearer(&bad)), None, "{bad}");
        }
    }

    #[test]
    fn a_bad_header_name_is_refused_at_jwt_header() {
        let jwt = JwtSource {
            header: "bad header".into(),
            verification: None,
        };
        let metrics = PolicyMetrics::unregistered();
        let e = TokenClaims::compile(
            Some(&jwt),
            &PolicySource::default(),
            &JwtKeys::new(),
            &CompileEnv::local(&metrics),
        )
        .unwrap_err();
        assert_eq!(e.field, "jwt.header");
    }

    const HMAC: &str = "a shared secret of enough length";

    struct Fixture {
        source: TokenClaims,
        metrics: PolicyMetrics,
    }

    /// A verifying source for policy `shop/api` with `key` in Secret `jwt`, key `key`.
    fn verifying(
        algorithms: &[&str],
        key: &str,
        issuer: Option<&str>,
        audiences: &[&str],
    ) -> Result<Fixture, CompileError> {
        let jwt = JwtSource {
            header: "Authorization".into(),
            verification: Some(JwtVerification {
                key_secret_ref: SecretKeyRef {
                    name: "jwt".into(),
                    key: "key".into(),
                },
                algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
                issuer: issuer.map(str::to_owned),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
            }),
        };
        let policy = PolicySource {
            namespace: "shop".into(),
            name: "api".into(),
            generation: 1,
        };
        let keys = JwtKeys::from([("shop/jwt/key".to_string(), SecretString::new(key))]);
        let metrics = PolicyMetrics::unregistered();
        let source =
            TokenClaims::compile(Some(&jwt), &policy, &keys, &CompileEnv::local(&metrics))?;
        Ok(Fixture { source, metrics })
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    impl Fixture {
        fn sub(&self, token: &str) -> Option<String> {
            sub(self.source.claims(&bearer(token)))
        }

        fn counted(&self, result: &str) -> u64 {
            self.metrics
                .jwt
                .verifications
                .with_label_values(&["shop/api", result])
                .get()
        }
    }

    #[test]
    fn hmac_tokens_are_verified_and_checked_for_expiry_and_not_before() {
        let f = verifying(&["HS256", "HS384"], HMAC, None, &[]).unwrap();
        let key = EncodingKey::from_secret(HMAC.as_bytes());
        let valid = json!({"sub": "alice", "exp": now() + 600});
        assert_eq!(
            f.sub(&sign(Algorithm::HS256, &key, &valid)).as_deref(),
            Some("alice")
        );
        assert_eq!(
            f.sub(&sign(Algorithm::HS384, &key, &valid)).as_deref(),
            Some("alice")
        );
        // Any audience is fine when the policy names none.
        let with_aud = json!({"sub": "alice", "exp": now() + 600, "aud": "other"});
        assert_eq!(
            f.sub(&sign(Algorithm::HS256, &key, &with_aud)).as_deref(),
            Some("alice")
        );
        assert_eq!(f.counted("verified"), 3);

        let wrong_key = EncodingKey::from_secret(b"another secret of enough length!");
        let rejected = [
            ("wrong key", sign(Algorithm::HS256, &wrong_key, &valid)),
            ("algorithm not listed", sign(Algorithm::HS512, &key, &valid)),
            ("unsigned", unsigned_token(&valid)),
            (
                "expired beyond the leeway",
                sign(
                    Algorithm::HS256,
                    &key,
                    &json!({"sub": "alice", "exp": now() - 120}),
                ),
            ),
            (
                "not yet valid",
                sign(
                    Algorithm::HS256,
                    &key,
                    &json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300}),
                ),
            ),
            (
                "no exp",
                sign(Algorithm::HS256, &key, &json!({"sub": "alice"})),
            ),
        ];
        for (why, token) in &rejected {
            assert_eq!(f.sub(token), None, "{why}");
        }
        assert_eq!(f.counted("rejected"), rejected.len() as u64);
    }

    #[test]
    fn issuer_and_audience_are_required_when_named() {
        let f = verifying(&["HS256"], HMAC, Some("https://idp"), &["api", "web"]).unwrap();
        let key = EncodingKey::from_secret(HMAC.as_bytes());
        let token = |claims: Value| sign(Algorithm::HS256, &key, &claims);
        let exp = now() + 600;
        let ok = token(json!({"sub": "a", "exp": exp, "iss": "https://idp", "aud": ["x", "web"]}));
        assert_eq!(f.sub(&ok).as_deref(), Some("a"));
        for (why, claims) in [
            (
                "other issuer",
                json!({"sub": "a", "exp": exp, "iss": "https://evil", "aud": "api"}),
            ),
            ("no issuer", json!({"sub": "a", "exp": exp, "aud": "api"})),
            (
                "other audience",
                json!({"sub": "a", "exp": exp, "iss": "https://idp", "aud": "x"}),
            ),
            (
                "no audience",
                json!({"sub": "a", "exp": exp, "iss": "https://idp"}),
            ),
        ] {
            assert_eq!(f.sub(&token(claims)), None, "{why}");
        }
    }

    #[test]
    fn public_keys_verify_and_resist_algorithm_confusion() {
        for (alg, rcgen_alg, name) in [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256, "ES256"),
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519, "EdDSA"),
        ] {
            let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
            let public = pair.public_key_pem();
            let private = pair.serialize_pem();
            let signing = match alg {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
                _ => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
            };
            let f = verifying(&[name], &public, None, &[]).unwrap();
            let claims = json!({"sub": "bob", "exp": now() + 600});
            assert_eq!(
                f.sub(&sign(alg, &signing, &claims)).as_deref(),
                Some("bob"),
                "{name}"
            );
            // The classic attack: an HS256 token whose HMAC key is the public key's PEM.
            let forged = sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(public.as_bytes()),
                &claims,
            );
            assert_eq!(
                f.sub(&forged),
                None,
                "{name}: HS256 with the public key as secret"
            );
            let other = rcgen::KeyPair::generate_for(rcgen_alg)
                .unwrap()
                .serialize_pem();
            let other = match alg {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(other.as_bytes()).unwrap(),
                _ => EncodingKey::from_ec_pem(other.as_bytes()).unwrap(),
            };
            assert_eq!(
                f.sub(&sign(alg, &other, &claims)),
                None,
                "{name}: another key"
            );
        }
    }

    #[test]
    fn compile_errors_name_the_field() {
        let field = |r: Result<Fixture, CompileError>| r.map(|_| ()).unwrap_err().field;
        assert_eq!(
            field(verifying(&["ES256"], "not a pem", None, &[])),
            "jwt.verification.keySecretRef"
        );
        assert_eq!(
            field(verifying(&["HS256", "RS256"], HMAC, None, &[])),
            "jwt.verification.algorithms[1]"
        );
        assert_eq!(
            field(verifying(&["HS999"], HMAC, None, &[])),
            "jwt.verification.algorithms[0]"
        );
        // The key is missing from the snapshot (the operator could not read the Secret).
        let jwt = JwtSource {
            header: "Authorization".into(),
            verification: Some(JwtVerification {
                key_secret_ref: SecretKeyRef {
                    name: "gone".into(),
                    key: "key".into(),
                },
                algorithms: vec!["HS256".into()],
                issuer: None,
                audiences: vec![],
            }),
        };
        let e = TokenClaims::compile(
            Some(&jwt),
            &PolicySource::default(),
            &JwtKeys::new(),
            &CompileEnv::local(&PolicyMetrics::unregistered()),
        )
        .unwrap_err();
        assert_eq!(e.field, "jwt.verification.keySecretRef");
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let f = verifying(&["HS256"], HMAC, None, &[]).unwrap();
        let verifier = f.source.verifier.as_ref().unwrap();
        let key = EncodingKey::from_secret(HMAC.as_bytes());
        let now = now() as u64;
        let token = sign(
            Algorithm::HS256,
            &key,
            &json!({"sub": "a", "exp": now + 600}),
        );
        assert!(verifier.claims(&token, now).is_some());
        assert!(
            verifier.claims(&token, now + 600 + LEEWAY).is_some(),
            "within the leeway"
        );
        assert_eq!(verifier.verified_tokens.0.lock().unwrap().len(), 1);
        assert!(
            verifier.claims(&token, now + 601 + LEEWAY).is_none(),
            "expired while remembered"
        );
        assert!(
            verifier.verified_tokens.0.lock().unwrap().is_empty(),
            "and forgotten"
        );
        assert_eq!((f.counted("verified"), f.counted("rejected")), (2, 1));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let f = verifying(&["HS256"], HMAC, None, &[]).unwrap();
        let verifier = f.source.verifier.as_ref().unwrap();
        let key = EncodingKey::from_secret(HMAC.as_bytes());
        let now = now() as u64;
        for i in 0..CACHE_CAPACITY + 10 {
            let token = sign(Algorithm::HS256, &key, &json!({"sub": i, "exp": now + 600}));
            assert!(verifier.claims(&token, now).is_some());
            assert!(verifier.verified_tokens.0.lock().unwrap().len() <= CACHE_CAPACITY);
        }
    }

    #[test]
    fn rsa_keys_verify_pkcs1_and_pss_signatures() {
        // The benchmark's 2048-bit test key (rcgen cannot generate RSA keys).
        let private = include_str!("../benches/fixtures/rsa-2048.key.pem");
        let public = include_str!("../benches/fixtures/rsa-2048.pub.pem");
        let signing = EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
        let f = verifying(&["RS256", "PS256"], public, None, &[]).unwrap();
        let claims = json!({"sub": "carol", "exp": now() + 600});
        for alg in [Algorithm::RS256, Algorithm::PS256] {
            assert_eq!(
                f.sub(&sign(alg, &signing, &claims)).as_deref(),
                Some("carol"),
                "{alg:?}"
            );
        }
        assert_eq!(
            f.sub(&sign(Algorithm::RS512, &signing, &claims)),
            None,
            "not listed"
        );
    }

    /// A JWK for the P-256 key `pair`.
    fn ec_jwk(pair: &rcgen::KeyPair, kid: &str, use_: &str) -> Value {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let point = pair.public_key_raw(); // 0x04 || x || y
        json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": use_, "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn es256(pair: &rcgen::KeyPair, kid: Option<&str>, sub: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        let claims = json!({"sub": sub, "exp": now() + 600});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    #[test]
    fn a_jwks_picks_the_key_by_kid_so_keys_can_rotate() {
        let generate = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (old, new, encryption) = (generate(), generate(), generate());
        let rsa: Value =
            serde_json::from_str(include_str!("../benches/fixtures/rsa-2048.jwks.json")).unwrap();
        let jwks = json!({"keys": [
            ec_jwk(&old, "old", "sig"),
            ec_jwk(&new, "new", "sig"),
            ec_jwk(&encryption, "enc", "enc"),
            rsa["keys"][0], // another family: skipped
        ]});
        let f = verifying(&["ES256"], &jwks.to_string(), None, &[]).unwrap();
        assert_eq!(f.sub(&es256(&new, Some("new"), "a")).as_deref(), Some("a"));
        assert_eq!(f.sub(&es256(&old, Some("old"), "b")).as_deref(), Some("b"));
        for (why, token) in [
            ("another key's kid", es256(&old, Some("new"), "c")),
            ("an unknown kid", es256(&new, Some("newer"), "d")),
            ("no kid with two keys", es256(&new, None, "e")),
            ("an encryption key", es256(&encryption, Some("enc"), "f")),
        ] {
            assert_eq!(f.sub(&token), None, "{why}");
        }
        // A set of one key also verifies tokens without a kid.
        let one = json!({"keys": [ec_jwk(&new, "new", "sig")]});
        let f = verifying(&["ES256"], &one.to_string(), None, &[]).unwrap();
        assert_eq!(f.sub(&es256(&new, None, "g")).as_deref(), Some("g"));
    }

    #[test]
    fn rsa_keys_from_a_jwks_verify() {
        let jwks = include_str!("../benches/fixtures/rsa-2048.jwks.json");
        let private = include_str!("../benches/fixtures/rsa-2048.key.pem");
        let f = verifying(&["RS256"], jwks, None, &[]).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let key = EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&header, &json!({"sub": "r", "exp": now() + 600}), &key);
        assert_eq!(f.sub(&token.unwrap()).as_deref(), Some("r"));
    }

    #[test]
    fn a_jwks_without_a_usable_key_is_refused() {
        let jwks = include_str!("../benches/fixtures/rsa-2048.jwks.json");
        let error = |r: Result<Fixture, CompileError>| r.map(|_| ()).unwrap_err();
        let e = error(verifying(&["ES256"], jwks, None, &[]));
        assert_eq!(e.field, "jwt.verification.keySecretRef");
        assert!(e.message.contains("no signing key"), "{}", e.message);
        // The JWK says RS256; the policy lists only RS512.
        let e = error(verifying(&["RS512"], jwks, None, &[]));
        assert!(e.message.contains("no signing key"), "{}", e.message);
        let e = error(verifying(&["ES256"], "{\"keys\": [", None, &[]));
        assert!(e.message.contains("not a JWKS document"), "{}", e.message);
    }
}
