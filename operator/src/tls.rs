//! The operator's certificates and its TLS listeners.
//!
//! - [`Certificates`]: a CA (ECDSA P-256, 10 years, CN `bulwark-operator-ca`) and a serving
//!   certificate it signs (1 year) for the operator's Service names plus `--tls-extra-sans`.
//! - [`ensure`] keeps them in the Secret `--tls-secret` of `--namespace`, so every replica serves
//!   the same CA: created when missing (a racing replica's Secret wins), serving certificate
//!   re-issued by the same CA when it expires within 30 days or lacks a name (updates carry the
//!   `resourceVersion`, so two replicas never clobber each other).
//! - [`patch_ca_bundle`] puts the CA into every webhook of the Mutating- and
//!   ValidatingWebhookConfiguration.
//! - [`run_rotation`] does both every hour and hot-swaps the served certificate in the
//!   [`CertResolver`] (rustls reads it per handshake, from an `ArcSwap`).
//! - [`server_config`] and [`serve_tls`]: HTTP/1.1 and HTTP/2 over rustls, with graceful shutdown;
//!   shared by the injection webhook and the policy stream.

mod serve;

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use base64::Engine as _;
use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    },
    api::core::v1::Secret,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::sync::watch;

use crate::cli::Args;

pub use serve::{serve_tls, server_config};

/// Common name of the operator's CA.
pub const CA_COMMON_NAME: &str = "bulwark-operator-ca";
/// Secret keys besides the standard `tls.crt` / `tls.key`.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";

const DAY: i64 = 24 * 3600;
const CA_VALIDITY: i64 = 3650 * DAY;
const SERVING_VALIDITY: i64 = 365 * DAY;
/// A certificate that expires within this is renewed.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * DAY as u64);
/// Backdating of `notBefore`, for replicas and apiservers whose clocks lag a little.
const BACKDATE: i64 = 300;
/// How often [`run_rotation`] re-checks the Secret when all is well.
pub const ROTATION_INTERVAL: Duration = Duration::from_secs(3600);
/// How soon [`run_rotation`] retries when the last round failed or the webhook configuration
/// was missing.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("reading the stored certificate: {0}")]
    Parse(String),
    #[error("Secret {0} is missing key {1}")]
    MissingKey(String, &'static str),
    #[error("the certificate key is not usable by rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Secret {0} kept changing under us; giving up for now")]
    Contended(String),
}

/// What [`ensure`] and [`patch_ca_bundle`] need; built from the flags.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub namespace: String,
    pub service_name: String,
    pub extra_sans: Vec<String>,
    pub secret_name: String,
    pub webhook_configuration: String,
    pub validating_webhook_configuration: String,
}

impl TlsConfig {
    pub fn from_args(args: &Args) -> Self {
        Self {
            namespace: args.namespace.clone(),
            service_name: args.service_name.clone(),
            extra_sans: args.tls_extra_sans.clone(),
            secret_name: args.tls_secret.clone(),
            webhook_configuration: args.webhook_configuration.clone(),
            validating_webhook_configuration: args.validating_webhook_configuration.clone(),
        }
    }

    /// The names the serving certificate must carry.
    pub fn sans(&self) -> Vec<String> {
        required_sans(&self.service_name, &self.namespace, &self.extra_sans)
    }
}

/// `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`, `<svc>.<ns>.svc.cluster.local`, then the extra names
/// (trimmed, empty ones and duplicates dropped).
pub fn required_sans(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    for name in extra {
        let name = name.trim();
        if !name.is_empty() && !sans.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            sans.push(name.to_string());
        }
    }
    sans
}

/// One subject alternative name: an IP address if it parses as one, else a DNS name.
fn san_type(name: &str) -> Result<SanType, TlsError> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.to_string().try_into()?),
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A point in time as rcgen takes it (`.to_datetime()`), without naming the `time` crate.
fn datetime(unix: i64) -> Result<x509_parser::time::ASN1Time, TlsError> {
    x509_parser::time::ASN1Time::from_timestamp(unix)
        .map_err(|e| TlsError::Parse(format!("time {unix}: {e}")))
}

/// Why the stored certificates cannot be kept as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Keep serving them.
    Keep,
    /// New serving certificate, same CA (the `caBundle` stays valid).
    Serving(String),
    /// New CA and serving certificate (the CA itself is unusable or about to expire).
    All(String),
}

/// The operator's CA and serving certificate, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificates {
    pub ca_pem: String,
    ca_key_pem: String,
    pub cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// A new CA and a serving certificate for `sans`.
    pub fn generate(sans: &[String]) -> Result<Self, TlsError> {
        Self::generate_at(sans, unix_now())
    }

    /// [`Certificates::generate`] as if the time were `now` (Unix seconds); for tests.
    pub fn generate_at(sans: &[String], now: i64) -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = datetime(now - BACKDATE)?.to_datetime();
        params.not_after = datetime(now + CA_VALIDITY)?.to_datetime();
        let ca_cert = params.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(params, &ca_key);
        let (cert_pem, key_pem) = issue_serving(&issuer, sans, now)?;
        Ok(Self {
            ca_pem,
            ca_key_pem: ca_key.serialize_pem(),
            cert_pem,
            key_pem,
        })
    }

    /// A new serving certificate for `sans`, signed by the same CA.
    pub fn reissue(&self, sans: &[String]) -> Result<Self, TlsError> {
        self.reissue_at(sans, unix_now())
    }

    /// [`Certificates::reissue`] as if the time were `now` (Unix seconds).
    pub fn reissue_at(&self, sans: &[String], now: i64) -> Result<Self, TlsError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &ca_key)?;
        let (cert_pem, key_pem) = issue_serving(&issuer, sans, now)?;
        Ok(Self {
            ca_pem: self.ca_pem.clone(),
            ca_key_pem: self.ca_key_pem.clone(),
            cert_pem,
            key_pem,
        })
    }

    /// Whether these certificates can keep serving `sans` at `now` (Unix seconds).
    pub fn renewal(&self, sans: &[String], now: i64) -> Renewal {
        let renew_before = RENEW_BEFORE.as_secs() as i64;
        let ca = match parse_pem_cert(&self.ca_pem) {
            Ok(ca) => ca,
            Err(e) => return Renewal::All(format!("the CA certificate is unreadable: {e}")),
        };
        if KeyPair::from_pem(&self.ca_key_pem).is_err() {
            return Renewal::All("the CA key is unreadable".into());
        }
        // A CA about to expire cannot sign a serving certificate that outlives it usefully.
        if ca.not_after - now < renew_before + DAY {
            return Renewal::All(format!("the CA expires at {} (Unix time)", ca.not_after));
        }
        let serving = match parse_pem_cert(&self.cert_pem) {
            Ok(s) => s,
            Err(e) => {
                return Renewal::Serving(format!("the serving certificate is unreadable: {e}"));
            }
        };
        if let Err(e) = verify_chain(&self.ca_pem, &self.cert_pem, sans, now) {
            return Renewal::Serving(format!(
                "the serving certificate does not verify against the CA: {e}"
            ));
        }
        match KeyPair::from_pem(&self.key_pem) {
            Ok(key) if key.subject_public_key_info() == serving.spki_der => {}
            Ok(_) => {
                return Renewal::Serving("the serving key does not match the certificate".into());
            }
            Err(_) => return Renewal::Serving("the serving key is unreadable".into()),
        }
        if serving.not_after - now < renew_before {
            return Renewal::Serving(format!(
                "the serving certificate expires within {} days (at {} Unix time)",
                renew_before / DAY,
                serving.not_after
            ));
        }
        for name in sans {
            let covered = match name.parse::<IpAddr>() {
                Ok(ip) => serving.ips.contains(&ip),
                Err(_) => serving.dns.iter().any(|d| d.eq_ignore_ascii_case(name)),
            };
            if !covered {
                return Renewal::Serving(format!("the serving certificate lacks the name {name}"));
            }
        }
        Renewal::Keep
    }

    /// The serving certificate's expiry (Unix seconds).
    pub fn serving_not_after(&self) -> Result<i64, TlsError> {
        Ok(parse_pem_cert(&self.cert_pem)?.not_after)
    }

    /// The serving certificate's names, DNS then IP, as text.
    pub fn serving_sans(&self) -> Result<Vec<String>, TlsError> {
        let c = parse_pem_cert(&self.cert_pem)?;
        Ok(c.dns
            .into_iter()
            .chain(c.ips.iter().map(|ip| ip.to_string()))
            .collect())
    }

    /// Reads the Secret's data (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`).
    pub fn from_secret(secret: &Secret) -> Result<Self, TlsError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let get = |key: &'static str| -> Result<String, TlsError> {
            let bytes = data
                .get(key)
                .ok_or_else(|| TlsError::MissingKey(name.clone(), key))?;
            String::from_utf8(bytes.0.clone())
                .map_err(|_| TlsError::Parse(format!("{key} of Secret {name} is not PEM text")))
        };
        Ok(Self {
            ca_pem: get(CA_CERT_KEY)?,
            ca_key_pem: get(CA_KEY_KEY)?,
            cert_pem: get(TLS_CERT_KEY)?,
            key_pem: get(TLS_KEY_KEY)?,
        })
    }

    /// The Secret's data.
    pub fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        [
            (CA_CERT_KEY, &self.ca_pem),
            (CA_KEY_KEY, &self.ca_key_pem),
            (TLS_CERT_KEY, &self.cert_pem),
            (TLS_KEY_KEY, &self.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }

    /// The serving certificate and key as rustls serves them.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::Parse(format!("tls.crt: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| TlsError::Parse(format!("tls.key: {e}")))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
        Ok(Arc::new(CertifiedKey::new(vec![cert], signer)))
    }
}

fn issue_serving(
    issuer: &Issuer<'_, &KeyPair>,
    sans: &[String],
    now: i64,
) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        sans.first()
            .map(String::as_str)
            .unwrap_or("bulwark-operator"),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = sans.iter().map(|s| san_type(s)).collect::<Result<_, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = datetime(now - BACKDATE)?.to_datetime();
    params.not_after = datetime(now + SERVING_VALIDITY)?.to_datetime();
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What the renewal decision reads from a certificate.
struct ParsedCert {
    not_after: i64,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    spki_der: Vec<u8>,
}

fn parse_pem_cert(pem: &str) -> Result<ParsedCert, TlsError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Parse(format!("PEM: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::Parse(format!("X.509: {e}")))?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Some(ext) = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Parse(format!("subjectAltName: {e}")))?
    {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes"))),
                    16 => ips.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).expect("16 bytes"),
                    )),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(ParsedCert {
        not_after: cert.validity().not_after.timestamp(),
        dns,
        ips,
        spki_der: cert.public_key().raw.to_vec(),
    })
}

/// Checks with webpki (as clients will) that the CA signed `cert_pem`, valid at `now`, for the
/// first of `sans` (the others are checked by name in [`Certificates::renewal`]).
fn verify_chain(ca_pem: &str, cert_pem: &str, sans: &[String], now: i64) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier as _;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).map_err(|e| e.to_string())?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let name = sans
        .first()
        .map(String::as_str)
        .unwrap_or("bulwark-operator");
    let name =
        rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            &cert,
            &[],
            &name,
            &[],
            rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn new_secret(cfg: &TlsConfig, certs: &Certificates) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(cfg.secret_name.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "bulwark-operator".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(certs.to_secret_data()),
        ..Default::default()
    }
}

/// Reads the certificates from the Secret, creating or renewing them as needed (see the module
/// documentation). Every replica calls this; they converge on one Secret.
pub async fn ensure(client: &Client, cfg: &TlsConfig) -> Result<Certificates, TlsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let sans = cfg.sans();
    let name = &cfg.secret_name;
    for _attempt in 0..5 {
        let Some(mut existing) = api.get_opt(name).await? else {
            let certs = Certificates::generate(&sans)?;
            match api
                .create(&PostParams::default(), &new_secret(cfg, &certs))
                .await
            {
                Ok(_) => {
                    tracing::info!(secret = %name, namespace = %cfg.namespace, "created the operator CA and serving certificate");
                    return Ok(certs);
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    tracing::debug!(secret = %name, "another replica created the TLS Secret first; reading theirs");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (certs, why) = match Certificates::from_secret(&existing) {
            Ok(current) => match current.renewal(&sans, unix_now()) {
                Renewal::Keep => return Ok(current),
                Renewal::Serving(why) => (current.reissue(&sans)?, why),
                Renewal::All(why) => (Certificates::generate(&sans)?, why),
            },
            Err(e) => (Certificates::generate(&sans)?, e.to_string()),
        };
        // Keep the Secret's other keys and metadata; `resourceVersion` (kept from the read) makes
        // the update fail if another replica changed the Secret meanwhile.
        let data = existing.data.get_or_insert_with(BTreeMap::new);
        data.extend(certs.to_secret_data());
        match api.replace(name, &PostParams::default(), &existing).await {
            Ok(_) => {
                tracing::info!(secret = %name, reason = %why, "renewed the operator's certificates");
                return Ok(certs);
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                tracing::debug!(secret = %name, "the TLS Secret changed meanwhile; reading it again");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(TlsError::Contended(name.clone()))
}

/// What [`patch_ca_bundle`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaBundleOutcome {
    /// The `caBundle` of this many webhooks was set.
    Patched(usize),
    /// Every webhook already had this CA.
    Unchanged,
    /// The MutatingWebhookConfiguration does not exist (yet).
    Missing,
}

/// A kind of webhook configuration whose webhooks' `caBundle` the operator keeps current: the
/// MutatingWebhookConfiguration (injection) and the ValidatingWebhookConfiguration (validation).
pub trait WebhookConfiguration:
    kube::Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + fmt::Debug
{
    /// Each webhook's name and current `caBundle`, in order.
    fn ca_bundles(&self) -> Vec<(&str, Option<&[u8]>)>;
}

// The two kinds' webhooks are different types with the same `name` and `clientConfig`.
macro_rules! webhook_configuration {
    ($($kind:ty),*) => {$(
        impl WebhookConfiguration for $kind {
            fn ca_bundles(&self) -> Vec<(&str, Option<&[u8]>)> {
                self.webhooks
                    .iter()
                    .flatten()
                    .map(|w| (w.name.as_str(), w.client_config.ca_bundle.as_ref().map(|b| &b.0[..])))
                    .collect()
            }
        }
    )*};
}
webhook_configuration!(MutatingWebhookConfiguration, ValidatingWebhookConfiguration);

/// The JSON patch that sets `webhooks[i].clientConfig.caBundle` to `ca_pem` wherever it differs,
/// each guarded by a `test` of the webhook's name (so a concurrent reorder fails the patch rather
/// than writing the wrong entry). Empty when nothing differs.
pub fn ca_bundle_patch<C: WebhookConfiguration>(config: &C, ca_pem: &str) -> json_patch::Patch {
    let encoded = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let mut ops = Vec::new();
    for (i, (name, current)) in config.ca_bundles().into_iter().enumerate() {
        if current == Some(ca_pem.as_bytes()) {
            continue;
        }
        ops.push(
            serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}),
        );
        ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    serde_json::from_value(serde_json::Value::Array(ops)).expect("well-formed JSON patch")
}

/// Sets the `caBundle` of every webhook in the configuration `name` of kind `C` to `ca_pem`,
/// if it differs. A missing configuration is not an error (it may be installed later).
pub async fn patch_ca_bundle<C: WebhookConfiguration>(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<CaBundleOutcome, TlsError> {
    let kind = C::kind(&());
    let api: Api<C> = Api::all(client.clone());
    let Some(config) = api.get_opt(name).await? else {
        tracing::warn!(configuration = %name, %kind, "webhook configuration not found; will set its caBundle when it exists");
        return Ok(CaBundleOutcome::Missing);
    };
    let patch = ca_bundle_patch(&config, ca_pem);
    if patch.0.is_empty() {
        return Ok(CaBundleOutcome::Unchanged);
    }
    let patched = patch.0.len() / 2;
    // kube's typed `Patch::Json` needs a feature the workspace does not enable; the request is
    // simple enough to send as it is.
    let request = http::Request::patch(format!("{}/{name}", C::url_path(&(), None)))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(&patch).expect("a patch serialises"))
        .map_err(|e| TlsError::Parse(format!("building the caBundle patch: {e}")))?;
    client.request::<C>(request).await?;
    tracing::info!(configuration = %name, %kind, webhooks = patched, "set the webhooks' caBundle");
    Ok(CaBundleOutcome::Patched(patched))
}

/// The served certificate, swapped atomically on rotation; rustls asks it at every handshake.
pub struct CertResolver {
    key: ArcSwap<CertifiedKey>,
    certs: ArcSwap<Certificates>,
    ca_pem: Arc<ArcSwap<String>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(certs: Certificates) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            key: ArcSwap::new(certs.certified_key()?),
            ca_pem: Arc::new(ArcSwap::from_pointee(certs.ca_pem.clone())),
            certs: ArcSwap::from_pointee(certs),
        }))
    }

    /// Serves `certs` from the next handshake on.
    pub fn set(&self, certs: Certificates) -> Result<(), TlsError> {
        self.key.store(certs.certified_key()?);
        if **self.ca_pem.load() != certs.ca_pem {
            self.ca_pem.store(Arc::new(certs.ca_pem.clone()));
        }
        self.certs.store(Arc::new(certs));
        Ok(())
    }

    pub fn current(&self) -> Arc<Certificates> {
        self.certs.load_full()
    }

    /// The CA PEM, kept current by [`CertResolver::set`]: hand it to the injector (it goes into
    /// each injected sidecar's `BULWARK_OPERATOR_CA`).
    pub fn ca_pem(&self) -> Arc<ArcSwap<String>> {
        self.ca_pem.clone()
    }
}

impl rustls::server::ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

/// Every [`ROTATION_INTERVAL`] (sooner after a failure): [`ensure`], swap a renewed certificate
/// into `resolver`, and [`patch_ca_bundle`] (every replica does, idempotently: only differing
/// webhooks are patched). The first round's caBundle patch happens at once. Returns on shutdown.
pub async fn run_rotation(
    client: Client,
    cfg: TlsConfig,
    resolver: Arc<CertResolver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        let mut healthy = true;
        if !first {
            match ensure(&client, &cfg).await {
                Ok(certs) => {
                    if *resolver.current() != certs {
                        match resolver.set(certs) {
                            Ok(()) => tracing::info!("serving the renewed certificate"),
                            Err(e) => {
                                healthy = false;
                                tracing::warn!(error = %e, "renewed certificate is unusable; still serving the previous one");
                            }
                        }
                    }
                }
                Err(e) => {
                    healthy = false;
                    tracing::warn!(error = %e, "checking the operator's certificates failed; will retry");
                }
            }
        }
        first = false;
        let ca = resolver.current().ca_pem.clone();
        let outcomes = [
            (
                &cfg.webhook_configuration,
                patch_ca_bundle::<MutatingWebhookConfiguration>(
                    &client,
                    &cfg.webhook_configuration,
                    &ca,
                )
                .await,
            ),
            (
                &cfg.validating_webhook_configuration,
                patch_ca_bundle::<ValidatingWebhookConfiguration>(
                    &client,
                    &cfg.validating_webhook_configuration,
                    &ca,
                )
                .await,
            ),
        ];
        for (configuration, outcome) in outcomes {
            match outcome {
                Ok(CaBundleOutcome::Missing) => healthy = false,
                Ok(_) => {}
                Err(e) => {
                    healthy = false;
                    tracing::warn!(error = %e, %configuration, "setting the caBundle failed; will retry");
                }
            }
        }
        let wait = if healthy {
            ROTATION_INTERVAL
        } else {
            RETRY_INTERVAL
        };
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests;
