//! Certificates for the fleet's own servers (an MQTT broker, an HTTPS
//! backend, a gateway that devices talk to): issued by the default label's CA
//! (the operational CA, the one devices' chains share), recorded and audited
//! like every issuance; renewal supersedes the old certificate in the same
//! transaction. The key is made by the caller; only its public key comes here.

use std::net::IpAddr;
use std::path::Path;

use iotpki_core::keys;
use iotpki_core::name;
use iotpki_core::profile::{self, CertParams, Profile};
use iotpki_core::serial;
use iotpki_store::{AuditEvent, CertStatus, Issuance, Precondition};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spki::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;

use crate::config::Config;
use crate::{keyfile, Authority, AuthorityError, Passphrase, BACKDATE_SECS};

/// How long a server certificate lives unless asked otherwise.
pub const DEFAULT_VALIDITY_SECS: i64 = 365 * 86_400;
/// The longest a server certificate may live (the CA/Browser Forum's 397 days).
pub const MAX_VALIDITY_SECS: i64 = 397 * 86_400;
/// The most names one server certificate carries.
pub const MAX_NAMES: usize = 100;

/// A server certificate just issued.
#[derive(Debug, Clone)]
pub struct IssuedServer {
    /// The certificate, DER.
    pub cert: Vec<u8>,
    /// Its issuing CA, DER (what a server sends after its certificate).
    pub chain: Vec<Vec<u8>>,
    /// The root it chains to, DER.
    pub root: Vec<u8>,
    /// Its serial, lowercase hex.
    pub serial: String,
    /// The names it carries (DNS names and IP addresses), in order.
    pub names: Vec<String>,
}

impl Authority {
    /// Certify a server's public key (`spki_der`) for `names` (fully qualified
    /// lowercase DNS names and IP addresses). Refuses an empty, duplicated or
    /// malformed list and a lifetime out of range before anything is written.
    pub fn issue_server(
        &self,
        names: &[String],
        spki_der: &[u8],
        validity_secs: Option<i64>,
        actor: &str,
    ) -> Result<IssuedServer, AuthorityError> {
        self.sign_server(names, spki_der, validity_secs, None, actor)
    }

    /// Renew the server certificate `old_der` (as recorded in the store, good
    /// and not renewed yet) for a new public key, with the same names: the old
    /// one is superseded (revoked, reason superseded) in the same transaction.
    pub fn renew_server(
        &self,
        old_der: &[u8],
        spki_der: &[u8],
        validity_secs: Option<i64>,
        actor: &str,
    ) -> Result<IssuedServer, AuthorityError> {
        let info = profile::cert_info(old_der)
            .map_err(|e| AuthorityError::malformed(format!("the certificate to renew: {e}")))?;
        let rec = self.store.certificate(&info.serial)?.ok_or_else(|| {
            AuthorityError::not_found(format!(
                "certificate {} is not one this authority issued (check --dir and --cert)",
                info.serial
            ))
        })?;
        if rec.der != old_der {
            return Err(AuthorityError::malformed(format!(
                "certificate {} differs from the one recorded under its serial: not ours",
                info.serial
            )));
        }
        if rec.profile != Profile::Server.name() {
            return Err(AuthorityError::malformed(format!(
                "certificate {} is a {} certificate, not a server's: renew-server renews only what issue-server issued",
                info.serial, rec.profile
            )));
        }
        if let CertStatus::Revoked { .. } = rec.status {
            return Err(AuthorityError::forbidden(format!(
                "certificate {} is revoked: issue a new one (iotpki cert issue-server)",
                info.serial
            )));
        }
        if let Some(next) = &rec.replaced_by {
            return Err(AuthorityError::malformed(format!(
                "certificate {} was renewed already, by {next}: renew that one",
                info.serial
            )));
        }
        let names = san_names(&info.cert)?;
        self.sign_server(&names, spki_der, validity_secs, Some(info.serial), actor)
    }

    fn sign_server(
        &self,
        names: &[String],
        spki_der: &[u8],
        validity_secs: Option<i64>,
        replaces: Option<String>,
        actor: &str,
    ) -> Result<IssuedServer, AuthorityError> {
        if names.is_empty() {
            return Err(AuthorityError::malformed(
                "a server certificate needs at least one name (--name mqtt.example.com, --name 192.0.2.10)".into(),
            ));
        }
        if names.len() > MAX_NAMES {
            return Err(AuthorityError::malformed(format!("at most {MAX_NAMES} names per server certificate")));
        }
        for (i, n) in names.iter().enumerate() {
            crate::init::check_server_name(n).map_err(|_| {
                AuthorityError::malformed(format!(
                    "server name {n:?} must be an IP address or a fully qualified lowercase DNS name such as \
                     mqtt.example.com"
                ))
            })?;
            if names[..i].contains(n) {
                return Err(AuthorityError::malformed(format!("server name {n:?} is given twice")));
            }
        }
        let validity = validity_secs.unwrap_or(DEFAULT_VALIDITY_SECS);
        if !(3600..=MAX_VALIDITY_SECS).contains(&validity) {
            return Err(AuthorityError::malformed(format!(
                "a server certificate lives between 1 hour and {} days",
                MAX_VALIDITY_SECS / 86_400
            )));
        }
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| AuthorityError::malformed(format!("server public key: {e}")))?;
        let ca = &self.label(None)?.ca;
        let now = self.clock.now();
        let (sn, sn_hex) = serial::system_random_serial(now)?;
        // The subject names the first DNS name (the SAN is what clients match).
        let cn = names.iter().find(|n| n.parse::<IpAddr>().is_err()).cloned();
        let mut subject = name::NameBuilder::default().organization(&self.cfg.organization)?;
        subject = subject.common_name(cn.as_deref().unwrap_or(&format!("{} server", self.cfg.organization)))?;
        let (ips, dns): (Vec<_>, Vec<_>) = names.iter().partition(|n| n.parse::<IpAddr>().is_ok());
        let params = CertParams {
            profile: Profile::Server,
            serial: sn,
            subject: subject.build(),
            spki,
            not_before: now - BACKDATE_SECS,
            not_after: now + validity,
            dns_names: dns.into_iter().cloned().collect(),
            ip_addrs: ips.into_iter().filter_map(|n| n.parse().ok()).collect(),
            permitted_subtree: None,
        };
        let cert = ca.sign(&params, sn_hex.clone(), None, replaces.clone(), now)?;
        let (action, preconditions) = match &replaces {
            Some(old) => ("server.renew", vec![Precondition::Supersede { serial: old.clone(), now }]),
            None => ("server.issue", vec![]),
        };
        let audit = AuditEvent {
            at: now,
            actor: actor.into(),
            action: action.into(),
            target: format!("server:{}", names[0]),
            detail: format!(
                "cert={sn_hex}{} names={} key={}",
                replaces.as_deref().map(|o| format!(" replaces={o}")).unwrap_or_default(),
                names.join(","),
                keys::spki_fingerprint(spki_der)
            ),
        };
        let der = cert.der.clone();
        self.store.record_issuance(Issuance { cert, preconditions, audit })?;
        self.metrics.issued.with(&[action]).inc();
        Ok(IssuedServer {
            cert: der,
            chain: vec![ca.cert_der.clone()],
            root: self.root_der.clone(),
            serial: sn_hex,
            names: names.to_vec(),
        })
    }
}

/// The DNS names and IP addresses of a certificate's subjectAltName, in order.
pub fn san_names(cert: &x509_cert::Certificate) -> Result<Vec<String>, AuthorityError> {
    let san = profile::subject_alt_name(cert)?
        .ok_or_else(|| AuthorityError::malformed("the certificate names no server (no subjectAltName)".into()))?;
    let mut out = Vec::new();
    for g in san.0 {
        match g {
            GeneralName::DnsName(d) => out.push(d.to_string()),
            GeneralName::IpAddress(o) => match o.as_bytes().len() {
                4 => {
                    let b: [u8; 4] = o.as_bytes().try_into().map_err(|_| bad_ip())?;
                    out.push(IpAddr::from(b).to_string());
                }
                16 => {
                    let b: [u8; 16] = o.as_bytes().try_into().map_err(|_| bad_ip())?;
                    out.push(IpAddr::from(b).to_string());
                }
                _ => return Err(bad_ip()),
            },
            _ => {}
        }
    }
    Ok(out)
}

fn bad_ip() -> AuthorityError {
    AuthorityError::malformed("the certificate's subjectAltName holds a malformed IP address".into())
}

/// Read the EST server's own TLS certificate chain and key as the config in
/// `dir` names them now (for a reload on SIGHUP: the files may have been
/// replaced since the authority was opened).
pub fn load_server_tls(
    dir: &Path,
    cfg: &Config,
    pass: &Passphrase,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), AuthorityError> {
    let chain = crate::open::read_cert_pem(&keyfile::resolve(dir, &cfg.server.cert))?;
    let key = keyfile::read_encrypted(&keyfile::resolve(dir, &cfg.server.key), pass)?.to_pkcs8()?;
    Ok((chain.into_iter().map(CertificateDer::from).collect(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key))))
}
