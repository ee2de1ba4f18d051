//! Signature checks for `jsonwebtoken` with ring, the crypto library the sidecar already links
//! for rustls. RustCrypto (the backend `jsonwebtoken` is built with) checks a first RS256 token
//! in 204 µs and ES256 in 288 µs; ring takes 23 and 57 (BENCHMARKS.md). Ed25519 stays with
//! RustCrypto, which is the faster there, as does signing, which only tests do.
//!
//! `jsonwebtoken` hands the verifier the key as it parsed it from PEM: PKCS#1 `RSAPublicKey` DER
//! for RSA, the uncompressed point for ECDSA, the 32 raw bytes for Ed25519, the secret for HMAC:
//! the forms ring's verifiers take.

use std::sync::Once;

use jsonwebtoken::{
    Algorithm, DecodingKey, DecodingKeyKind,
    crypto::{CryptoProvider, JwtVerifier, rust_crypto},
    errors::{ErrorKind, Result},
};
use ring::{hmac, signature};

/// Makes ring verify every token of this process, unless a provider was already chosen (a
/// test that signed first): then RustCrypto verifies, equally correct, only slower.
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let provider = Box::leak(Box::new(CryptoProvider {
            signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
            verifier_factory: new_verifier,
            key_utils: rust_crypto::DEFAULT_PROVIDER.key_utils.clone(),
        }));
        if provider.install_default().is_err() {
            tracing::debug!("a JWT crypto provider was already chosen; verifying with it");
        }
    });
}

enum Check {
    Hmac(hmac::Algorithm),
    Rsa(&'static signature::RsaParameters),
    PublicKey(&'static dyn signature::VerificationAlgorithm),
}

struct RingVerifier {
    algorithm: Algorithm,
    check: Check,
    key: Key,
}

enum Key {
    /// The HMAC secret, PKCS#1 DER of an RSA key, or an EC point.
    Bytes(Vec<u8>),
    /// An RSA key from a JWK.
    RsaComponents { n: Vec<u8>, e: Vec<u8> },
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let check = match algorithm {
        Algorithm::HS256 => Check::Hmac(hmac::HMAC_SHA256),
        Algorithm::HS384 => Check::Hmac(hmac::HMAC_SHA384),
        Algorithm::HS512 => Check::Hmac(hmac::HMAC_SHA512),
        Algorithm::RS256 => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => Check::PublicKey(&signature::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Check::PublicKey(&signature::ECDSA_P384_SHA384_FIXED),
        // ed25519-dalek (RustCrypto) checks Ed25519 faster than ring: 38 µs against 48.
        Algorithm::EdDSA => {
            return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key);
        }
        _ => return Err(ErrorKind::InvalidAlgorithm.into()), // `Algorithm` is non-exhaustive
    };
    // The key must be of the algorithm's family: an HS256 token never meets an RSA key as an
    // HMAC secret (algorithm confusion), whatever the policy's list says.
    if key.family() != algorithm.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => Key::Bytes(bytes.clone()),
        DecodingKeyKind::RsaModulusExponent { n, e } => Key::RsaComponents {
            n: n.clone(),
            e: e.clone(),
        },
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        check,
        key,
    }))
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(
        &self,
        message: &[u8],
        sig: &Vec<u8>,
    ) -> std::result::Result<(), jsonwebtoken::signature::Error> {
        let checked = match (&self.check, &self.key) {
            (Check::Hmac(algorithm), Key::Bytes(key)) => {
                hmac::verify(&hmac::Key::new(*algorithm, key), message, sig)
            }
            (Check::Rsa(parameters), Key::Bytes(der)) => {
                signature::UnparsedPublicKey::new(*parameters, der).verify(message, sig)
            }
            (Check::Rsa(parameters), Key::RsaComponents { n, e }) => {
                signature::RsaPublicKeyComponents { n, e }.verify(parameters, message, sig)
            }
            (Check::PublicKey(algorithm), Key::Bytes(key)) => {
                signature::UnparsedPublicKey::new(*algorithm, key).verify(message, sig)
            }
            // (n, e) with a non-RSA algorithm: the family check above rules it out.
            (_, Key::RsaComponents { .. }) => return Err(jsonwebtoken::signature::Error::new()),
        };
        checked.map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::EncodingKey;

    /// Keys of every family: (algorithm, signing key, verifying key).
    fn keys() -> Vec<(Algorithm, EncodingKey, DecodingKey)> {
        let rsa_private = include_str!("../../benches/fixtures/rsa-2048.key.pem");
        let rsa_public = include_str!("../../benches/fixtures/rsa-2048.pub.pem");
        let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let rsa = || EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap();
        let rsa_public = || DecodingKey::from_rsa_pem(rsa_public.as_bytes()).unwrap();
        vec![
            (
                Algorithm::HS256,
                EncodingKey::from_secret(b"secret"),
                DecodingKey::from_secret(b"secret"),
            ),
            (
                Algorithm::HS512,
                EncodingKey::from_secret(b"secret"),
                DecodingKey::from_secret(b"secret"),
            ),
            (Algorithm::RS256, rsa(), rsa_public()),
            (Algorithm::PS384, rsa(), rsa_public()),
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap(),
                DecodingKey::from_ec_pem(es.public_key_pem().as_bytes()).unwrap(),
            ),
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
                DecodingKey::from_ed_pem(ed.public_key_pem().as_bytes()).unwrap(),
            ),
        ]
    }

    /// Signed by RustCrypto (through the default provider), checked by ring.
    #[test]
    fn ring_checks_what_rustcrypto_signed_and_nothing_else() {
        let message = b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0";
        for (algorithm, signing, verifying) in keys() {
            let signature = jsonwebtoken::crypto::sign(message, &signing, algorithm).unwrap();
            let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(signature)
                .unwrap();
            let verifier = new_verifier(&algorithm, &verifying).unwrap();
            assert!(
                verifier.verify(message, &signature).is_ok(),
                "{algorithm:?}"
            );
            assert!(
                verifier.verify(b"another message", &signature).is_err(),
                "{algorithm:?}: another message"
            );
            let mut flipped = signature.clone();
            flipped[0] ^= 1;
            assert!(
                verifier.verify(message, &flipped).is_err(),
                "{algorithm:?}: flipped bit"
            );
        }
    }

    #[test]
    fn a_key_of_another_family_is_refused() {
        let rsa_public = include_str!("../../benches/fixtures/rsa-2048.pub.pem");
        let rsa = DecodingKey::from_rsa_pem(rsa_public.as_bytes()).unwrap();
        assert!(new_verifier(&Algorithm::HS256, &rsa).is_err());
        let hmac = DecodingKey::from_secret(rsa_public.as_bytes());
        assert!(new_verifier(&Algorithm::RS256, &hmac).is_err());
    }
}
