//! Certificate templates: a device certificate's subject, subjectAltName,
//! keyUsage, extKeyUsage, extra extensions, allowed key types and lifetime,
//! written in the authority's config (`[[template]]`, docs/templates.md) and
//! checked against RFC 5280 when they are parsed, before any certificate is
//! issued from them.
//!
//! A [`TemplateSpec`] is what the config says; [`Template::parse`] turns it
//! into a [`Template`] or refuses it with a [`TemplateError`] naming the
//! template, the field and the rule. [`Template::render`] fills it in for one
//! device ([`Context`]: serial, batch, product, the request's subject) into a
//! subject and the extensions [`crate::profile::issue_templated`] writes over
//! the device profile's; [`Template::sample`] issues a certificate from it
//! with a throwaway key of each allowed type, through the same lint as every
//! certificate, so that a template that could not make a good certificate is
//! refused at load.
//!
//! The built-in device subjects are the default templates ([`builtins`]):
//! rendering them gives, byte for byte, what the authority writes without a
//! template.
//!
//! Patterns: a subject entry is `ATTR=VALUE` (`C`, `ST`, `L`, `O`, `OU`, `CN`,
//! `serialNumber`), one RDN each, most significant first; VALUE (and a SAN
//! entry) is text with placeholders `{serial}`, `{batch}`, `{product}`,
//! `{organization}` and `{csr.ATTR}` (the value of ATTR in the request's
//! subject: the only request fields a template lets through).

use std::fmt;
use std::net::IpAddr;

use const_oid::db::{rfc4519, rfc5280, rfc6960};
use const_oid::{AssociatedOid, ObjectIdentifier};
use der::asn1::{Ia5String, OctetString, PrintableStringRef, Utf8StringRef};
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName};
use x509_cert::ext::Extension;
use x509_cert::name::Name;

use crate::keys::KeyType;
use crate::name::{DeviceSerial, NameBuilder};
use crate::profile::{self, CertParams, Issued, Issuer, Profile};
use crate::Error;

/// Most subject attributes, SAN entries or extra extensions a template may list.
pub const MAX_ENTRIES: usize = 16;
/// Longest pattern (a subject value or SAN entry), in bytes.
pub const MAX_PATTERN: usize = 256;
/// Largest DER value of an extra extension, in bytes.
pub const MAX_EXTENSION_DER: usize = 1024;
/// Longest lifetime a template may give, in days (100 years).
pub const MAX_LIFETIME_DAYS: u32 = 36_525;

/// A template as the config writes it (`[[template]]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Its name: what a label, batch or token selects it by.
    pub name: String,
    /// The subject, most significant RDN first: `ATTR=VALUE` entries.
    pub subject: Vec<String>,
    /// The subjectAltName entries (none: no subjectAltName).
    #[serde(default, skip_serializing_if = "SanSpec::is_empty")]
    pub san: SanSpec,
    /// keyUsage bits (none: digitalSignature, the device profile's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<Vec<String>>,
    /// extKeyUsage purposes, by name or dotted OID (none: clientAuth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_key_usage: Option<Vec<String>>,
    /// Extra non-critical extensions (`[[template.extension]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<ExtensionSpec>,
    /// The key types a request may carry (`p256`, `p384`, `ed25519`, ...);
    /// empty only in the built-in templates (the label's key types then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Lifetime of issued certificates, days (none: the label's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_days: Option<u32>,
}

/// The subjectAltName of a template: patterns per name type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanSpec {
    /// dNSName entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// uniformResourceIdentifier entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uri: Vec<String>,
    /// iPAddress entries (literal addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<String>,
    /// rfc822Name entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
}

impl SanSpec {
    /// No entry at all.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.uri.is_empty() && self.ip.is_empty() && self.email.is_empty()
    }
}

/// An extra extension: its OID and its value, as DER (hex) or in one typed form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionSpec {
    /// Dotted OID.
    pub oid: String,
    /// Must be false (or absent): see [`Template::parse`].
    #[serde(default)]
    pub critical: bool,
    /// The extnValue's content, DER, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub der: Option<String>,
    /// A UTF8String.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utf8: Option<String>,
    /// An IA5String.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ia5: Option<String>,
    /// A PrintableString.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable: Option<String>,
    /// An INTEGER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer: Option<i64>,
    /// A BOOLEAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean: Option<bool>,
}

/// Why a template was refused: which template, which field, which rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    /// The template's name.
    pub template: String,
    /// The field (`subject[2]`, `san.dns[0]`, `extension[1].oid`, `keys`, ...).
    pub field: String,
    /// The rule broken (`RFC 5280 4.2.1.6`, `pkilint`, ...).
    pub rule: String,
    /// What is wrong and what to do.
    pub reason: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template {}: {}: {} ({})", self.template, self.field, self.reason, self.rule)
    }
}

impl std::error::Error for TemplateError {}

/// A subject attribute a template may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    /// countryName (PrintableString, two letters).
    C,
    /// stateOrProvinceName.
    St,
    /// localityName.
    L,
    /// organizationName.
    O,
    /// organizationalUnitName.
    Ou,
    /// commonName.
    Cn,
    /// serialNumber (PrintableString).
    SerialNumber,
}

impl Attr {
    const ALL: [Attr; 7] = [Attr::C, Attr::St, Attr::L, Attr::O, Attr::Ou, Attr::Cn, Attr::SerialNumber];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(s))
    }

    /// The attribute's short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::C => "C",
            Self::St => "ST",
            Self::L => "L",
            Self::O => "O",
            Self::Ou => "OU",
            Self::Cn => "CN",
            Self::SerialNumber => "serialNumber",
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            Self::C => rfc4519::C,
            Self::St => rfc4519::ST,
            Self::L => rfc4519::L,
            Self::O => rfc4519::O,
            Self::Ou => rfc4519::OU,
            Self::Cn => rfc4519::CN,
            Self::SerialNumber => rfc4519::SERIAL_NUMBER,
        }
    }
}

/// A placeholder's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Serial,
    Batch,
    Product,
    Organization,
    Csr(Attr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// Text with placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern(Vec<Piece>);

impl Pattern {
    fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_PATTERN {
            return Err(format!("longer than {MAX_PATTERN} bytes"));
        }
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    out.push(Piece::Lit(rest.to_string()));
                    break;
                }
                Some(i) => {
                    if i > 0 {
                        out.push(Piece::Lit(rest[..i].to_string()));
                    }
                    if rest[i..].starts_with('}') {
                        return Err("a '}' without its '{'".into());
                    }
                    let close = rest[i..].find('}').ok_or("a '{' without its '}'")? + i;
                    let var = &rest[i + 1..close];
                    out.push(Piece::Var(match var {
                        "serial" => Var::Serial,
                        "batch" => Var::Batch,
                        "product" => Var::Product,
                        "organization" => Var::Organization,
                        v => match v.strip_prefix("csr.").and_then(Attr::parse) {
                            Some(a) => Var::Csr(a),
                            None => {
                                return Err(format!(
                                    "unknown placeholder {{{v}}} (use {{serial}}, {{batch}}, {{product}}, \
                                     {{organization}} or {{csr.ATTR}} with ATTR one of C, ST, L, O, OU, CN, \
                                     serialNumber)"
                                ))
                            }
                        },
                    }));
                    rest = &rest[close + 1..];
                }
            }
        }
        if out.is_empty() {
            return Err("empty".into());
        }
        Ok(Self(out))
    }

    fn render(&self, ctx: &Context<'_>) -> Result<String, Error> {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(l) => s.push_str(l),
                Piece::Var(v) => s.push_str(&ctx.value(*v)?),
            }
        }
        Ok(s)
    }

    fn csr_attrs(&self) -> impl Iterator<Item = Attr> + '_ {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(Var::Csr(a)) => Some(*a),
            _ => None,
        })
    }
}

/// What one device's certificate is rendered from.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The authority's organisation (`{organization}`).
    pub organization: &'a str,
    /// The device serial (`{serial}`).
    pub serial: &'a DeviceSerial,
    /// Its batch, when the way in knows one (`{batch}`).
    pub batch: Option<&'a str>,
    /// Its batch's product, when known (`{product}`).
    pub product: Option<&'a str>,
    /// The request's subject (`{csr.ATTR}`).
    pub csr_subject: &'a Name,
}

impl Context<'_> {
    fn value(&self, v: Var) -> Result<String, Error> {
        match v {
            Var::Serial => Ok(self.serial.as_str().to_string()),
            Var::Organization => Ok(self.organization.to_string()),
            Var::Batch => self.batch.map(str::to_string).ok_or_else(|| {
                Error::BadName("the template needs {batch}, and this enrollment is not for a batch".into())
            }),
            Var::Product => self.product.map(str::to_string).ok_or_else(|| {
                Error::BadName("the template needs {product}, and this enrollment knows no batch product".into())
            }),
            Var::Csr(a) => {
                let vals: Vec<String> = self
                    .csr_subject
                    .0
                    .iter()
                    .flat_map(|rdn| rdn.0.iter())
                    .filter(|atv| atv.oid == a.oid())
                    .map(|atv| atv_text(atv).unwrap_or_default())
                    .collect();
                match vals.as_slice() {
                    [v] if !v.is_empty() => Ok(v.clone()),
                    [] => {
                        Err(Error::BadName(format!("the template takes {} from the request, which has none", a.name())))
                    }
                    _ => Err(Error::BadName(format!(
                        "the template takes one {} from the request, which has {} (or an unreadable one)",
                        a.name(),
                        vals.len()
                    ))),
                }
            }
        }
    }
}

/// An attribute's value as text, if it is a string type we read.
fn atv_text(atv: &x509_cert::attr::AttributeTypeAndValue) -> Option<String> {
    use der::{Tag, Tagged};
    match atv.value.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String => {
            std::str::from_utf8(atv.value.value()).ok().map(str::to_owned)
        }
        _ => None,
    }
}

/// A keyUsage bit a template may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ku {
    DigitalSignature,
    NonRepudiation,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
    EncipherOnly,
    DecipherOnly,
}

impl Ku {
    fn bit(self) -> KeyUsages {
        match self {
            Self::DigitalSignature => KeyUsages::DigitalSignature,
            Self::NonRepudiation => KeyUsages::NonRepudiation,
            Self::KeyEncipherment => KeyUsages::KeyEncipherment,
            Self::DataEncipherment => KeyUsages::DataEncipherment,
            Self::KeyAgreement => KeyUsages::KeyAgreement,
            Self::EncipherOnly => KeyUsages::EncipherOnly,
            Self::DecipherOnly => KeyUsages::DecipherOnly,
        }
    }

    /// The bits a key of type `kt` may carry, and the rule that says so.
    fn allowed_for(kt: KeyType) -> (&'static [Ku], &'static str) {
        use Ku::*;
        match kt {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => (
                &[DigitalSignature, NonRepudiation, KeyAgreement, EncipherOnly, DecipherOnly],
                "RFC 5480 3: an EC public key never enciphers keys or data",
            ),
            KeyType::Rsa(_) => (
                &[DigitalSignature, NonRepudiation, KeyEncipherment, DataEncipherment],
                "RFC 3279 2.3.1: an RSA key does not agree keys",
            ),
            // Ed25519 (RFC 8410 5) and any signature-only key type (ML-DSA: RFC 9881 5).
            _ => (&[DigitalSignature, NonRepudiation], "RFC 8410 5: a signature-only key carries only signature bits"),
        }
    }
}

/// A template, checked: what [`Template::render`] fills in.
#[derive(Clone, Debug)]
pub struct Template {
    spec: TemplateSpec,
    subject: Vec<(Attr, Pattern)>,
    san: Vec<(SanKind, Pattern)>,
    key_usage: Option<Vec<Ku>>,
    eku: Option<Vec<ObjectIdentifier>>,
    extensions: Vec<Extension>,
    keys: Vec<KeyType>,
    lifetime_secs: Option<i64>,
    builtin: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SanKind {
    Dns,
    Uri,
    Ip,
    Email,
}

/// The extensions the authority writes itself: a template's extra extension
/// may not name them (`san`, `key_usage`, `extended_key_usage` set the three
/// a template may shape).
const AUTHORITY_SET: [(ObjectIdentifier, &str); 13] = [
    (rfc5280::ID_CE_BASIC_CONSTRAINTS, "basicConstraints"),
    (rfc5280::ID_CE_KEY_USAGE, "keyUsage (use key_usage)"),
    (rfc5280::ID_CE_EXT_KEY_USAGE, "extKeyUsage (use extended_key_usage)"),
    (rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER, "subjectKeyIdentifier"),
    (rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER, "authorityKeyIdentifier"),
    (rfc5280::ID_CE_SUBJECT_ALT_NAME, "subjectAltName (use san)"),
    (rfc5280::ID_CE_CRL_DISTRIBUTION_POINTS, "cRLDistributionPoints"),
    (rfc5280::ID_PE_AUTHORITY_INFO_ACCESS, "authorityInfoAccess"),
    (rfc5280::ID_CE_NAME_CONSTRAINTS, "nameConstraints (CA certificates only)"),
    (rfc5280::ID_CE_POLICY_CONSTRAINTS, "policyConstraints (CA certificates only)"),
    (rfc5280::ID_CE_POLICY_MAPPINGS, "policyMappings (CA certificates only)"),
    (rfc5280::ID_CE_INHIBIT_ANY_POLICY, "inhibitAnyPolicy (CA certificates only)"),
    (rfc6960::ID_PKIX_OCSP_NOCHECK, "id-pkix-ocsp-nocheck (OCSP signers only)"),
];

impl Template {
    /// Check `spec` against RFC 5280 and our device profile, and parse it.
    pub fn parse(spec: TemplateSpec) -> Result<Self, TemplateError> {
        Self::parse_as(spec, false)
    }

    fn parse_as(spec: TemplateSpec, builtin: bool) -> Result<Self, TemplateError> {
        let name = spec.name.clone();
        let err = |field: String, rule: &str, reason: String| TemplateError {
            template: name.clone(),
            field,
            rule: rule.to_string(),
            reason,
        };
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            return Err(err("name".into(), "iotpki", "use 1 to 64 letters, digits, - and _".into()));
        }
        // Subject.
        if spec.subject.is_empty() {
            return Err(err(
                "subject".into(),
                "RFC 5280 4.1.2.6",
                "an empty subject needs a critical subjectAltName; a device certificate names its device".into(),
            ));
        }
        let mut subject = Vec::new();
        for (i, e) in spec.subject.iter().enumerate() {
            let field = format!("subject[{i}]");
            if i >= MAX_ENTRIES {
                return Err(err(field, "iotpki", format!("at most {MAX_ENTRIES} attributes")));
            }
            let Some((a, v)) = e.split_once('=') else {
                return Err(err(field, "RFC 5280 4.1.2.4", format!("{e:?} is not ATTR=VALUE")));
            };
            let attr = Attr::parse(a.trim()).ok_or_else(|| {
                err(
                    field.clone(),
                    "RFC 5280 4.1.2.4",
                    format!("attribute {a:?} is not one a device subject carries (C, ST, L, O, OU, CN, serialNumber)"),
                )
            })?;
            let p = Pattern::parse(v).map_err(|r| err(field.clone(), "iotpki", r))?;
            if attr == Attr::C
                && (p.0.len() != 1
                    || !matches!(&p.0[0], Piece::Lit(c) if c.len() == 2 && c.chars().all(|c| c.is_ascii_uppercase())))
            {
                return Err(err(
                    field,
                    "RFC 5280 A.1 (X520countryName)",
                    format!("C must be a two-letter ISO 3166 code written out, not {v:?}"),
                ));
            }
            subject.push((attr, p));
        }
        // subjectAltName.
        let mut san = Vec::new();
        for (kind, list, label) in [
            (SanKind::Dns, &spec.san.dns, "san.dns"),
            (SanKind::Uri, &spec.san.uri, "san.uri"),
            (SanKind::Ip, &spec.san.ip, "san.ip"),
            (SanKind::Email, &spec.san.email, "san.email"),
        ] {
            for (i, e) in list.iter().enumerate() {
                let field = format!("{label}[{i}]");
                if san.len() >= MAX_ENTRIES {
                    return Err(err(field, "iotpki", format!("at most {MAX_ENTRIES} subjectAltName entries")));
                }
                if e.trim().is_empty() {
                    return Err(err(
                        field,
                        "RFC 5280 4.2.1.6",
                        "an empty name: subjectAltName entries must not be empty".into(),
                    ));
                }
                let p = Pattern::parse(e).map_err(|r| err(field.clone(), "iotpki", r))?;
                if kind == SanKind::Ip && (p.0.len() != 1 || e.parse::<IpAddr>().is_err()) {
                    return Err(err(field, "RFC 5280 4.2.1.6", format!("{e:?} is not a literal IP address")));
                }
                // Literal parts are checked now: the whole name again at each issuance.
                for piece in &p.0 {
                    if let Piece::Lit(l) = piece {
                        if let Some(why) = san_literal_problem(kind, l) {
                            return Err(err(field, "RFC 5280 4.2.1.6", why));
                        }
                    }
                }
                san.push((kind, p));
            }
        }
        // keyUsage.
        let key_usage = match &spec.key_usage {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(err(
                    "key_usage".into(),
                    "RFC 5280 4.2.1.3",
                    "at least one bit must be set (omit key_usage for digitalSignature)".into(),
                ))
            }
            Some(list) => {
                let mut out = Vec::new();
                for (i, k) in list.iter().enumerate() {
                    let field = format!("key_usage[{i}]");
                    let ku = match k.as_str() {
                        "digitalSignature" => Ku::DigitalSignature,
                        "nonRepudiation" | "contentCommitment" => Ku::NonRepudiation,
                        "keyEncipherment" => Ku::KeyEncipherment,
                        "dataEncipherment" => Ku::DataEncipherment,
                        "keyAgreement" => Ku::KeyAgreement,
                        "encipherOnly" => Ku::EncipherOnly,
                        "decipherOnly" => Ku::DecipherOnly,
                        "keyCertSign" | "cRLSign" => {
                            return Err(err(
                                field,
                                "RFC 5280 4.2.1.3",
                                format!(
                                "{k} is for CA certificates (basicConstraints cA), and a template makes end entities"
                            ),
                            ))
                        }
                        other => return Err(err(field, "RFC 5280 4.2.1.3", format!("unknown keyUsage bit {other:?}"))),
                    };
                    if out.contains(&ku) {
                        return Err(err(field, "iotpki", format!("{k} twice")));
                    }
                    out.push(ku);
                }
                if (out.contains(&Ku::EncipherOnly) || out.contains(&Ku::DecipherOnly))
                    && !out.contains(&Ku::KeyAgreement)
                {
                    return Err(err(
                        "key_usage".into(),
                        "RFC 5280 4.2.1.3",
                        "encipherOnly and decipherOnly mean something only with keyAgreement".into(),
                    ));
                }
                Some(out)
            }
        };
        // extKeyUsage.
        let eku = match &spec.extended_key_usage {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(err(
                    "extended_key_usage".into(),
                    "RFC 5280 4.2.1.12",
                    "at least one purpose (omit extended_key_usage for clientAuth)".into(),
                ))
            }
            Some(list) => {
                let mut out = Vec::new();
                for (i, k) in list.iter().enumerate() {
                    let field = format!("extended_key_usage[{i}]");
                    let oid = match k.as_str() {
                        "clientAuth" => rfc5280::ID_KP_CLIENT_AUTH,
                        "serverAuth" => rfc5280::ID_KP_SERVER_AUTH,
                        "codeSigning" => rfc5280::ID_KP_CODE_SIGNING,
                        "emailProtection" => rfc5280::ID_KP_EMAIL_PROTECTION,
                        "timeStamping" => rfc5280::ID_KP_TIME_STAMPING,
                        "OCSPSigning" => rfc5280::ID_KP_OCSP_SIGNING,
                        other => ObjectIdentifier::new(other).map_err(|_| {
                            err(
                                field.clone(),
                                "RFC 5280 4.2.1.12",
                                format!("{other:?} is no purpose name nor dotted OID"),
                            )
                        })?,
                    };
                    if oid == rfc5280::ID_KP_OCSP_SIGNING {
                        return Err(err(
                            field,
                            "RFC 6960 4.2.2.2",
                            "OCSPSigning is for the CA's delegated responders, which the authority issues itself"
                                .into(),
                        ));
                    }
                    if oid == profile::ADMIN_ROLE {
                        return Err(err(
                            field,
                            "iotpki admin role",
                            "id-kp-cmcRA marks admin certificates; a device never carries it".into(),
                        ));
                    }
                    if oid == ObjectIdentifier::new_unwrap("2.5.29.37.0") {
                        return Err(err(
                            field,
                            "RFC 5280 4.2.1.12",
                            "anyExtendedKeyUsage lets the key do anything: name the purposes".into(),
                        ));
                    }
                    if out.contains(&oid) {
                        return Err(err(field, "RFC 5280 4.2.1.12", format!("{k} twice")));
                    }
                    out.push(oid);
                }
                Some(out)
            }
        };
        // Extra extensions.
        let mut extensions: Vec<Extension> = Vec::new();
        for (i, x) in spec.extension.iter().enumerate() {
            let field = format!("extension[{i}]");
            if i >= MAX_ENTRIES {
                return Err(err(field, "iotpki", format!("at most {MAX_ENTRIES} extra extensions")));
            }
            let oid = ObjectIdentifier::new(&x.oid).map_err(|e| {
                err(format!("{field}.oid"), "RFC 5280 4.1", format!("{:?} is no dotted OID: {e}", x.oid))
            })?;
            if let Some((_, what)) = AUTHORITY_SET.iter().find(|(o, _)| *o == oid) {
                return Err(err(
                    format!("{field}.oid"),
                    "RFC 5280 4.2",
                    format!("{oid} is {what}, which the authority sets: it would appear twice or clash"),
                ));
            }
            if extensions.iter().any(|e| e.extn_id == oid) {
                return Err(err(
                    format!("{field}.oid"),
                    "RFC 5280 4.2",
                    format!("{oid} twice: a certificate must not include more than one instance of an extension"),
                ));
            }
            if x.critical {
                return Err(err(
                    format!("{field}.critical"),
                    "RFC 5280 4.2",
                    "a peer that does not recognise a critical extension must reject the certificate: a template's \
                     own extensions are non-critical"
                        .into(),
                ));
            }
            let value = extension_value(x).map_err(|r| err(field.clone(), "RFC 5280 4.1 (extnValue)", r))?;
            extensions.push(Extension {
                extn_id: oid,
                critical: false,
                extn_value: OctetString::new(value).map_err(|e| err(field, "RFC 5280 4.1", e.to_string()))?,
            });
        }
        // Key types.
        if spec.keys.is_empty() && !builtin {
            return Err(err(
                "keys".into(),
                "iotpki",
                "name the key types a request may carry (p256, p384, ed25519, ...)".into(),
            ));
        }
        let mut keys = Vec::new();
        for (i, k) in spec.keys.iter().enumerate() {
            let kt = KeyType::from_policy_name(k).map_err(|e| err(format!("keys[{i}]"), "iotpki", e.to_string()))?;
            if keys.contains(&kt) {
                return Err(err(format!("keys[{i}]"), "iotpki", format!("{kt} twice")));
            }
            if let Some(ku) = &key_usage {
                let (allowed, rule) = Ku::allowed_for(kt);
                if let Some(bad) = ku.iter().find(|b| !allowed.contains(b)) {
                    return Err(err(
                        "key_usage".into(),
                        rule,
                        format!("{bad:?} is inconsistent with key type {kt}, which the template allows"),
                    ));
                }
            }
            keys.push(kt);
        }
        let lifetime_secs = match spec.lifetime_days {
            None => None,
            Some(d) if d == 0 || d > MAX_LIFETIME_DAYS => {
                return Err(err(
                    "lifetime_days".into(),
                    "RFC 5280 4.1.2.5",
                    format!("{d}: give 1 to {MAX_LIFETIME_DAYS} days (omit it for the label's validity)"),
                ))
            }
            Some(d) => Some(i64::from(d) * 86_400),
        };
        Ok(Self { spec, subject, san, key_usage, eku, extensions, keys, lifetime_secs, builtin })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What the config says (for `iotpki template show`).
    pub fn spec(&self) -> &TemplateSpec {
        &self.spec
    }

    /// Whether it is one of the [`builtins`].
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The key types it allows (empty: the label's, for a built-in template).
    pub fn keys(&self) -> &[KeyType] {
        &self.keys
    }

    /// Its lifetime, seconds (`None`: the label's).
    pub fn lifetime_secs(&self) -> Option<i64> {
        self.lifetime_secs
    }

    /// The request attributes it takes (`{csr.ATTR}`).
    fn csr_attrs(&self) -> Vec<Attr> {
        let mut v: Vec<Attr> = Vec::new();
        for a in self.subject.iter().map(|(_, p)| p).chain(self.san.iter().map(|(_, p)| p)).flat_map(Pattern::csr_attrs)
        {
            if !v.contains(&a) {
                v.push(a);
            }
        }
        v
    }

    /// The key type policy: `kt` must be one the template allows.
    pub fn check_key(&self, kt: KeyType) -> Result<(), Error> {
        if self.keys.is_empty() || self.keys.contains(&kt) {
            return Ok(());
        }
        Err(Error::KeyNotAllowed {
            offered: kt.to_string(),
            allowed: format!(
                "{} (template {})",
                self.keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
                self.name()
            ),
        })
    }

    /// The subject and the extensions of one device's certificate.
    pub fn render(&self, ctx: &Context<'_>) -> Result<Rendered, Error> {
        let bad = |e: Error| match e {
            Error::BadName(m) => Error::BadName(format!("template {}: {m}", self.name())),
            other => other,
        };
        let mut nb = NameBuilder::default();
        for (attr, p) in &self.subject {
            let v = p.render(ctx).map_err(bad)?;
            nb = match attr {
                Attr::C => nb.printable_attribute(attr.oid(), &v),
                Attr::SerialNumber => DeviceSerial::parse(&v).and_then(|s| nb.serial_number(&s)),
                Attr::O => nb.organization(&v),
                Attr::Ou => nb.organizational_unit(&v),
                Attr::Cn => nb.common_name(&v),
                Attr::St | Attr::L => nb.utf8_attribute(attr.oid(), &v),
            }
            .map_err(|e| bad(Error::BadName(format!("{}={v:?}: {e}", attr.name()))))?;
        }
        let subject = nb.build();
        let mut extensions = Vec::new();
        let mut names = Vec::new();
        for (kind, p) in &self.san {
            let v = p.render(ctx).map_err(bad)?;
            if let Some(why) = san_problem(*kind, &v) {
                return Err(bad(Error::BadName(why)));
            }
            let ia5 = |s: &str| Ia5String::new(s).map_err(|e| Error::BadName(format!("{s:?}: {e}")));
            names.push(match kind {
                SanKind::Dns => GeneralName::DnsName(ia5(&v)?),
                SanKind::Uri => GeneralName::UniformResourceIdentifier(ia5(&v)?),
                SanKind::Email => GeneralName::Rfc822Name(ia5(&v)?),
                SanKind::Ip => {
                    let ip: IpAddr = v.parse().map_err(|_| Error::BadName(format!("{v:?} is not an IP address")))?;
                    let octets = match ip {
                        IpAddr::V4(a) => a.octets().to_vec(),
                        IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    GeneralName::IpAddress(OctetString::new(octets).map_err(|e| Error::der("IP SAN", e))?)
                }
            });
        }
        if !names.is_empty() {
            // The subject is never empty (parse), so the SAN is not critical (RFC 5280 4.2.1.6).
            extensions.push(der_ext(&SubjectAltName(names), false)?);
        }
        if let Some(ku) = &self.key_usage {
            let mut acc: Option<KeyUsage> = None;
            for b in ku {
                acc = Some(match acc {
                    None => KeyUsage(b.bit().into()),
                    Some(k) => KeyUsage(k.0 | b.bit()),
                });
            }
            if let Some(k) = acc {
                extensions.push(der_ext(&k, true)?);
            }
        }
        if let Some(eku) = &self.eku {
            extensions.push(der_ext(&ExtendedKeyUsage(eku.clone()), false)?);
        }
        extensions.extend(self.extensions.iter().cloned());
        Ok(Rendered { subject, extensions })
    }

    /// Refuse a request that asks for what the template does not give: a
    /// subject attribute it does not take (other than the serialNumber and a
    /// CN naming the device, which every device sends), or a subjectAltName
    /// entry it would not write.
    pub fn check_request(
        &self,
        csr_subject: &Name,
        requested_san: Option<&SubjectAltName>,
        device: &DeviceSerial,
        rendered: &Rendered,
    ) -> Result<(), Error> {
        let takes = self.csr_attrs();
        for atv in csr_subject.0.iter().flat_map(|r| r.0.iter()) {
            if atv.oid == rfc4519::SERIAL_NUMBER || takes.iter().any(|a| a.oid() == atv.oid) {
                continue;
            }
            if atv.oid == rfc4519::CN && atv_text(atv).as_deref() == Some(device.as_str()) {
                continue;
            }
            let what =
                Attr::ALL.iter().find(|a| a.oid() == atv.oid).map_or(atv.oid.to_string(), |a| a.name().to_string());
            return Err(Error::BadName(format!(
                "template {} does not let a request set {what} in its subject (it takes {} from the request)",
                self.name(),
                if takes.is_empty() {
                    "nothing".to_string()
                } else {
                    takes.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
                }
            )));
        }
        if let Some(req) = requested_san {
            let given = rendered
                .extensions
                .iter()
                .find(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_ALT_NAME)
                .and_then(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
                .map(|s| s.0)
                .unwrap_or_default();
            if let Some(n) = req.0.iter().find(|n| !given.contains(n)) {
                return Err(Error::BadName(format!(
                    "template {} does not give the subjectAltName entry {n:?} the request asks for",
                    self.name()
                )));
            }
        }
        Ok(())
    }

    /// Issue a sample certificate from the template for a throwaway key of
    /// type `kt` under `issuer` (whose name and key type the real CA's are),
    /// through the profile's lint, then decode it again as a peer would.
    pub fn sample(
        &self,
        organization: &str,
        issuer: &Issuer<'_>,
        kt: KeyType,
        now: i64,
    ) -> Result<Issued, TemplateError> {
        let fail = |field: &str, rule: &str, reason: String| TemplateError {
            template: self.name().to_string(),
            field: field.to_string(),
            rule: rule.to_string(),
            reason,
        };
        let serial = DeviceSerial::parse("SAMPLE-0001").map_err(|e| fail("sample", "iotpki", e.to_string()))?;
        let mut nb = NameBuilder::default();
        for a in self.csr_attrs() {
            let v = if a == Attr::C { "XX" } else { "sample" };
            nb = match a {
                Attr::C => nb.printable_attribute(a.oid(), v),
                Attr::SerialNumber => nb.serial_number(&serial),
                _ => nb.utf8_attribute(a.oid(), v),
            }
            .map_err(|e| fail("sample", "iotpki", e.to_string()))?;
        }
        let csr_subject = nb.build();
        let ctx = Context {
            organization,
            serial: &serial,
            batch: Some("SAMPLE-BATCH"),
            product: Some("sample-product"),
            csr_subject: &csr_subject,
        };
        let r = self.render(&ctx).map_err(|e| fail("subject/san", "RFC 5280 4.1.2.6 / 4.2.1.6", e.to_string()))?;
        let spki =
            spki::SubjectPublicKeyInfoOwned::from_der(&sample_public_key(kt).map_err(|e| fail("keys", "iotpki", e))?)
                .map_err(|e| fail("keys", "iotpki", e.to_string()))?;
        let (sn, _) = crate::serial::system_random_serial(now).map_err(|e| fail("sample", "iotpki", e.to_string()))?;
        let params = CertParams {
            profile: Profile::Device,
            serial: sn,
            subject: r.subject,
            spki,
            not_before: now,
            not_after: now + self.lifetime_secs.unwrap_or(365 * 86_400),
            dns_names: vec![],
            ip_addrs: vec![],
            permitted_subtree: None,
        };
        let issued = profile::issue_templated(&params, issuer, None, &r.extensions)
            .map_err(|e| fail(&format!("sample certificate for a {kt} key"), "RFC 5280 (lint)", e.to_string()))?;
        // Decode what a peer decodes: the certificate and each extension we shape.
        let cert = x509_cert::Certificate::from_der(&issued.der)
            .map_err(|e| fail("sample", "RFC 5280 4.1", format!("the sample does not decode: {e}")))?;
        for e in cert.tbs_certificate.extensions.as_deref().unwrap_or_default() {
            let ok = match e.extn_id {
                o if o == rfc5280::ID_CE_SUBJECT_ALT_NAME => SubjectAltName::from_der(e.extn_value.as_bytes()).is_ok(),
                o if o == rfc5280::ID_CE_KEY_USAGE => KeyUsage::from_der(e.extn_value.as_bytes()).is_ok(),
                o if o == rfc5280::ID_CE_EXT_KEY_USAGE => ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).is_ok(),
                _ => true,
            };
            if !ok {
                return Err(fail("sample", "RFC 5280 4.2", format!("extension {} does not decode", e.extn_id)));
            }
        }
        Ok(issued)
    }
}

/// A template filled in for one device.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The subject.
    pub subject: Name,
    /// The extensions written over the device profile's ([`profile::issue_templated`]).
    pub extensions: Vec<Extension>,
}

fn der_ext<T: Encode + AssociatedOid>(v: &T, critical: bool) -> Result<Extension, Error> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(v.to_der().map_err(|e| Error::der("extension", e))?)
            .map_err(|e| Error::der("extension", e))?,
    })
}

/// The DER of an extra extension's value: exactly one form given, and DER
/// that decodes as one whole TLV.
fn extension_value(x: &ExtensionSpec) -> Result<Vec<u8>, String> {
    let forms = [
        x.der.is_some(),
        x.utf8.is_some(),
        x.ia5.is_some(),
        x.printable.is_some(),
        x.integer.is_some(),
        x.boolean.is_some(),
    ];
    if forms.iter().filter(|f| **f).count() != 1 {
        return Err("give exactly one of der, utf8, ia5, printable, integer, boolean".into());
    }
    let enc = |r: der::Result<Vec<u8>>| r.map_err(|e| e.to_string());
    let v = if let Some(h) = &x.der {
        let bytes = hex::decode(h.trim()).map_err(|e| format!("der is not hex: {e}"))?;
        der::Any::from_der(&bytes).map_err(|e| format!("der is not one whole DER value: {e}"))?;
        bytes
    } else if let Some(s) = &x.utf8 {
        enc(Utf8StringRef::new(s).and_then(|v| v.to_der()))?
    } else if let Some(s) = &x.ia5 {
        enc(Ia5String::new(s).and_then(|v| v.to_der()))?
    } else if let Some(s) = &x.printable {
        enc(PrintableStringRef::new(s).and_then(|v| v.to_der()))?
    } else if let Some(i) = x.integer {
        enc(i.to_der())?
    } else if let Some(b) = x.boolean {
        enc(b.to_der())?
    } else {
        return Err("no value".into());
    };
    if v.len() > MAX_EXTENSION_DER {
        return Err(format!("{} bytes is over the {MAX_EXTENSION_DER}-byte limit", v.len()));
    }
    Ok(v)
}

/// What is wrong with a literal part of a SAN pattern, if anything.
fn san_literal_problem(kind: SanKind, l: &str) -> Option<String> {
    if !l.is_ascii() || l.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("{l:?}: subjectAltName names are IA5 (ASCII) without spaces"));
    }
    match kind {
        SanKind::Dns
            if l.contains("..")
                || l.contains('*')
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)) =>
        {
            Some(format!("{l:?}: a dNSName is letters, digits, - and . in non-empty labels (no wildcard)"))
        }
        _ => None,
    }
}

/// What is wrong with a rendered SAN entry, if anything (RFC 5280 4.2.1.6).
fn san_problem(kind: SanKind, v: &str) -> Option<String> {
    if let Some(p) = san_literal_problem(kind, v) {
        return Some(p);
    }
    match kind {
        SanKind::Dns => {
            if v.is_empty() || v.len() > 253 {
                return Some(format!("dNSName {v:?}: 1 to 253 characters"));
            }
            for label in v.split('.') {
                if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
                    return Some(format!(
                        "dNSName {v:?}: label {label:?} must be 1 to 63 letters, digits and -, not starting or ending with -"
                    ));
                }
            }
            None
        }
        SanKind::Uri => match v.split_once(':') {
            Some((scheme, rest))
                if !scheme.is_empty()
                    && !rest.is_empty()
                    && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                None
            }
            _ => Some(format!("uniformResourceIdentifier {v:?}: must be an absolute URI with a scheme")),
        },
        SanKind::Email => match v.split_once('@') {
            Some((l, d)) if !l.is_empty() && !d.is_empty() && !d.contains('@') => None,
            _ => Some(format!("rfc822Name {v:?}: must be local@domain")),
        },
        SanKind::Ip => v.parse::<IpAddr>().err().map(|_| format!("iPAddress {v:?} is not an address")),
    }
}

/// Check a config's templates (`[[template]]`), each with [`Template::parse`],
/// and that no two (nor one and a built-in template) share a name.
pub fn parse_specs(specs: Vec<TemplateSpec>) -> Result<Vec<Template>, TemplateError> {
    let mut out: Vec<Template> = Vec::new();
    for s in specs {
        let t = Template::parse(s)?;
        if out.iter().any(|o| o.name() == t.name()) || builtins().iter().any(|b| b.name() == t.name()) {
            return Err(TemplateError {
                template: t.name().to_string(),
                field: "name".into(),
                rule: "iotpki".into(),
                reason: "another template (or a built-in one) has this name".into(),
            });
        }
        out.push(t);
    }
    Ok(out)
}

/// A public key of type `kt` for a sample certificate (DER SPKI): a fresh
/// throwaway key, or for RSA (which the authority never makes: devices bring
/// their own) a fixed public key of that size, whose private half was
/// discarded when it was made (`openssl genrsa`), checked here to be of that size.
fn sample_public_key(kt: KeyType) -> Result<Vec<u8>, String> {
    let der: &[u8] = match kt {
        KeyType::Rsa(2048) => include_bytes!("template/sample-rsa-2048.spki.der"),
        KeyType::Rsa(3072) => include_bytes!("template/sample-rsa-3072.spki.der"),
        KeyType::Rsa(bits) => return Err(format!("no RSA key of {bits} bits for samples")),
        _ => {
            let key = crate::keys::SoftKey::generate(kt).map_err(|e| e.to_string())?;
            return Ok(crate::keys::Signer::public_key_der(&key).to_vec());
        }
    };
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| e.to_string())?;
    match KeyType::of_spki(&spki) {
        Ok(t) if t == kt => Ok(der.to_vec()),
        other => Err(format!("the sample key for {kt} is {other:?}")),
    }
}

/// The built-in device subjects, as templates: `device` (a certificate from
/// a token, commissioning or renewal, and an online birth) and
/// `device-batch` (an offline birth under a station's delegated CA). Their
/// key types and lifetime are the label's.
pub fn builtins() -> Vec<Template> {
    let t = |name: &str, subject: &[&str]| TemplateSpec {
        name: name.into(),
        subject: subject.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    [
        t("device", &["O={organization}", "CN={serial}", "serialNumber={serial}"]),
        t("device-batch", &["O={organization}", "OU={batch}", "CN={serial}", "serialNumber={serial}"]),
    ]
    .into_iter()
    // Invariant: these specs are constants that parse (tested in `builtins_parse`).
    .filter_map(|s| Template::parse_as(s, true).ok())
    .collect()
}

#[cfg(test)]
mod tests;
