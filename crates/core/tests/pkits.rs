//! NIST PKITS (Public Key Interoperability Test Suite, version 1.0.1 of the
//! test descriptions) run over `iotpki_core::chain`.
//!
//! The certificates ship in the `cryptography-vectors` package on PyPI;
//! scripts/test installs it and sets `IOTPKI_PKITS_DIR` to its
//! `x509/PKITS_data` directory. Every case is named by its end-entity
//! certificate and is either HANDLED below, with the outcome the PKITS
//! description gives (its section number alongside), or listed in
//! `pkits_excluded.txt` with the reason. The test fails when a handled case
//! gives the other answer, or when a case is in neither list (or both).
//!
//! Paths are built from a pool of every CA certificate of the suite (not the
//! hand-picked path of each case), so path building and backtracking are
//! exercised too. PKITS defaults: trust anchor `TrustAnchorRootCertificate`,
//! validation time inside the certificates' validity (here 2020-01-01), no
//! purpose (the suite's end entities carry no extendedKeyUsage).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use iotpki_core::chain::{self, Policy, Purpose};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Valid,
    Invalid,
}
use Expect::{Invalid, Valid};

/// 2020-01-01T00:00:00Z.
const NOW: i64 = 1_577_836_800;

/// The cases handled: (PKITS section, end-entity file stem, expected outcome).
const HANDLED: &[(&str, &str, Expect)] = &[
    ("4.1.1", "ValidCertificatePathTest1EE", Valid),
    ("4.1.2", "InvalidCASignatureTest2EE", Invalid),
    ("4.1.3", "InvalidEESignatureTest3EE", Invalid),
    ("4.2.1", "InvalidCAnotBeforeDateTest1EE", Invalid),
    ("4.2.2", "InvalidEEnotBeforeDateTest2EE", Invalid),
    ("4.2.4", "ValidGeneralizedTimenotBeforeDateTest4EE", Valid),
    ("4.2.5", "InvalidCAnotAfterDateTest5EE", Invalid),
    ("4.2.6", "InvalidEEnotAfterDateTest6EE", Invalid),
    ("4.2.7", "Invalidpre2000UTCEEnotAfterDateTest7EE", Invalid),
    ("4.2.8", "ValidGeneralizedTimenotAfterDateTest8EE", Valid),
    ("4.3.1", "InvalidNameChainingTest1EE", Invalid),
    ("4.3.2", "InvalidNameChainingOrderTest2EE", Invalid),
    ("4.3.3", "ValidNameChainingWhitespaceTest3EE", Valid),
    ("4.3.4", "ValidNameChainingWhitespaceTest4EE", Valid),
    ("4.3.5", "ValidNameChainingCapitalizationTest5EE", Valid),
    ("4.3.6", "ValidNameUIDsTest6EE", Valid),
    ("4.3.7", "ValidRFC3280MandatoryAttributeTypesTest7EE", Valid),
    ("4.3.8", "ValidRFC3280OptionalAttributeTypesTest8EE", Valid),
    ("4.3.9", "ValidUTF8StringEncodedNamesTest9EE", Valid),
    ("4.3.10", "ValidRolloverfromPrintableStringtoUTF8StringTest10EE", Valid),
    ("4.3.11", "ValidUTF8StringCaseInsensitiveMatchTest11EE", Valid),
    ("4.5.1", "ValidBasicSelfIssuedOldWithNewTest1EE", Valid),
    ("4.5.3", "ValidBasicSelfIssuedNewWithOldTest3EE", Valid),
    ("4.5.4", "ValidBasicSelfIssuedNewWithOldTest4EE", Valid),
    ("4.5.6", "ValidBasicSelfIssuedCRLSigningKeyTest6EE", Valid),
    ("4.5.8", "InvalidBasicSelfIssuedCRLSigningKeyTest8EE", Invalid),
    ("4.6.1", "InvalidMissingbasicConstraintsTest1EE", Invalid),
    ("4.6.2", "InvalidcAFalseTest2EE", Invalid),
    ("4.6.3", "InvalidcAFalseTest3EE", Invalid),
    ("4.6.4", "ValidbasicConstraintsNotCriticalTest4EE", Valid),
    ("4.6.5", "InvalidpathLenConstraintTest5EE", Invalid),
    ("4.6.6", "InvalidpathLenConstraintTest6EE", Invalid),
    ("4.6.7", "ValidpathLenConstraintTest7EE", Valid),
    ("4.6.9", "InvalidpathLenConstraintTest9EE", Invalid),
    ("4.6.10", "InvalidpathLenConstraintTest10EE", Invalid),
    ("4.6.11", "InvalidpathLenConstraintTest11EE", Invalid),
    ("4.6.12", "InvalidpathLenConstraintTest12EE", Invalid),
    ("4.6.13", "ValidpathLenConstraintTest13EE", Valid),
    ("4.6.15", "ValidSelfIssuedpathLenConstraintTest15EE", Valid),
    ("4.6.16", "InvalidSelfIssuedpathLenConstraintTest16EE", Invalid),
    ("4.6.17", "ValidSelfIssuedpathLenConstraintTest17EE", Valid),
    ("4.7.1", "InvalidkeyUsageCriticalkeyCertSignFalseTest1EE", Invalid),
    ("4.7.2", "InvalidkeyUsageNotCriticalkeyCertSignFalseTest2EE", Invalid),
    ("4.7.3", "ValidkeyUsageNotCriticalTest3EE", Valid),
    ("4.13.1", "ValidDNnameConstraintsTest1EE", Valid),
    ("4.13.2", "InvalidDNnameConstraintsTest2EE", Invalid),
    ("4.13.3", "InvalidDNnameConstraintsTest3EE", Invalid),
    ("4.13.4", "ValidDNnameConstraintsTest4EE", Valid),
    ("4.13.5", "ValidDNnameConstraintsTest5EE", Valid),
    ("4.13.6", "ValidDNnameConstraintsTest6EE", Valid),
    ("4.13.7", "InvalidDNnameConstraintsTest7EE", Invalid),
    ("4.13.8", "InvalidDNnameConstraintsTest8EE", Invalid),
    ("4.13.9", "InvalidDNnameConstraintsTest9EE", Invalid),
    ("4.13.10", "InvalidDNnameConstraintsTest10EE", Invalid),
    ("4.13.11", "ValidDNnameConstraintsTest11EE", Valid),
    ("4.13.12", "InvalidDNnameConstraintsTest12EE", Invalid),
    ("4.13.13", "InvalidDNnameConstraintsTest13EE", Invalid),
    ("4.13.14", "ValidDNnameConstraintsTest14EE", Valid),
    ("4.13.15", "InvalidDNnameConstraintsTest15EE", Invalid),
    ("4.13.16", "InvalidDNnameConstraintsTest16EE", Invalid),
    ("4.13.17", "InvalidDNnameConstraintsTest17EE", Invalid),
    ("4.13.18", "ValidDNnameConstraintsTest18EE", Valid),
    ("4.13.19", "ValidDNnameConstraintsTest19EE", Valid),
    ("4.13.20", "InvalidDNnameConstraintsTest20EE", Invalid),
    ("4.13.21", "ValidRFC822nameConstraintsTest21EE", Valid),
    ("4.13.22", "InvalidRFC822nameConstraintsTest22EE", Invalid),
    ("4.13.23", "ValidRFC822nameConstraintsTest23EE", Valid),
    ("4.13.24", "InvalidRFC822nameConstraintsTest24EE", Invalid),
    ("4.13.25", "ValidRFC822nameConstraintsTest25EE", Valid),
    ("4.13.26", "InvalidRFC822nameConstraintsTest26EE", Invalid),
    ("4.13.27", "ValidDNandRFC822nameConstraintsTest27EE", Valid),
    ("4.13.28", "InvalidDNandRFC822nameConstraintsTest28EE", Invalid),
    ("4.13.29", "InvalidDNandRFC822nameConstraintsTest29EE", Invalid),
    ("4.13.30", "ValidDNSnameConstraintsTest30EE", Valid),
    ("4.13.31", "InvalidDNSnameConstraintsTest31EE", Invalid),
    ("4.13.32", "ValidDNSnameConstraintsTest32EE", Valid),
    ("4.13.33", "InvalidDNSnameConstraintsTest33EE", Invalid),
    ("4.13.34", "ValidURInameConstraintsTest34EE", Valid),
    ("4.13.35", "InvalidURInameConstraintsTest35EE", Invalid),
    ("4.13.36", "ValidURInameConstraintsTest36EE", Valid),
    ("4.13.37", "InvalidURInameConstraintsTest37EE", Invalid),
    ("4.13.38", "InvalidDNSnameConstraintsTest38EE", Invalid),
    ("4.16.1", "ValidUnknownNotCriticalCertificateExtensionTest1EE", Valid),
    ("4.16.2", "InvalidUnknownCriticalCertificateExtensionTest2EE", Invalid),
];

fn data_dir() -> Option<PathBuf> {
    match std::env::var_os("IOTPKI_PKITS_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            eprintln!(
                "\n\n*** SKIPPED: NIST PKITS not run: IOTPKI_PKITS_DIR is unset. scripts/test installs \
                 cryptography-vectors and sets it (or point it at .../cryptography_vectors/x509/PKITS_data). ***\n"
            );
            None
        }
    }
}

#[test]
fn nist_pkits_every_case_is_handled_correctly_or_excluded_with_a_reason() {
    let Some(dir) = data_dir() else { return };
    let certs = dir.join("certs");
    let read = |stem: &str| std::fs::read(certs.join(format!("{stem}.crt"))).unwrap_or_else(|e| panic!("{stem}: {e}"));
    let anchor = read("TrustAnchorRootCertificate");
    let mut ee = BTreeSet::new();
    let mut pool = Vec::new();
    for entry in std::fs::read_dir(&certs).expect("PKITS certs directory") {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".crt") else { continue };
        if stem.ends_with("EE") {
            ee.insert(stem.to_string());
        } else if stem != "TrustAnchorRootCertificate" {
            pool.push(read(stem));
        }
    }
    assert!(ee.len() > 200 && pool.len() > 150, "the PKITS data looks incomplete: {dir:?}");
    pool.sort();

    let excluded_text = include_str!("pkits_excluded.txt");
    let mut excluded = BTreeMap::new();
    for line in excluded_text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let mut it = line.splitn(3, ' ');
        let (sec, stem, why) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap_or(""));
        assert!(!why.trim().is_empty(), "excluded case {sec} {stem} gives no reason");
        assert!(excluded.insert(stem.to_string(), sec.to_string()).is_none(), "{stem} excluded twice");
    }
    let handled: BTreeMap<_, _> = HANDLED.iter().map(|(sec, stem, e)| (stem.to_string(), (*sec, *e))).collect();
    assert_eq!(handled.len(), HANDLED.len(), "a case is handled twice");

    let mut problems = Vec::new();
    for stem in &ee {
        match (handled.contains_key(stem), excluded.contains_key(stem)) {
            (true, true) => problems.push(format!("{stem}: both handled and excluded")),
            (false, false) => problems.push(format!("{stem}: neither handled nor excluded")),
            _ => {}
        }
    }
    for stem in handled.keys().chain(excluded.keys()) {
        if !ee.contains(stem) {
            problems.push(format!("{stem}: listed but not in the PKITS data"));
        }
    }
    let policy = Policy::new(Purpose::AnyPurpose);
    let mut passed = 0;
    for (sec, stem, expect) in HANDLED {
        let got = chain::verify_with(&read(stem), &pool, &anchor, NOW, &policy);
        match (expect, &got) {
            (Valid, Ok(())) | (Invalid, Err(_)) => passed += 1,
            (Valid, Err(e)) => problems.push(format!("{sec} {stem}: valid per PKITS, refused: {e}")),
            (Invalid, Ok(())) => problems.push(format!("{sec} {stem}: invalid per PKITS, accepted")),
        }
        if let Err(e) = &got {
            eprintln!("{sec} {stem}: refused: {e}");
        }
    }
    eprintln!(
        "NIST PKITS: {passed} of {} handled cases give the PKITS answer; {} excluded (pkits_excluded.txt); {} cases in all",
        HANDLED.len(),
        excluded.len(),
        ee.len()
    );
    assert!(problems.is_empty(), "PKITS:\n{}", problems.join("\n"));
}
