//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`, keyed by the bytes base64-encoded after the
//! secret's `whsec_` prefix. During a key rotation every key still valid signs, and the
//! signatures are joined by spaces: a receiver holding either key verifies.

use base64::{Engine, engine::general_purpose::STANDARD};
use ring::hmac;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// One signing key, decoded.
#[derive(Clone)]
pub struct SigningKey {
    key: hmac::Key,
    /// Unix seconds after which this (previous) key no longer signs; `None` for the current one.
    not_after: Option<i64>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl SigningKey {
    /// A `whsec_<base64>` secret (the prefix is optional, as the libraries accept).
    pub fn parse(secret: &str, not_after: Option<i64>) -> Result<Self, String> {
        let encoded = secret.trim();
        let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|e| format!("the signing secret is not `whsec_` followed by base64: {e}"))?;
        // Standard Webhooks asks for 24 to 64 bytes; fewer would be a weak key.
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "the signing secret decodes to {} bytes; Standard Webhooks keys are 24 to 64",
                bytes.len()
            ));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            not_after,
        })
    }

    fn signs_at(&self, unix_seconds: i64) -> bool {
        self.not_after.is_none_or(|end| unix_seconds <= end)
    }
}

/// The `webhook-signature` value for one delivery, by every key valid at `timestamp`.
pub fn sign(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    let prefix = format!("{id}.{timestamp}.");
    keys.iter()
        .filter(|k| k.signs_at(timestamp))
        .map(|k| {
            let mut context = hmac::Context::with_key(&k.key);
            context.update(prefix.as_bytes());
            context.update(body);
            format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries' tests.
    #[test]
    fn matches_the_reference_signature() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", None).unwrap();
        let signature = sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_key_still_valid() {
        let new = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", None).unwrap();
        let old = SigningKey::parse(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            Some(1_000),
        )
        .unwrap();
        let keys = [new.clone(), old.clone()];
        let during = sign(&keys, "msg_1", 999, b"{}");
        assert_eq!(
            during,
            format!(
                "{} {}",
                sign(std::slice::from_ref(&new), "msg_1", 999, b"{}"),
                sign(&[old], "msg_1", 999, b"{}")
            ),
            "the current key signs first"
        );
        let after = sign(&keys, "msg_1", 1_001, b"{}");
        assert_eq!(after, sign(&[new], "msg_1", 1_001, b"{}"));
    }

    #[test]
    fn short_or_malformed_secrets_are_refused() {
        assert!(SigningKey::parse("whsec_c2hvcnQ=", None).is_err());
        assert!(SigningKey::parse("whsec_not base64!", None).is_err());
    }
}
