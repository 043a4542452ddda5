//! X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem, TLS group 0x11EC) for the
//! device's ring build: X25519 from ring, ML-KEM-768 (FIPS 203) from
//! RustCrypto's `ml-kem`. ring has no ML-KEM, and the device keeps the hybrid
//! post-quantum key exchange its aws-lc build has (issue #16: the ring build is
//! about a megabyte smaller).
//!
//! The client's key share is the ML-KEM-768 encapsulation key (1,184 octets)
//! followed by the X25519 public key (32); the server's is the ML-KEM ciphertext
//! (1,088) followed by its X25519 public key (32); the shared secret is the
//! ML-KEM shared secret followed by the X25519 one (draft section 3, "the
//! ML-KEM part first" for this group). Only the client's half is here: a
//! device never serves TLS.

use ml_kem::{DecapsulationKey, KeyExport as _, MlKem768};
use ring::agreement;
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};
use zeroize::Zeroizing;

/// ML-KEM-768's encapsulation key.
const EK_LEN: usize = 1184;
/// ML-KEM-768's ciphertext.
const CT_LEN: usize = 1088;
/// An X25519 public key.
const X25519_LEN: usize = 32;

/// The group, for a [`rustls::crypto::CryptoProvider`]'s `kx_groups`.
pub static X25519MLKEM768: &dyn SupportedKxGroup = &Hybrid;

#[derive(Debug)]
struct Hybrid;

impl SupportedKxGroup for Hybrid {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let rng = SystemRandom::new();
        let x25519 = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
            .map_err(|_| Error::General("X25519 key generation failed".into()))?;
        let x25519_pub = x25519.compute_public_key().map_err(|_| Error::General("X25519 public key".into()))?;
        let mut seed = Zeroizing::new([0u8; 64]);
        rng.fill(seed.as_mut()).map_err(|_| rustls::crypto::GetRandomFailed)?;
        let dk = DecapsulationKey::<MlKem768>::from_seed((*seed).into());
        let mut share = Vec::with_capacity(EK_LEN + X25519_LEN);
        share.extend_from_slice(&dk.encapsulation_key().to_bytes());
        share.extend_from_slice(x25519_pub.as_ref());
        Ok(Box::new(Active { dk, x25519, share }))
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: rustls::ProtocolVersion) -> bool {
        version == rustls::ProtocolVersion::TLSv1_3
    }
}

/// One key exchange under way: both secret halves, and the share sent.
struct Active {
    dk: DecapsulationKey<MlKem768>,
    x25519: agreement::EphemeralPrivateKey,
    share: Vec<u8>,
}

impl Active {
    fn x25519_agree(x25519: agreement::EphemeralPrivateKey, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        // ring refuses an all-zero result (a small-order peer point), as RFC 7748 section 6.1 allows.
        agreement::agree_ephemeral(x25519, &agreement::UnparsedPublicKey::new(&agreement::X25519, peer), |s| {
            Zeroizing::new(s.to_vec())
        })
        .map_err(|_| PeerMisbehaved::InvalidKeyShare.into())
    }
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        if peer_pub_key.len() != CT_LEN + X25519_LEN {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let (ct, x25519_peer) = peer_pub_key.split_at(CT_LEN);
        let this = *self;
        let x = Self::x25519_agree(this.x25519, x25519_peer)?;
        // The length is checked above: the slice always converts.
        let k = ml_kem::kem::Decapsulate::decapsulate_slice(&this.dk, ct)
            .map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let mut secret = Zeroizing::new(Vec::with_capacity(64));
        secret.extend_from_slice(k.as_slice());
        secret.extend_from_slice(&x);
        Ok(SharedSecret::from(&secret[..]))
    }

    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((NamedGroup::X25519, &self.share[EK_LEN..]))
    }

    fn complete_hybrid_component(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        let x = Self::x25519_agree(self.x25519, peer_pub_key)?;
        Ok(SharedSecret::from(&x[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        None
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

#[cfg(all(test, feature = "aws-lc"))]
mod tests {
    //! Against aws-lc's X25519MLKEM768 (rustls' aws-lc-rs provider), an
    //! implementation we did not write: in-memory TLS 1.3 handshakes.
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;

    use rustls::crypto::CryptoProvider;

    use super::*;

    /// A root ("anchor") and a server certificate for "hybrid.test" under it, from core's profiles.
    fn pki() -> (Vec<u8>, Vec<u8>, iotpki_core::keys::SoftKey) {
        use der::Decode as _;
        use iotpki_core::keys::{key_identifier, KeyType, Signer as _, SoftKey};
        use iotpki_core::profile::{issue, CertParams, Issuer, Profile};
        let ca = SoftKey::generate(KeyType::EcdsaP256).expect("key");
        let leaf = SoftKey::generate(KeyType::EcdsaP256).expect("key");
        let ca_name = iotpki_core::name::NameBuilder::default().common_name("Anchor").expect("cn").build();
        let ca_spki = spki::SubjectPublicKeyInfoOwned::from_der(ca.public_key_der()).expect("spki");
        let kid = key_identifier(&ca_spki);
        let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 9_000_000_000, signer: &ca };
        let params = |profile, subject, spki, dns_names| CertParams {
            profile,
            serial: iotpki_core::serial::system_random_serial(1_000).expect("serial").0,
            subject,
            spki,
            not_before: 1_000,
            not_after: 9_000_000_000,
            dns_names,
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let anchor = issue(&params(Profile::Root, ca_name.clone(), ca_spki, vec![]), &issuer).expect("root").der;
        let leaf_name = iotpki_core::name::NameBuilder::default().common_name("hybrid.test").expect("cn").build();
        let leaf_spki = spki::SubjectPublicKeyInfoOwned::from_der(leaf.public_key_der()).expect("spki");
        let server =
            issue(&params(Profile::Server, leaf_name, leaf_spki, vec!["hybrid.test".into()]), &issuer).expect("leaf");
        (anchor, server.der, leaf)
    }

    fn server(groups: Vec<&'static dyn SupportedKxGroup>) -> (rustls::ServerConnection, Vec<u8>) {
        let (anchor, cert, key) = pki();
        let provider = CryptoProvider { kx_groups: groups, ..rustls::crypto::aws_lc_rs::default_provider() };
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(cert)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.to_pkcs8().expect("pkcs8").into()),
            )
            .expect("server config");
        (rustls::ServerConnection::new(Arc::new(cfg)).expect("server"), anchor)
    }

    fn client(groups: Vec<&'static dyn SupportedKxGroup>, anchor: &[u8]) -> rustls::ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(anchor.to_vec())).expect("anchor");
        let provider = CryptoProvider { kx_groups: groups, ..rustls::crypto::ring::default_provider() };
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("hybrid.test").expect("name");
        rustls::ClientConnection::new(Arc::new(cfg), name).expect("client")
    }

    /// Run the handshake in memory and send one message each way.
    fn talk(c: &mut rustls::ClientConnection, s: &mut rustls::ServerConnection) -> Result<(), rustls::Error> {
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            c.write_tls(&mut buf).expect("client write");
            s.read_tls(&mut &buf[..]).expect("server read");
            s.process_new_packets()?;
            buf.clear();
            s.write_tls(&mut buf).expect("server write");
            c.read_tls(&mut &buf[..]).expect("client read");
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        c.writer().write_all(b"ping").expect("write");
        buf.clear();
        c.write_tls(&mut buf).expect("client write");
        s.read_tls(&mut &buf[..]).expect("server read");
        s.process_new_packets()?;
        let mut got = [0u8; 4];
        s.reader().read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ping");
        Ok(())
    }

    #[test]
    fn our_hybrid_agrees_with_aws_lc() {
        let (mut s, cert) = server(vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768]);
        let mut c = client(vec![X25519MLKEM768], &cert);
        talk(&mut c, &mut s).expect("handshake");
        assert_eq!(c.negotiated_key_exchange_group().map(|g| g.name()), Some(NamedGroup::X25519MLKEM768));
        assert_eq!(s.negotiated_key_exchange_group().map(|g| g.name()), Some(NamedGroup::X25519MLKEM768));
    }

    #[test]
    fn a_server_without_the_hybrid_gets_the_x25519_half() {
        let (mut s, cert) = server(vec![rustls::crypto::aws_lc_rs::kx_group::X25519]);
        let mut c = client(vec![X25519MLKEM768, rustls::crypto::ring::kx_group::X25519], &cert);
        talk(&mut c, &mut s).expect("handshake");
        assert_eq!(c.negotiated_key_exchange_group().map(|g| g.name()), Some(NamedGroup::X25519));
    }

    #[test]
    fn a_share_of_the_wrong_length_or_a_small_order_point_is_refused() {
        let kx = X25519MLKEM768.start().expect("start");
        assert_eq!(kx.pub_key().len(), EK_LEN + X25519_LEN);
        assert!(kx.complete(&[7u8; CT_LEN + X25519_LEN - 1]).is_err());
        let kx = X25519MLKEM768.start().expect("start");
        // The X25519 half all zero: a small-order point, whose agreement is all zero.
        let mut share = vec![1u8; CT_LEN];
        share.extend_from_slice(&[0u8; X25519_LEN]);
        assert!(kx.complete(&share).is_err());
    }
}
