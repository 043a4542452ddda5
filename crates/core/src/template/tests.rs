use super::*;
use crate::keys::{self, Signer, SoftKey};
use crate::name;
use crate::serial::system_random_serial;
use spki::SubjectPublicKeyInfoOwned;

fn spec() -> TemplateSpec {
    TemplateSpec {
        name: "sensor".into(),
        subject: vec!["C=DE".into(), "O={organization}".into(), "OU={product}".into(), "CN={serial}".into()],
        san: SanSpec {
            dns: vec!["{serial}.devices.example.com".into()],
            uri: vec!["urn:dev:sn:{serial}".into()],
            ..Default::default()
        },
        key_usage: Some(vec!["digitalSignature".into()]),
        extended_key_usage: Some(vec!["clientAuth".into(), "serverAuth".into()]),
        extension: vec![ExtensionSpec {
            oid: "1.3.6.1.4.1.55555.1".into(),
            utf8: Some("fw-2".into()),
            ..Default::default()
        }],
        keys: vec!["p256".into(), "ed25519".into()],
        lifetime_days: Some(365),
    }
}

/// Refused with a reason naming `field` and `rule`.
fn refused(s: TemplateSpec, field: &str, rule: &str) {
    let e = Template::parse(s.clone()).expect_err(&format!("{s:?} should be refused"));
    assert!(e.field.starts_with(field), "field {:?}, wanted {field:?}: {e}", e.field);
    assert!(e.rule.contains(rule), "rule {:?}, wanted {rule:?}: {e}", e.rule);
    assert!(e.to_string().contains(&format!("template {}", s.name)));
}

#[test]
fn builtins_parse() {
    let b = builtins();
    assert_eq!(b.iter().map(|t| t.name()).collect::<Vec<_>>(), ["device", "device-batch"]);
    assert!(b.iter().all(|t| t.is_builtin() && t.keys().is_empty() && t.lifetime_secs().is_none()));
    assert!(Template::parse(spec()).is_ok());
}

#[test]
fn a_template_breaking_rfc_5280_is_refused_naming_the_field_and_the_rule() {
    let with = |f: &dyn Fn(&mut TemplateSpec)| {
        let mut s = spec();
        f(&mut s);
        s
    };
    refused(with(&|s| s.subject.clear()), "subject", "RFC 5280 4.1.2.6");
    refused(with(&|s| s.subject.push("emailAddress=a@b".into())), "subject[4]", "RFC 5280 4.1.2.4");
    refused(with(&|s| s.subject.push("CN".into())), "subject[4]", "RFC 5280 4.1.2.4");
    refused(with(&|s| s.subject[0] = "C=Germany".into()), "subject[0]", "X520countryName");
    refused(with(&|s| s.subject.push("CN={nope}".into())), "subject[4]", "iotpki");
    refused(with(&|s| s.subject.push("CN={serial".into())), "subject[4]", "iotpki");
    refused(with(&|s| s.san.dns.push(String::new())), "san.dns[1]", "RFC 5280 4.2.1.6");
    refused(with(&|s| s.san.dns.push("a..example".into())), "san.dns[1]", "RFC 5280 4.2.1.6");
    refused(with(&|s| s.san.dns.push("*.example".into())), "san.dns[1]", "RFC 5280 4.2.1.6");
    refused(with(&|s| s.san.ip.push("{serial}".into())), "san.ip[0]", "RFC 5280 4.2.1.6");
    refused(with(&|s| s.key_usage = Some(vec![])), "key_usage", "RFC 5280 4.2.1.3");
    refused(with(&|s| s.key_usage = Some(vec!["keyCertSign".into()])), "key_usage[0]", "RFC 5280 4.2.1.3");
    refused(with(&|s| s.key_usage = Some(vec!["keyEncipherment".into()])), "key_usage", "RFC 5480 3");
    refused(with(&|s| s.key_usage = Some(vec!["keyAgreement".into()])), "key_usage", "RFC 8410 5");
    refused(with(&|s| s.key_usage = Some(vec!["encipherOnly".into()])), "key_usage", "RFC 5280 4.2.1.3");
    refused(with(&|s| s.extended_key_usage = Some(vec!["OCSPSigning".into()])), "extended_key_usage[0]", "RFC 6960");
    refused(
        with(&|s| s.extended_key_usage = Some(vec!["1.3.6.1.5.5.7.3.9".into()])),
        "extended_key_usage[0]",
        "RFC 6960",
    );
    refused(
        with(&|s| s.extended_key_usage = Some(vec!["1.3.6.1.5.5.7.3.28".into()])),
        "extended_key_usage[0]",
        "admin",
    );
    refused(with(&|s| s.extended_key_usage = Some(vec!["2.5.29.37.0".into()])), "extended_key_usage[0]", "4.2.1.12");
    refused(
        with(&|s| s.extended_key_usage = Some(vec!["clientAuth".into(), "1.3.6.1.5.5.7.3.2".into()])),
        "extended_key_usage[1]",
        "4.2.1.12",
    );
    let x = |oid: &str| ExtensionSpec { oid: oid.into(), utf8: Some("v".into()), ..Default::default() };
    refused(with(&|s| s.extension.push(x("1.3.6.1.4.1.55555.1"))), "extension[1].oid", "RFC 5280 4.2");
    refused(with(&|s| s.extension.push(x("2.5.29.19"))), "extension[1].oid", "RFC 5280 4.2");
    refused(with(&|s| s.extension.push(x("2.5.29.17"))), "extension[1].oid", "RFC 5280 4.2");
    refused(with(&|s| s.extension.push(x("1.3.6.1.5.5.7.48.1.5"))), "extension[1].oid", "RFC 5280 4.2");
    refused(
        with(&|s| s.extension.push(ExtensionSpec { critical: true, ..x("1.3.6.1.4.1.55555.2") })),
        "extension[1].critical",
        "RFC 5280 4.2",
    );
    refused(with(&|s| s.extension.push(x("not.an.oid"))), "extension[1].oid", "RFC 5280 4.1");
    let raw = |h: &str| ExtensionSpec { oid: "1.3.6.1.4.1.55555.3".into(), der: Some(h.into()), ..Default::default() };
    refused(with(&|s| s.extension.push(raw("zz"))), "extension[1]", "extnValue");
    refused(with(&|s| s.extension.push(raw("0500ff"))), "extension[1]", "extnValue");
    refused(with(&|s| s.extension.push(raw("0c05ab"))), "extension[1]", "extnValue");
    refused(
        with(&|s| s.extension.push(ExtensionSpec { integer: Some(1), ..x("1.3.6.1.4.1.55555.4") })),
        "extension[1]",
        "extnValue",
    );
    refused(with(&|s| s.keys.clear()), "keys", "iotpki");
    refused(with(&|s| s.keys.push("rsa-1024".into())), "keys[2]", "iotpki");
    refused(with(&|s| s.keys.push("p256".into())), "keys[2]", "iotpki");
    refused(with(&|s| s.lifetime_days = Some(0)), "lifetime_days", "RFC 5280 4.1.2.5");
    refused(with(&|s| s.name = "bad name".into()), "name", "iotpki");
    // And what is allowed: an EC key agreeing keys, raw DER in one piece.
    let ok = with(&|s| {
        s.keys = vec!["p256".into(), "p384".into()];
        s.key_usage = Some(vec!["digitalSignature".into(), "keyAgreement".into(), "decipherOnly".into()]);
        s.extension.push(raw("0500"));
    });
    Template::parse(ok).unwrap();
}

fn issuer_key() -> (SoftKey, Name, Vec<u8>) {
    let k = SoftKey::generate(KeyType::Ed25519).unwrap();
    let n = NameBuilder::default().organization("Acme").unwrap().common_name("Acme Operational CA").unwrap().build();
    let kid = keys::key_identifier(&SubjectPublicKeyInfoOwned::from_der(k.public_key_der()).unwrap());
    (k, n, kid)
}

/// The built-in profiles are the default templates: issuing through the
/// `device` and `device-batch` templates gives, byte for byte, the
/// certificate the authority issues without a template.
#[test]
fn the_builtin_templates_issue_byte_for_byte_what_the_builtin_profile_issues() {
    let (ca_key, ca_name, kid) = issuer_key();
    let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 2_000_000_000, signer: &ca_key };
    let urls = profile::RevocationUrls {
        crl: "http://ca.example/crl/op.crl".into(),
        ocsp: Some("http://ca.example/ocsp".into()),
    };
    let serial = DeviceSerial::parse("SN-0042").unwrap();
    let empty = Name::default();
    let ctx = Context { organization: "Acme", serial: &serial, batch: Some("B7"), product: None, csr_subject: &empty };
    let b = builtins();
    for (t, old) in [
        (&b[0], name::device_subject("Acme", &serial).unwrap()),
        (&b[1], name::batch_device_subject("Acme", "B7", &serial).unwrap()),
    ] {
        for kt in KeyType::SIGNING {
            let dev = SoftKey::generate(kt).unwrap();
            let spki = SubjectPublicKeyInfoOwned::from_der(dev.public_key_der()).unwrap();
            let params = CertParams {
                profile: Profile::Device,
                serial: system_random_serial(1_700_000_000).unwrap().0,
                subject: old.clone(),
                spki,
                not_before: 1_700_000_000,
                not_after: 1_800_000_000,
                dns_names: vec![],
                ip_addrs: vec![],
                permitted_subtree: None,
            };
            let r = t.render(&ctx).unwrap();
            assert!(r.extensions.is_empty());
            assert_eq!(r.subject.to_der().unwrap(), old.to_der().unwrap(), "{}", t.name());
            let templated = CertParams { subject: r.subject, ..params.clone() };
            for u in [None, Some(&urls)] {
                let a = profile::issue_with(&params, &issuer, u).unwrap();
                let b = profile::issue_templated(&templated, &issuer, u, &r.extensions).unwrap();
                assert_eq!(a.der, b.der, "{} {kt}", t.name());
            }
        }
    }
}

#[test]
fn a_template_renders_its_subject_sans_and_extensions_and_its_samples_pass_the_lint() {
    let t = Template::parse(spec()).unwrap();
    let serial = DeviceSerial::parse("SN-7").unwrap();
    let empty = Name::default();
    let ctx = Context {
        organization: "Acme",
        serial: &serial,
        batch: Some("B1"),
        product: Some("thermo"),
        csr_subject: &empty,
    };
    let r = t.render(&ctx).unwrap();
    assert_eq!(name::to_rfc4514(&r.subject), "CN=SN-7,OU=thermo,O=Acme,C=DE");
    let oids: Vec<_> = r.extensions.iter().map(|e| e.extn_id.to_string()).collect();
    assert_eq!(oids, ["2.5.29.17", "2.5.29.15", "2.5.29.37", "1.3.6.1.4.1.55555.1"]);
    let san = SubjectAltName::from_der(r.extensions[0].extn_value.as_bytes()).unwrap();
    assert_eq!(san.0.len(), 2);
    // No product: refused with the reason.
    let e = t.render(&Context { product: None, ..ctx }).unwrap_err();
    assert!(e.to_string().contains("{product}"), "{e}");
    // A serial that cannot be a DNS label: refused at issuance.
    let odd = DeviceSerial::parse("SN 7").unwrap();
    let e = t.render(&Context { serial: &odd, ..ctx }).unwrap_err();
    assert!(matches!(e, Error::BadName(_)), "{e}");

    let (ca_key, ca_name, kid) = issuer_key();
    let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 2_000_000_000, signer: &ca_key };
    for kt in t.keys() {
        let s = t.sample("Acme", &issuer, *kt, 1_700_000_000).unwrap();
        let c = x509_cert::Certificate::from_der(&s.der).unwrap();
        let exts = c.tbs_certificate.extensions.unwrap();
        // keyUsage and extKeyUsage replaced in place, not repeated.
        assert_eq!(exts.iter().filter(|e| e.extn_id == rfc5280::ID_CE_KEY_USAGE).count(), 1);
        let eku = exts.iter().find(|e| e.extn_id == rfc5280::ID_CE_EXT_KEY_USAGE).unwrap();
        assert_eq!(ExtendedKeyUsage::from_der(eku.extn_value.as_bytes()).unwrap().0.len(), 2);
    }
}

#[test]
fn a_request_asking_for_what_the_template_does_not_give_is_refused() {
    let mut s = spec();
    s.subject.push("L={csr.L}".into());
    let t = Template::parse(s).unwrap();
    let serial = DeviceSerial::parse("SN-7").unwrap();
    let csr = NameBuilder::default()
        .common_name("SN-7")
        .unwrap()
        .serial_number(&serial)
        .unwrap()
        .utf8_attribute(rfc4519::L, "Berlin")
        .unwrap()
        .build();
    let ctx = Context { organization: "Acme", serial: &serial, batch: None, product: Some("p"), csr_subject: &csr };
    let r = t.render(&ctx).unwrap();
    assert!(name::to_rfc4514(&r.subject).starts_with("L=Berlin,"));
    t.check_request(&csr, None, &serial, &r).unwrap();
    // An OU the template does not take.
    let ou = NameBuilder::default().organizational_unit("admins").unwrap().build();
    let e = t.check_request(&ou, None, &serial, &r).unwrap_err();
    assert!(e.to_string().contains("does not let a request set OU"), "{e}");
    // A CN naming another device.
    let cn = NameBuilder::default().common_name("SN-8").unwrap().build();
    assert!(t.check_request(&cn, None, &serial, &r).is_err());
    // A SAN the template would not write.
    let want = SubjectAltName(vec![GeneralName::DnsName(Ia5String::new("evil.example").unwrap())]);
    let e = t.check_request(&csr, Some(&want), &serial, &r).unwrap_err();
    assert!(e.to_string().contains("subjectAltName"), "{e}");
    let mine = SubjectAltName(vec![GeneralName::DnsName(Ia5String::new("SN-7.devices.example.com").unwrap())]);
    t.check_request(&csr, Some(&mine), &serial, &r).unwrap();
    // Without L in the request, the template cannot render.
    let e = t.render(&Context { csr_subject: &cn, ..ctx }).unwrap_err();
    assert!(e.to_string().contains("takes L from the request"), "{e}");
    // Key types.
    assert!(t.check_key(KeyType::EcdsaP384).is_err());
    t.check_key(KeyType::Ed25519).unwrap();
}

#[test]
fn two_templates_of_one_name_or_a_builtin_name_are_refused() {
    let e = parse_specs(vec![spec(), spec()]).unwrap_err();
    assert_eq!(e.field, "name");
    let e = parse_specs(vec![TemplateSpec { name: "device".into(), ..spec() }]).unwrap_err();
    assert!(e.reason.contains("built-in"));
    assert_eq!(parse_specs(vec![spec()]).unwrap().len(), 1);
}

/// RSA sizes are template key types too (`rsa-2048`, `rsa-3072`): their
/// samples carry an RSA key of that size and the keyUsage RSA may have; an
/// RSA size a label cannot allow, and keyAgreement with RSA, are refused.
#[test]
fn rsa_sizes_are_template_key_types_with_samples_of_that_size() {
    let rsa = TemplateSpec {
        name: "legacy".into(),
        subject: vec!["O={organization}".into(), "CN={serial}".into()],
        key_usage: Some(vec!["digitalSignature".into(), "keyEncipherment".into()]),
        keys: vec!["rsa-2048".into(), "rsa-3072".into()],
        ..Default::default()
    };
    let t = Template::parse(rsa.clone()).unwrap();
    assert_eq!(t.keys(), [KeyType::Rsa(2048), KeyType::Rsa(3072)]);
    t.check_key(KeyType::Rsa(3072)).unwrap();
    assert!(t.check_key(KeyType::EcdsaP256).is_err());
    let (ca_key, ca_name, kid) = issuer_key();
    let issuer = Issuer { subject: &ca_name, key_id: &kid, not_after: 2_000_000_000, signer: &ca_key };
    for kt in t.keys() {
        let s = t.sample("Acme", &issuer, *kt, 1_700_000_000).unwrap();
        let c = x509_cert::Certificate::from_der(&s.der).unwrap();
        assert_eq!(KeyType::of_spki(&c.tbs_certificate.subject_public_key_info).unwrap(), *kt);
    }
    refused(TemplateSpec { keys: vec!["rsa-1024".into()], ..rsa.clone() }, "keys[0]", "iotpki");
    let agree = Some(vec!["digitalSignature".into(), "keyAgreement".into()]);
    refused(TemplateSpec { key_usage: agree, ..rsa }, "key_usage", "RFC 3279 2.3.1");
}
