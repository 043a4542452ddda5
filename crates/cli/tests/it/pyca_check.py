"""pyca/cryptography (OpenSSL's ML-DSA; a peer we did not write) checks our
RFC 9881 certificates, CRLs and OCSP answers (crates/cli/tests/it/mldsa.rs).

  pyca_check.py chain ROOT LEAF_OR_CA...   each certificate (PEM) is directly issued
                                           by the one before it; the root by itself
  pyca_check.py crl CRL_DER ISSUER SERIAL  the CRL's signature verifies with the
                                           issuer's key and it lists SERIAL (hex)
  pyca_check.py ocsp RESP_DER ISSUER       the answer's signature verifies with its
                                           responder's key (the one it carries, itself
                                           issued by ISSUER, or ISSUER's)
  pyca_check.py bundle FILE SPKI_DER...    every COSE signature of a trust bundle
                                           (#6.98 COSE_Sign) verifies with the signer
                                           key whose kid (SHA-256 of the SPKI) it names;
                                           the COSE structures decoded with cbor2

Prints one line per object checked ("KEYCLASS SIGALG-OID subject"); exits 1 with
the reason on the first failure.
"""

import sys

import cryptography
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp


def load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def der(path):
    with open(path, "rb") as f:
        return f.read()


def describe(cert):
    return f"{type(cert.public_key()).__name__} {cert.signature_algorithm_oid.dotted_string} {cert.subject.rfc4514_string()}"


def main(argv):
    mode = argv[1]
    if mode == "chain":
        certs = [load(p) for p in argv[2:]]
        certs[0].verify_directly_issued_by(certs[0])
        print(describe(certs[0]))
        for issuer, cert in zip(certs, certs[1:]):
            cert.verify_directly_issued_by(issuer)
            print(describe(cert))
    elif mode == "crl":
        crl = x509.load_der_x509_crl(der(argv[2]))
        issuer = load(argv[3])
        if not crl.is_signature_valid(issuer.public_key()):
            raise SystemExit("the CRL's signature does not verify")
        serial = int(argv[4], 16)
        if crl.get_revoked_certificate_by_serial_number(serial) is None:
            raise SystemExit(f"serial {argv[4]} is not on the CRL")
        print(f"CRL {crl.signature_algorithm_oid.dotted_string} lists {argv[4]}")
    elif mode == "ocsp":
        resp = ocsp.load_der_ocsp_response(der(argv[2]))
        issuer = load(argv[3])
        signer = issuer
        if resp.certificates:
            signer = resp.certificates[0]
            signer.verify_directly_issued_by(issuer)
        key = signer.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
        else:  # ML-DSA, Ed25519: the message itself
            key.verify(resp.signature, resp.tbs_response_bytes)
        print(f"OCSP {resp.signature_algorithm_oid.dotted_string} {resp.certificate_status.name} by {signer.subject.rfc4514_string()}")
    elif mode == "bundle":
        import hashlib

        import cbor2
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
        from cryptography.hazmat.primitives import hashes, serialization

        keys = {}
        for p in argv[3:]:
            spki = der(p)
            keys[hashlib.sha256(spki).digest()] = serialization.load_der_public_key(spki)
        tagged = cbor2.loads(der(argv[2]))
        if tagged.tag != 98:
            raise SystemExit(f"not a tagged COSE_Sign: tag {tagged.tag}")
        body_protected, _, payload, signatures = tagged.value
        for sign_protected, _, signature in signatures:
            header = cbor2.loads(sign_protected)
            alg, kid = header[1], header[4]
            key = keys[kid]
            tbs = cbor2.dumps(["Signature", body_protected, sign_protected, b"", payload])
            if alg in (-7, -35):
                n = len(signature) // 2
                sig = encode_dss_signature(int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big"))
                key.verify(sig, tbs, ec.ECDSA(hashes.SHA256() if alg == -7 else hashes.SHA384()))
            else:  # EdDSA (-8), ML-DSA-44/65/87 (-48/-49/-50): the message itself
                key.verify(signature, tbs)
            print(f"alg {alg} {type(key).__name__} kid {kid.hex()[:16]} verifies")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    major = int(cryptography.__version__.split(".")[0])
    if major < 49:
        raise SystemExit(f"pyca/cryptography {cryptography.__version__}: ML-DSA needs >= 49 (run ./scripts/test)")
    try:
        main(sys.argv)
    except SystemExit:
        raise
    except Exception as e:  # the reason, not a traceback
        raise SystemExit(f"{type(e).__name__}: {e}")
