//! Path validation for chains through a station's delegated CA.
//!
//! rustls-webpki rejects every certificate under a directoryName name
//! constraint (it does not implement them; RFC 5280 allows rejecting). Our
//! delegated CAs are constrained to their batch's namespace with exactly
//! that, so their chains are validated here, with the rules that matter
//! (RFC 5280 section 6, restricted to what our profiles use):
//! - a path leaf → intermediates → anchor by names, every signature verified;
//! - every certificate but the anchor valid at `now`;
//! - every issuer a CA (basicConstraints), with keyCertSign when keyUsage is
//!   present, and no more CAs below it than its pathLenConstraint;
//! - directoryName permitted/excluded subtrees (RDN-prefix matching) applied
//!   to every subject below the CA that carries them; any other constrained
//!   name form is refused (fail closed);
//! - an unknown critical extension is refused;
//! - the leaf's extendedKeyUsage includes the usage asked for.
//!
//! The anchor is trusted as given (its constraints are not applied).

use const_oid::db::rfc5280;
use const_oid::{AssociatedOid, ObjectIdentifier};
use der::{Decode, Encode};
use x509_cert::ext::pkix::constraints::name::NameConstraints;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::keys;
use crate::Error;

/// Longest path accepted (leaf + intermediates + anchor).
pub const MAX_DEPTH: usize = 5;

fn fail(m: impl Into<String>) -> Error {
    Error::Profile(format!("chain: {}", m.into()))
}

fn ext<T: for<'a> Decode<'a> + AssociatedOid>(c: &Certificate) -> Result<Option<T>, Error> {
    match c.tbs_certificate.extensions.as_deref().unwrap_or_default().iter().find(|e| e.extn_id == T::OID) {
        Some(e) => {
            T::from_der(e.extn_value.as_bytes()).map(Some).map_err(|e| fail(format!("extension {}: {e}", T::OID)))
        }
        None => Ok(None),
    }
}

fn known_critical(oid: &ObjectIdentifier) -> bool {
    [BasicConstraints::OID, KeyUsage::OID, ExtendedKeyUsage::OID, NameConstraints::OID, SubjectAltName::OID]
        .contains(oid)
        || *oid == SubjectKeyIdentifier::OID
        || *oid == AuthorityKeyIdentifier::OID
}

fn signed_by(child: &Certificate, issuer: &Certificate) -> bool {
    if child.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return false;
    }
    let Ok(tbs) = child.tbs_certificate.to_der() else { return false };
    let Some(sig) = child.signature.as_bytes() else { return false };
    keys::verify(&issuer.tbs_certificate.subject_public_key_info, &child.signature_algorithm, &tbs, sig).is_ok()
}

/// `name` is inside the subtree `base`: `base`'s RDNs are a prefix of `name`'s.
fn within(name: &Name, base: &Name) -> bool {
    base.0.len() <= name.0.len()
        && base.0.iter().zip(name.0.iter()).all(|(b, n)| {
            crate::name::equivalent(
                &x509_cert::name::RdnSequence(vec![b.clone()]),
                &x509_cert::name::RdnSequence(vec![n.clone()]),
            )
        })
}

/// Validate `leaf` (DER) up to `anchor` through `intermediates`, at `now`,
/// for `usage` (an extendedKeyUsage purpose, e.g. clientAuth).
pub fn verify(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: i64,
    usage: ObjectIdentifier,
) -> Result<(), Error> {
    let parse = |d: &[u8]| Certificate::from_der(d).map_err(|e| fail(format!("certificate: {e}")));
    let leaf = parse(leaf)?;
    let anchor = parse(anchor)?;
    let pool = intermediates.iter().map(|d| parse(d)).collect::<Result<Vec<_>, _>>()?;
    // Build: leaf, then issuers found in the pool, until the anchor signs.
    let mut path = vec![leaf.clone()];
    loop {
        let last = path.last().ok_or_else(|| fail("empty path"))?;
        if signed_by(last, &anchor) {
            break;
        }
        if path.len() >= MAX_DEPTH {
            return Err(fail("no path to the trust anchor within the depth limit"));
        }
        let next = pool.iter().find(|c| signed_by(last, c) && !path.contains(c)).ok_or_else(|| {
            fail(format!("no issuer found for {}", crate::name::to_rfc4514(&last.tbs_certificate.issuer)))
        })?;
        path.push(next.clone());
    }
    for (i, c) in path.iter().enumerate() {
        let tbs = &c.tbs_certificate;
        let (nb, na) = (crate::time::unix(&tbs.validity.not_before), crate::time::unix(&tbs.validity.not_after));
        if now < nb || now > na {
            return Err(fail(format!("{} is not valid at {now}", crate::name::to_rfc4514(&tbs.subject))));
        }
        for e in tbs.extensions.as_deref().unwrap_or_default() {
            if e.critical && !known_critical(&e.extn_id) {
                return Err(fail(format!("unknown critical extension {}", e.extn_id)));
            }
        }
        if i == 0 {
            continue;
        }
        // An issuer: a CA that may sign certificates, with room below it.
        let bc: Option<BasicConstraints> = ext(c)?;
        let Some(bc) = bc.filter(|b| b.ca) else { return Err(fail("an issuer is not a CA")) };
        if let Some(ku) = ext::<KeyUsage>(c)? {
            if !ku.key_cert_sign() {
                return Err(fail("an issuer may not sign certificates (keyUsage)"));
            }
        }
        let cas_below = i - 1; // intermediates strictly between this CA and the leaf
        if let Some(max) = bc.path_len_constraint {
            if cas_below > usize::from(max) {
                return Err(fail("path length constraint exceeded"));
            }
        }
        if let Some(nc) = ext::<NameConstraints>(c)? {
            for below in &path[..i] {
                let subject = &below.tbs_certificate.subject;
                if let Some(permitted) = &nc.permitted_subtrees {
                    let mut ok = false;
                    for t in permitted {
                        match &t.base {
                            GeneralName::DirectoryName(base) => ok |= within(subject, base),
                            _ => return Err(fail("unsupported name constraint form")),
                        }
                    }
                    if !ok {
                        return Err(fail(format!(
                            "{} is outside the permitted names",
                            crate::name::to_rfc4514(subject)
                        )));
                    }
                }
                for t in nc.excluded_subtrees.iter().flatten() {
                    match &t.base {
                        GeneralName::DirectoryName(base) if within(subject, base) => {
                            return Err(fail(format!("{} is an excluded name", crate::name::to_rfc4514(subject))))
                        }
                        GeneralName::DirectoryName(_) => {}
                        _ => return Err(fail("unsupported name constraint form")),
                    }
                }
            }
        }
    }
    let eku: Option<ExtendedKeyUsage> = ext(&leaf)?;
    if !eku.map(|e| e.0.contains(&usage) || e.0.contains(&rfc5280::ANY_EXTENDED_KEY_USAGE)).unwrap_or(false) {
        return Err(fail(format!("the certificate is not for {usage}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, Signer, SoftKey};
    use crate::name::NameBuilder;
    use crate::profile::{issue, CertParams, Issuer, Profile};

    struct Ca {
        key: SoftKey,
        name: Name,
        kid: Vec<u8>,
        der: Vec<u8>,
    }

    fn spki(k: &SoftKey) -> spki::SubjectPublicKeyInfoOwned {
        spki::SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap()
    }

    fn make(profile: Profile, name: Name, parent: Option<&Ca>, subtree: Option<Name>) -> Ca {
        let key = SoftKey::generate(KeyType::EcdsaP256).unwrap();
        let kid = keys::key_identifier(&spki(&key));
        let p = CertParams {
            profile,
            serial: crate::serial::system_random_serial(1_000).unwrap().0,
            subject: name.clone(),
            spki: spki(&key),
            not_before: 1_000,
            not_after: 9_000_000_000,
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: subtree.map(|n| vec![n]),
        };
        let der = match parent {
            Some(pa) => {
                issue(&p, &Issuer { subject: &pa.name, key_id: &pa.kid, not_after: 9_000_000_000, signer: &pa.key })
                    .unwrap()
                    .der
            }
            None => {
                issue(&p, &Issuer { subject: &name, key_id: &kid, not_after: 9_000_000_000, signer: &key }).unwrap().der
            }
        };
        Ca { key, name, kid, der }
    }

    fn n(parts: &[(&str, &str)]) -> Name {
        let mut b = NameBuilder::default();
        for (k, v) in parts {
            b = match *k {
                "O" => b.organization(v).unwrap(),
                "OU" => b.organizational_unit(v).unwrap(),
                _ => b.common_name(v).unwrap(),
            };
        }
        b.build()
    }

    #[test]
    fn delegated_chain_inside_and_outside_its_namespace() {
        let root = make(Profile::Root, n(&[("O", "Acme"), ("CN", "Root")]), None, None);
        let mfg = make(Profile::DelegatingCa, n(&[("O", "Acme"), ("CN", "Mfg")]), Some(&root), None);
        let sub = make(
            Profile::DelegatedCa,
            n(&[("O", "Acme"), ("OU", "Stations"), ("CN", "line-1 B1")]),
            Some(&mfg),
            Some(n(&[("O", "Acme"), ("OU", "B1")])),
        );
        let ok = make(Profile::Device, n(&[("O", "Acme"), ("OU", "B1"), ("CN", "D-1")]), Some(&sub), None);
        let out = make(Profile::Device, n(&[("O", "Acme"), ("OU", "B2"), ("CN", "D-2")]), Some(&sub), None);
        let inter = vec![sub.der.clone(), mfg.der.clone()];
        verify(&ok.der, &inter, &root.der, 2_000, rfc5280::ID_KP_CLIENT_AUTH).unwrap();
        let e = verify(&out.der, &inter, &root.der, 2_000, rfc5280::ID_KP_CLIENT_AUTH).unwrap_err();
        assert!(e.to_string().contains("outside the permitted names"), "{e}");
        // Expired, wrong usage, missing intermediate, a sub-CA under the delegated CA (pathLen 0).
        assert!(verify(&ok.der, &inter, &root.der, 9_000_000_001, rfc5280::ID_KP_CLIENT_AUTH).is_err());
        assert!(verify(&ok.der, &inter, &root.der, 2_000, rfc5280::ID_KP_SERVER_AUTH).is_err());
        assert!(verify(&ok.der, std::slice::from_ref(&mfg.der), &root.der, 2_000, rfc5280::ID_KP_CLIENT_AUTH).is_err());
        let deeper = make(Profile::IssuingCa, n(&[("O", "Acme"), ("OU", "B1"), ("CN", "sneaky")]), Some(&sub), None);
        let leaf = make(Profile::Device, n(&[("O", "Acme"), ("OU", "B1"), ("CN", "D-3")]), Some(&deeper), None);
        let e = verify(
            &leaf.der,
            &[deeper.der.clone(), sub.der.clone(), mfg.der.clone()],
            &root.der,
            2_000,
            rfc5280::ID_KP_CLIENT_AUTH,
        )
        .unwrap_err();
        assert!(e.to_string().contains("path length"), "{e}");
        // A device certificate is not an issuer.
        let fake = make(
            Profile::Device,
            n(&[("O", "Acme"), ("OU", "B1"), ("CN", "D-4")]),
            Some(&Ca {
                key: SoftKey::from_pkcs8(&ok.key.to_pkcs8().unwrap()).unwrap(),
                name: ok.name.clone(),
                kid: ok.kid.clone(),
                der: ok.der.clone(),
            }),
            None,
        );
        assert!(verify(
            &fake.der,
            &[ok.der.clone(), sub.der.clone(), mfg.der.clone()],
            &root.der,
            2_000,
            rfc5280::ID_KP_CLIENT_AUTH
        )
        .is_err());
    }
}
