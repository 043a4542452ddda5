"""Check iotpki trust bundles and vouchers with pycose, a COSE implementation we did not write.

    cose_check.py bundle FILE            every signature by a key the bundle names must verify
    cose_check.py voucher FILE MAKER.pem  the chain from the manufacturer key must verify

Prints one line per signature and exits 1 on the first failure. Run by
crates/cli/tests/it/bundle.rs with the venv that scripts/test prepares.
"""
import base64
import hashlib
import sys

import cbor2
from pycose.headers import KID
from pycose.keys import CoseKey
from pycose.messages import CoseMessage, Sign1Message, SignMessage


def key(spki):
    pem = "-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(spki).decode() + "-----END PUBLIC KEY-----\n"
    return CoseKey.from_pem_public_key(pem)


def fail(msg):
    print("FAIL", msg)
    sys.exit(1)


def bundle(path):
    msg = CoseMessage.decode(open(path, "rb").read())
    if not isinstance(msg, SignMessage):
        fail("not a COSE_Sign")
    content = cbor2.loads(msg.payload)
    own = {hashlib.sha256(s).digest(): s for s in content[7]}
    for s in msg.signers:
        kid = s.phdr[KID]
        if kid not in own:
            print("foreign", kid.hex())
            continue
        s.key = key(own[kid])
        if not s.verify_signature():
            fail("signature by %s" % kid.hex())
        print("verified", kid.hex())
    print("bundle version %d threshold %d" % (content[1], content[6]))


def voucher(path, maker_pem):
    signer = key_from_pem(maker_pem)
    prev = bytes(32)
    entries = cbor2.loads(open(path, "rb").read())
    for i, raw in enumerate(entries):
        msg = CoseMessage.decode(raw)
        if not isinstance(msg, Sign1Message):
            fail("entry %d is not a COSE_Sign1" % i)
        content = cbor2.loads(msg.payload)
        if content[6] != prev:
            fail("entry %d prev" % i)
        msg.key = signer
        if not msg.verify_signature():
            fail("entry %d signature" % i)
        print("verified entry", i, content[1])
        signer = key(content[3])
        prev = hashlib.sha256(raw).digest()
    print("owner", hashlib.sha256(content[3]).hexdigest())


def key_from_pem(path):
    return CoseKey.from_pem_public_key(open(path).read())


if __name__ == "__main__":
    if sys.argv[1] == "bundle":
        bundle(sys.argv[2])
    else:
        voucher(sys.argv[2], sys.argv[3])
