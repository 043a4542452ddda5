//! TLS 1.3 server configuration with deferred client-certificate judgement.

use std::sync::Arc;

use iotpki_authority::Authority;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

/// Accepts any client certificate chain at the handshake, but always
/// verifies the handshake signature with the presented leaf key. The chain
/// is judged per request by `Authority::authenticate`.
#[derive(Debug)]
struct DeferredClientAuth {
    hints: Vec<DistinguishedName>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for DeferredClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The server's rustls configuration: TLS 1.3 only, aws-lc-rs (with the
/// X25519MLKEM768 hybrid key exchange preferred: rustls's `prefer-post-quantum`
/// feature, tested in `interop::tls_key_exchange_is_hybrid_post_quantum_with_our_devices`),
/// the cipher suites in `provider`'s order whatever the client prefers, HTTP/1.1.
pub fn server_config(authority: &Authority) -> Result<Arc<ServerConfig>, rustls::Error> {
    let (chain, key) = authority.server_tls();
    server_config_with(authority, chain, key)
}

/// [`server_config`] with another certificate chain and key (a reload: the
/// files replaced on disk since the authority was opened). Refused when the
/// key does not match the certificate.
pub fn server_config_with(
    authority: &Authority,
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(provider());
    let verifier = DeferredClientAuth {
        hints: authority.ca_subjects().into_iter().map(DistinguishedName::from).collect(),
        algs: provider.signature_verification_algorithms,
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ignore_client_order = true;
    // No session tickets, so no resumption: a renewal is one request on one
    // connection, and the agent's other flows (cacerts, then the enrollment) keep
    // theirs for all their calls (`EstClient::one_connection`), so a ticket was
    // never used; the two that rustls sends by default cost every connection one
    // write more and 2% of a fresh enrollment's instructions (BENCHMARKS.md,
    // issue #14). A client that opens a new connection per call (libest, curl)
    // makes a full handshake each time: one server signature more.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// rustls's aws-lc-rs provider with TLS_AES_128_GCM_SHA256 first (the server
/// chooses). rustls lists TLS_AES_256_GCM_SHA384 first, and most clients
/// follow; its key schedule and transcript run on SHA-384, for which aws-lc
/// has no SHA-extension path on x86 (it runs in portable C on AMD processors)
/// while SHA-256 runs on the SHA extensions: 5% of the server's CPU per
/// fresh enrollment on the benchmark machine (BENCHMARKS.md, issue #14). AES-128
/// matches the 128-bit strength of the P-256 keys the handshake is
/// authenticated with, and is NIST's post-quantum category 1 with the hybrid
/// key exchange. A client that offers only the others still gets them.
pub fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}
