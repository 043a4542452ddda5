//! A small EST client (RFC 7030) over TLS 1.3: one connection per call, or one
//! kept-alive connection for all of a client's calls ([`EstClient::one_connection`]:
//! a device's flows, a load generator's worker).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use iotpki_core::keys::Signer;
use iotpki_core::wire::TPM_ACTIVATION_HEADER;
use iotpki_core::{est, pkcs7};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::http1;
use crate::tls_key::DeviceCert;
use crate::AgentError;

/// Time allowed for one whole EST call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer taken by default: far above a certificate, a chain or a
/// station's batch of work, bounded so that a server cannot fill a device's memory
/// ([`EstClient::with_max_answer`] raises it for an operator's tools).
pub const MAX_ANSWER: usize = 16 << 20;

/// A TLS connection speaking HTTP/1.1.
type Connection = http1::Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The connection a client keeps between its calls ([`EstClient::one_connection`]),
/// shared by its clones: calls on it go one after the other.
type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// A device certificate chain with its key, for mutual TLS.
pub struct ClientIdentity {
    /// Leaf first, then the issuing CAs.
    pub chain: Vec<Vec<u8>>,
    /// The key of the leaf.
    pub key: Arc<dyn Signer>,
}

/// An EST server at one base URL and label.
#[derive(Clone)]
pub struct EstClient {
    host: String,
    port: u16,
    prefix: String,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    max_answer: usize,
    kept: Option<Slot>,
}

/// An answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

fn parse_url(url: &str) -> Result<(String, u16), AgentError> {
    server_url(url, "https", 443)
}

/// The host and port of an EST server URL `SCHEME://HOST[:PORT]` (no path:
/// EST lives under /.well-known/est); `port` when none is given.
pub(crate) fn server_url(url: &str, scheme: &str, port: u16) -> Result<(String, u16), AgentError> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| AgentError::Usage(format!("server URL {url:?} must start with {scheme}://")))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if !rest[authority.len()..].trim_matches('/').is_empty() {
        return Err(AgentError::Usage(format!(
            "server URL {url:?} must have no path (EST lives under /.well-known/est)"
        )));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or_else(|| AgentError::Usage(format!("bad IPv6 address in {url:?}")))?;
        (h.to_string(), p.strip_prefix(':').map_or(Ok(port), str::parse))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>()),
            None => (authority.to_string(), Ok(port)),
        }
    };
    let port = port.map_err(|_| AgentError::Usage(format!("bad port in {url:?}")))?;
    if host.is_empty() {
        return Err(AgentError::Usage(format!("no host in {url:?}")));
    }
    Ok((host, port))
}

/// The TLS 1.3 suites, groups and signature algorithms a device offers and
/// accepts, named one by one rather than taken from the provider's defaults:
/// what is not named here is not linked into the device binary (issue #16).
/// Hybrid post-quantum key exchange first, as before; in the ring build
/// X25519MLKEM768 is ours ([`crate::hybrid_kx`]: ring has no ML-KEM).
fn tls_provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "aws-lc")]
    use rustls::crypto::aws_lc_rs::{cipher_suite, kx_group, kx_group as p256, kx_group::X25519MLKEM768};
    // P-256 from crate::p256_tls (RustCrypto's arithmetic), not ring's table (issue #16).
    #[cfg(all(feature = "ring", not(feature = "aws-lc")))]
    use {
        crate::hybrid_kx::X25519MLKEM768,
        crate::p256_tls as p256,
        rustls::crypto::ring::{cipher_suite, kx_group},
    };
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![X25519MLKEM768, kx_group::X25519, p256::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURE_ALGORITHMS,
        secure_random: &SystemRng,
        key_provider: &NoKeyLoading,
    }
}

/// The signatures a device accepts, in TLS and on the certificates it is
/// issued: ECDSA on P-256 and P-384, Ed25519 (the key types the authority
/// makes) and RSA with SHA-256 or SHA-384 (PKCS#1 v1.5 and PSS), for a server
/// certificate from another CA; in the aws-lc build also ML-DSA-44/65/87
/// (RFC 9881 certificates, TLS 1.3 ML-DSA CertificateVerify: ring has no
/// ML-DSA). One crypto library's (webpki's `ALL_VERIFICATION_ALGS` would
/// link both in a build that has both).
pub(crate) static SIGNATURE_ALGORITHMS: rustls::crypto::WebPkiSupportedAlgorithms = {
    use rustls::SignatureScheme as S;
    #[cfg(feature = "aws-lc")]
    use webpki::aws_lc_rs as w;
    #[cfg(feature = "aws-lc")]
    use webpki::aws_lc_rs as p256;
    #[cfg(all(feature = "ring", not(feature = "aws-lc")))]
    use webpki::ring as w;
    // P-256 from crate::p256_tls (RustCrypto's arithmetic), not ring's table (issue #16).
    #[cfg(all(feature = "ring", not(feature = "aws-lc")))]
    use crate::p256_tls as p256;
    rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[
            p256::ECDSA_P256_SHA256,
            p256::ECDSA_P256_SHA384,
            w::ECDSA_P384_SHA256,
            w::ECDSA_P384_SHA384,
            w::ED25519,
            w::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            w::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            w::RSA_PKCS1_2048_8192_SHA256,
            w::RSA_PKCS1_2048_8192_SHA384,
            #[cfg(feature = "aws-lc")]
            w::ML_DSA_44,
            #[cfg(feature = "aws-lc")]
            w::ML_DSA_65,
            #[cfg(feature = "aws-lc")]
            w::ML_DSA_87,
        ],
        mapping: &[
            (S::ECDSA_NISTP384_SHA384, &[w::ECDSA_P384_SHA384, p256::ECDSA_P256_SHA384]),
            (S::ECDSA_NISTP256_SHA256, &[p256::ECDSA_P256_SHA256, w::ECDSA_P384_SHA256]),
            (S::ED25519, &[w::ED25519]),
            (S::RSA_PSS_SHA384, &[w::RSA_PSS_2048_8192_SHA384_LEGACY_KEY]),
            (S::RSA_PSS_SHA256, &[w::RSA_PSS_2048_8192_SHA256_LEGACY_KEY]),
            (S::RSA_PKCS1_SHA384, &[w::RSA_PKCS1_2048_8192_SHA384]),
            (S::RSA_PKCS1_SHA256, &[w::RSA_PKCS1_2048_8192_SHA256]),
            #[cfg(feature = "aws-lc")]
            (S::ML_DSA_44, &[w::ML_DSA_44]),
            #[cfg(feature = "aws-lc")]
            (S::ML_DSA_65, &[w::ML_DSA_65]),
            #[cfg(feature = "aws-lc")]
            (S::ML_DSA_87, &[w::ML_DSA_87]),
        ],
    }
};

/// The system's random numbers, through the crypto library.
#[derive(Debug)]
struct SystemRng;

impl rustls::crypto::SecureRandom for SystemRng {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        crate::fill_random(buf).map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

/// The device's keys sign through [`crate::tls_key`]; rustls never loads one.
#[derive(Debug)]
struct NoKeyLoading;

impl rustls::crypto::KeyProvider for NoKeyLoading {
    fn load_private_key(
        &self,
        _: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        Err(rustls::Error::General("the device's keys are not loaded by the TLS stack".into()))
    }
}

impl EstClient {
    /// A client for `server_url` (`https://host:port`) trusting only
    /// `anchors` (DER), optionally authenticating with `identity`.
    pub fn new(
        server_url: &str,
        label: Option<&str>,
        anchors: &[Vec<u8>],
        identity: Option<ClientIdentity>,
    ) -> Result<Self, AgentError> {
        let (host, port) = parse_url(server_url)?;
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| AgentError::Usage(format!("server name {host:?}: {e}")))?;
        let mut roots = RootCertStore::empty();
        for a in anchors {
            roots
                .add(CertificateDer::from(a.clone()))
                .map_err(|e| AgentError::Untrusted(format!("trust anchor: {e}")))?;
        }
        let provider = Arc::new(tls_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| AgentError::Connect(e.to_string()))?
            .with_root_certificates(roots);
        let mut tls = match identity {
            Some(id) => {
                let chain = id.chain.into_iter().map(CertificateDer::from).collect();
                builder.with_client_cert_resolver(Arc::new(DeviceCert::new(chain, id.key)))
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let prefix = match label {
            Some(l) => format!("/.well-known/est/{l}"),
            None => "/.well-known/est".to_string(),
        };
        Ok(Self { host, port, prefix, server_name, tls: Arc::new(tls), max_answer: MAX_ANSWER, kept: None })
    }

    /// The same client, but every new connection makes a full TLS 1.3 handshake:
    /// no session is kept for resumption. A device's first enrollment never
    /// resumes, so the load generator measures fresh enrollments this way.
    pub fn without_resumption(&self) -> Self {
        let mut tls = (*self.tls).clone();
        tls.resumption = rustls::client::Resumption::disabled();
        Self { tls: Arc::new(tls), ..self.clone() }
    }

    /// The same client, but its calls (and its clones') share one kept-alive
    /// connection, opened at the first call and again when the server has closed
    /// it: a device's flow (`cacerts`, then `simpleenroll`) makes one TLS
    /// handshake, not one per call (the server sends no session tickets to resume
    /// with: `iotpki_server::tls`). Calls on it wait for each other.
    pub fn one_connection(&self) -> Self {
        Self { kept: Some(Arc::new(tokio::sync::Mutex::new(None))), ..self.clone() }
    }

    /// `GET /cacerts`: the CA certificates (DER).
    pub async fn cacerts(&self) -> Result<Vec<Vec<u8>>, AgentError> {
        let a = self.call("GET", "cacerts", None, None).await?;
        certs_of(a)
    }

    /// `POST /simpleenroll` with HTTP Basic (serial, token): the new certificate (DER).
    pub async fn simple_enroll(&self, csr_der: &[u8], serial: &str, token: &str) -> Result<Vec<u8>, AgentError> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{serial}:{token}"));
        let a = self.call("POST", "simpleenroll", Some(csr_der), Some(format!("Basic {basic}"))).await?;
        one_cert(certs_of(a)?)
    }

    /// `POST /simpleenroll?batch=ID` over mutual TLS with a factory station's
    /// certificate: a device's birth certificate (DER).
    pub async fn simple_enroll_batch(&self, csr_der: &[u8], batch: &str) -> Result<Vec<u8>, AgentError> {
        check_batch_id(batch)?;
        let a = self.call("POST", &format!("simpleenroll?batch={batch}"), Some(csr_der), None).await?;
        one_cert(certs_of(a)?)
    }

    /// [`Self::simple_enroll_batch`] with the answer to a TPM attestation
    /// challenge: its id and the secret the device's TPM recovered.
    pub async fn simple_enroll_batch_attested(
        &self,
        csr_der: &[u8],
        batch: &str,
        activation: Option<(&str, &[u8])>,
    ) -> Result<Vec<u8>, AgentError> {
        check_batch_id(batch)?;
        let headers = match activation {
            Some((id, secret)) => vec![(
                TPM_ACTIVATION_HEADER,
                format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(secret)),
            )],
            None => vec![],
        };
        let a = self.call_with("POST", &format!("simpleenroll?batch={batch}"), Some(csr_der), headers).await?;
        one_cert(certs_of(a)?)
    }

    /// `method path` outside EST (a station's factory API, over the same
    /// TLS session), with `body` (its content type and bytes): the answer,
    /// the JSON body `T` ([`iotpki_core::wire`]; `what` names it in errors),
    /// or `None` for 204 No Content. Any other status is a refusal.
    pub async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        what: &str,
    ) -> Result<Option<T>, AgentError> {
        let (content_type, bytes) = match body {
            Some((t, b)) => (Some(t), b),
            None => (None, Vec::new()),
        };
        let a = self.exchange(method, path, content_type, &bytes, vec![]).await?;
        if a.status == 204 {
            return Ok(None);
        }
        let a = refuse_unless_ok(a)?;
        iotpki_core::wire::from_slice(what, &a.body).map(Some).map_err(|e| AgentError::BadAnswer(e.to_string()))
    }

    /// `POST /simpleenroll` authenticated by the TLS client certificate alone
    /// (commissioning with the birth certificate).
    pub async fn simple_enroll_mtls(&self, csr_der: &[u8]) -> Result<Vec<u8>, AgentError> {
        let a = self.call("POST", "simpleenroll", Some(csr_der), None).await?;
        one_cert(certs_of(a)?)
    }

    /// `POST /simplereenroll` over mutual TLS: the new certificate (DER).
    pub async fn simple_reenroll(&self, csr_der: &[u8]) -> Result<Vec<u8>, AgentError> {
        let a = self.call("POST", "simplereenroll", Some(csr_der), None).await?;
        one_cert(certs_of(a)?)
    }

    /// Send any body to any EST operation and return the status and body
    /// text, without interpreting them: for tests and load generators that
    /// need to send what a correct client never would.
    #[doc(hidden)]
    pub async fn raw(
        &self,
        method: &str,
        op: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        auth: Option<String>,
    ) -> Result<(u16, String), AgentError> {
        let path = format!("{}/{op}", self.prefix);
        let a = self.exchange(method, &path, content_type, &body, auth_header(auth)).await?;
        Ok((a.status, String::from_utf8_lossy(&a.body).into_owned()))
    }

    async fn call(
        &self,
        method: &str,
        op: &str,
        csr: Option<&[u8]>,
        auth: Option<String>,
    ) -> Result<Answer, AgentError> {
        self.call_with(method, op, csr, auth_header(auth)).await
    }

    async fn call_with(
        &self,
        method: &str,
        op: &str,
        csr: Option<&[u8]>,
        headers: Headers,
    ) -> Result<Answer, AgentError> {
        let (ct, body) = match csr {
            Some(der) => (Some(est::CT_PKCS10), est::encode_body(der).into_bytes()),
            None => (None, Vec::new()),
        };
        let path = format!("{}/{op}", self.prefix);
        refuse_unless_ok(self.exchange(method, &path, ct, &body, headers).await?)
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        headers: Headers,
    ) -> Result<Answer, AgentError> {
        let what = format!("{}:{}", self.host, self.port);
        let fut = async {
            match &self.kept {
                Some(slot) => self.send_kept(&mut *slot.lock().await, method, path, content_type, body, &headers).await,
                None => {
                    let mut conn = self.open().await?;
                    let (a, _) = self.send_on(&mut conn, method, path, content_type, body, &headers).await?;
                    Ok(a)
                }
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| AgentError::Connect(format!("{what}: no answer within {CALL_TIMEOUT:?}")))?
    }

    /// One request on the connection kept in `slot`, opened if there is none. A
    /// kept connection that fails (the server closed it while idle) is replaced by
    /// a new one, once: an EST request is safe to send again (the same token and
    /// key, or the same renewal, get the certificate issued the first time). The
    /// connection is out of `slot` while its request is under way and goes back
    /// only once its answer has been read whole and the server keeps it open: a
    /// call given up halfway (its timeout) takes its connection with it, and the
    /// next call cannot read the answer meant for that one.
    async fn send_kept(
        &self,
        slot: &mut Option<Connection>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        headers: &Headers,
    ) -> Result<Answer, AgentError> {
        if let Some(mut conn) = slot.take() {
            // On failure, closed by the server while idle: once more, on a new connection.
            if let Ok((a, reusable)) = self.send_on(&mut conn, method, path, content_type, body, headers).await {
                if reusable {
                    *slot = Some(conn);
                }
                return Ok(a);
            }
        }
        let mut conn = self.open().await?;
        let (a, reusable) = self.send_on(&mut conn, method, path, content_type, body, headers).await?;
        if reusable {
            *slot = Some(conn);
        }
        Ok(a)
    }

    /// A new TLS connection speaking HTTP/1.1.
    async fn open(&self) -> Result<Connection, AgentError> {
        let what = format!("{}:{}", self.host, self.port);
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| AgentError::Connect(format!("{what}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| AgentError::Connect(format!("TLS with {what}: {e}")))?;
        Ok(http1::Connection::new(tls))
    }

    /// One request on `conn`: the answer, and whether the connection may carry another.
    async fn send_on(
        &self,
        conn: &mut Connection,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        headers: &Headers,
    ) -> Result<(Answer, bool), AgentError> {
        let what = format!("{}:{}", self.host, self.port);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let req = http1::Request { method, path, host: &what, headers: &headers, content_type, body };
        match conn.send(&req, self.max_answer).await {
            Ok(r) => Ok((Answer { status: r.status, body: r.body }, r.reusable)),
            Err(e @ http1::Error::Request(_)) => Err(AgentError::Usage(e.to_string())),
            Err(e @ (http1::Error::TooLarge { .. } | http1::Error::Malformed(_))) => {
                Err(AgentError::BadAnswer(format!("{what}: {e}")))
            }
            Err(e) => Err(AgentError::Connect(format!("{what}: {e}"))),
        }
    }

    /// `METHOD path` (any path on the server) with a body: status and body, uninterpreted.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), AgentError> {
        let a = self.exchange(method, path, content_type, &body, vec![]).await?;
        Ok((a.status, a.body))
    }

    /// `GET path` (any path on the server): status and body, uninterpreted.
    pub async fn get(&self, path: &str) -> Result<(u16, Vec<u8>), AgentError> {
        let a = self.exchange("GET", path, None, &[], vec![]).await?;
        Ok((a.status, a.body))
    }

    /// Take answers of up to `max` octets (default [`MAX_ANSWER`]).
    pub fn with_max_answer(mut self, max: usize) -> Self {
        self.max_answer = max;
        self
    }
}

/// Extra request headers.
type Headers = Vec<(&'static str, String)>;

fn auth_header(auth: Option<String>) -> Headers {
    auth.map(|a| vec![("authorization", a)]).unwrap_or_default()
}

fn check_batch_id(batch: &str) -> Result<(), AgentError> {
    if batch.is_empty() || !batch.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(AgentError::Usage(format!("batch id {batch:?} must be A-Z a-z 0-9 - _ .")));
    }
    Ok(())
}

fn refuse_unless_ok(a: Answer) -> Result<Answer, AgentError> {
    if a.status != 200 {
        let text = String::from_utf8_lossy(&a.body);
        let reason: String = text.lines().next().unwrap_or_default().chars().take(300).collect();
        return Err(AgentError::Refused { status: a.status, reason });
    }
    Ok(a)
}

fn certs_of(a: Answer) -> Result<Vec<Vec<u8>>, AgentError> {
    let der = est::decode_body(&a.body).map_err(|e| AgentError::BadAnswer(e.to_string()))?;
    pkcs7::parse_certs_only(&der).map_err(|e| AgentError::BadAnswer(e.to_string()))
}

fn one_cert(mut certs: Vec<Vec<u8>>) -> Result<Vec<u8>, AgentError> {
    if certs.len() != 1 {
        return Err(AgentError::BadAnswer(format!("expected one certificate, got {}", certs.len())));
    }
    Ok(certs.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("https://127.0.0.1:8443").unwrap(), ("127.0.0.1".into(), 8443));
        assert_eq!(parse_url("https://est.example/").unwrap(), ("est.example".into(), 443));
        assert_eq!(parse_url("https://[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(parse_url("http://x:1").is_err());
        assert!(parse_url("https://x:1/other").is_err());
        assert!(parse_url("https://x:99999").is_err());
        assert_eq!(server_url("coaps://[::1]", "coaps", 5684).unwrap(), ("::1".into(), 5684));
        assert_eq!(server_url("coaps://h:7", "coaps", 5684).unwrap(), ("h".into(), 7));
        assert!(server_url("https://h:7", "coaps", 5684).is_err());
    }

    #[test]
    fn without_resumption_keeps_no_sessions_and_leaves_the_original_alone() {
        use der::Decode;
        use iotpki_core::keys::{key_identifier, KeyType, SoftKey};
        use iotpki_core::profile::{issue, CertParams, Issuer, Profile};
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let name = iotpki_core::name::NameBuilder::default().common_name("Anchor").unwrap().build();
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(key.public_key_der()).unwrap();
        let kid = key_identifier(&spki);
        let issuer = Issuer { subject: &name, key_id: &kid, not_after: 9_000_000_000, signer: &key };
        let params = CertParams {
            profile: Profile::Root,
            serial: iotpki_core::serial::system_random_serial(1_000).unwrap().0,
            subject: name.clone(),
            spki,
            not_before: 1_000,
            not_after: 9_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let anchor = issue(&params, &issuer).unwrap().der;
        let c = EstClient::new("https://127.0.0.1:1", None, &[anchor], None).unwrap();
        let fresh = c.without_resumption();
        let store = |c: &EstClient| format!("{:?}", c.tls.resumption);
        assert!(store(&fresh).contains("NoClientSessionStorage"), "{}", store(&fresh));
        assert!(!store(&c).contains("NoClientSessionStorage"), "{}", store(&c));
        assert_eq!((fresh.host.as_str(), fresh.port, fresh.prefix.as_str()), ("127.0.0.1", 1, "/.well-known/est"));
    }
}
