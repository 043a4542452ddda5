/*
 * errors.c: every refusal of libiotpki_device, driven from C. Each case
 * checks the status code and prints one line
 *
 *   case NAME CODE_NAME MESSAGE
 *
 * which the test (crates/cli/tests/it/device_c.rs) compares with what the
 * agent says for the same mistake. Exits 1 at the first unexpected code.
 *
 *   ./errors SERVER ROOT.pem OTHER_ROOT.pem DEAD_URL TMPDIR TOKEN_A TOKEN_B
 *
 * TOKEN_A enrolls ERR-A with key files, TOKEN_B enrolls ERR-B with key
 * callbacks (both one-time tokens for those serials).
 */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "iotpki_device.h"

static int failures;

static void report(const char *name, iotpki_status got, iotpki_status want, const char *msg) {
    printf("case %s %s %s\n", name, iotpki_status_name(got), msg);
    if (got != want) {
        fprintf(stderr, "case %s: expected %s, got %s: %s\n", name, iotpki_status_name(want),
                iotpki_status_name(got), msg);
        failures++;
    }
}

/* A call on a context: its code and its message. */
static void expect(const char *name, iotpki_device *dev, iotpki_status got, iotpki_status want) {
    char msg[2048];
    iotpki_device_last_error(dev, msg, sizeof msg);
    report(name, got, want, msg);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    static char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strdup(buf);
}

/* --- key callbacks with switches to fail ------------------------------ */

struct keys {
    EVP_PKEY *key[8];
    char name[8][32];
    int fail_generate, fail_sign, bad_signature, empty_public_key;
    iotpki_device *reenter; /* if set, the sign callback calls back into this context */
    iotpki_status reentered;
    unsigned signs;
};

static int slot(struct keys *k, const char *name) {
    for (int i = 0; i < 8; i++)
        if (k->key[i] && strcmp(k->name[i], name) == 0) return i;
    return -1;
}

static int cb_generate(void *u, iotpki_key_type kt, const char *name) {
    struct keys *k = u;
    if (k->fail_generate) return -7;
    int i = slot(k, name);
    for (int j = 0; j < 8 && i < 0; j++)
        if (!k->key[j]) i = j;
    if (i < 0 || strlen(name) >= sizeof k->name[i]) return -1;
    EVP_PKEY_free(k->key[i]);
    k->key[i] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", kt == IOTPKI_KEY_P384 ? "P-384" : "P-256");
    strcpy(k->name[i], name);
    return k->key[i] ? 0 : -1;
}

static int cb_public_key(void *u, const char *name, uint8_t *out, size_t cap, size_t *len) {
    struct keys *k = u;
    int i = slot(k, name);
    if (i < 0) return -1;
    if (k->empty_public_key) {
        *len = 0;
        return 0;
    }
    int n = i2d_PUBKEY(k->key[i], NULL);
    if (n <= 0 || (size_t)n > cap) return -1;
    i2d_PUBKEY(k->key[i], &out);
    *len = (size_t)n;
    return 0;
}

static int cb_sign(void *u, const char *name, iotpki_key_type kt, const uint8_t *digest, size_t dlen,
                   uint8_t *sig, size_t cap, size_t *len) {
    struct keys *k = u;
    (void)kt;
    k->signs++;
    if (k->reenter) {
        char buf[4096];
        k->reentered = iotpki_device_status(k->reenter, buf, sizeof buf, NULL);
    }
    if (k->fail_sign) return -9;
    int i = slot(k, name);
    if (i < 0) return -1;
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(k->key[i], NULL);
    size_t n = cap;
    int ok = c && EVP_PKEY_sign_init(c) == 1 && EVP_PKEY_sign(c, sig, &n, digest, dlen) == 1;
    EVP_PKEY_CTX_free(c);
    if (!ok) return -1;
    if (k->bad_signature) sig[n - 1] ^= 0x01; /* a signature, but not a valid one */
    *len = n;
    return 0;
}

static void keys_free(struct keys *k) {
    for (int i = 0; i < 8; i++) EVP_PKEY_free(k->key[i]);
}

/* --- threads ------------------------------------------------------------ */

/* One context shared by two threads, one more per thread: each call on the
   shared one is done or refused as busy, never anything else; the threads'
   own contexts are never busy. */
struct worker {
    iotpki_device *shared, *own;
    unsigned ok, busy, other;
};

static void *work(void *arg) {
    struct worker *w = arg;
    char buf[4096];
    for (int i = 0; i < 200; i++) {
        iotpki_status rc = iotpki_device_status(w->shared, buf, sizeof buf, NULL);
        if (rc == IOTPKI_OK) w->ok++;
        else if (rc == IOTPKI_ERR_BUSY) w->busy++;
        else w->other++;
        if (iotpki_device_status(w->own, buf, sizeof buf, NULL) != IOTPKI_OK) w->other++;
        char msg[256];
        iotpki_device_last_error(w->shared, msg, sizeof msg); /* any thread, any time */
    }
    return NULL;
}

/* --- the cases ---------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s SERVER ROOT.pem OTHER_ROOT.pem DEAD_URL TMPDIR TOKEN_A TOKEN_B\n", argv[0]);
        return 2;
    }
    const char *server = argv[1], *dead = argv[4], *tmp = argv[5];
    char *root = slurp(argv[2]), *other_root = slurp(argv[3]);
    const char *token_a = argv[6], *token_b = argv[7];
    char dir[1024], msg[2048];
    iotpki_device *dev = NULL;
    iotpki_status rc;

#define DIR(n) (snprintf(dir, sizeof dir, "%s/%s", tmp, n), dir)
#define CONFIG(d, srv, ser, ca) \
    (iotpki_config){.state_dir = (d), .server = (srv), .serial = (ser), .ca_cert_pem = (ca)}
#define NEW(cfg) (dev = NULL, iotpki_device_new(&(cfg), &dev, msg, sizeof msg))

    /* Making a context. */
    rc = iotpki_device_new(NULL, &dev, msg, sizeof msg);
    report("new-null-config", rc, IOTPKI_ERR_NULL_ARGUMENT, msg);
    if (dev != NULL) failures++;
    iotpki_config cfg = CONFIG(DIR("a"), server, "ERR-A", root);
    rc = iotpki_device_new(&cfg, NULL, msg, sizeof msg);
    report("new-null-out", rc, IOTPKI_ERR_NULL_ARGUMENT, msg);
    cfg.state_dir = NULL;
    rc = NEW(cfg);
    report("new-null-state-dir", rc, IOTPKI_ERR_NULL_ARGUMENT, msg);
    cfg.state_dir = "";
    rc = NEW(cfg);
    report("new-empty-state-dir", rc, IOTPKI_ERR_INVALID_ARGUMENT, msg);
    cfg = CONFIG(DIR("a"), server, "ERR-A", root);
    cfg.key_type = 9;
    rc = NEW(cfg);
    report("new-bad-key-type", rc, IOTPKI_ERR_INVALID_ARGUMENT, msg);
    cfg.key_type = 0;
    cfg.serial = "ERR-\xff";
    rc = NEW(cfg);
    report("new-serial-not-utf8", rc, IOTPKI_ERR_INVALID_ARGUMENT, msg);
    struct keys k = {0};
    iotpki_key_callbacks incomplete = {.user_data = &k, .generate = cb_generate, .public_key = cb_public_key};
    cfg = CONFIG(DIR("b"), server, "ERR-B", root);
    cfg.keys = &incomplete;
    rc = NEW(cfg);
    report("new-callbacks-incomplete", rc, IOTPKI_ERR_INVALID_ARGUMENT, msg);
    /* A message buffer of 8 bytes: truncated, terminated. */
    char small[8];
    memset(small, 'x', sizeof small);
    rc = iotpki_device_new(NULL, &dev, small, sizeof small);
    report("new-message-truncated", rc, IOTPKI_ERR_NULL_ARGUMENT, small);
    if (strlen(small) != 7) failures++;

    /* Every call with no context. */
    char buf[4096];
    size_t need = 0;
    char *json = NULL;
    report("enroll-null-ctx", iotpki_device_enroll(NULL, "t"), IOTPKI_ERR_NULL_ARGUMENT, "");
    report("renew-null-ctx", iotpki_device_renew(NULL), IOTPKI_ERR_NULL_ARGUMENT, "");
    report("commission-null-ctx", iotpki_device_commission(NULL, NULL, NULL, NULL), IOTPKI_ERR_NULL_ARGUMENT, "");
    report("status-null-ctx", iotpki_device_status(NULL, buf, sizeof buf, &need), IOTPKI_ERR_NULL_ARGUMENT, "");
    report("status-json-null-ctx", iotpki_device_status_json(NULL, &json), IOTPKI_ERR_NULL_ARGUMENT, "");
    report("apply-null-ctx", iotpki_device_apply(NULL, (const uint8_t *)"x", 1, 0), IOTPKI_ERR_NULL_ARGUMENT, "");
    report("apply-file-null-ctx", iotpki_device_apply_file(NULL, "/x", 0), IOTPKI_ERR_NULL_ARGUMENT, "");
    iotpki_device_last_error(NULL, msg, sizeof msg);
    report("last-error-null-ctx", IOTPKI_ERR_NULL_ARGUMENT, IOTPKI_ERR_NULL_ARGUMENT, msg);
    iotpki_device_free(NULL);
    iotpki_string_free(NULL);
    printf("case status-name-unknown %s\n", iotpki_status_name(999));

    /* Key files, device ERR-A: refusals before and after enrolling. */
    cfg = CONFIG(DIR("a"), server, "ERR-A", root);
    if (NEW(cfg) != IOTPKI_OK) return fprintf(stderr, "new: %s\n", msg), 1;
    expect("renew-before-enroll", dev, iotpki_device_renew(dev), IOTPKI_ERR_STATE);
    expect("status-before-enroll", dev, iotpki_device_status(dev, buf, sizeof buf, &need), IOTPKI_ERR_STATE);
    expect("enroll-null-token", dev, iotpki_device_enroll(dev, NULL), IOTPKI_ERR_NULL_ARGUMENT);
    expect("enroll-empty-token", dev, iotpki_device_enroll(dev, " "), IOTPKI_ERR_INVALID_ARGUMENT);
    expect("enroll-bad-token", dev, iotpki_device_enroll(dev, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
           IOTPKI_ERR_REFUSED);
    expect("status-null-buf", dev, iotpki_device_status(dev, NULL, 0, &need), IOTPKI_ERR_NULL_ARGUMENT);
    expect("status-json-null-out", dev, iotpki_device_status_json(dev, NULL), IOTPKI_ERR_NULL_ARGUMENT);
    expect("enroll", dev, iotpki_device_enroll(dev, token_a), IOTPKI_OK);
    expect("enroll-again", dev, iotpki_device_enroll(dev, token_a), IOTPKI_ERR_STATE);
    need = 0;
    memset(small, 'x', sizeof small);
    expect("status-buffer-too-small", dev, iotpki_device_status(dev, small, sizeof small, &need),
           IOTPKI_ERR_BUFFER_TOO_SMALL);
    if (need < 100 || small[0] != 0) failures++;
    char *exact = malloc(need);
    expect("status-exact-buffer", dev, iotpki_device_status(dev, exact, need, &need), IOTPKI_OK);
    if (strlen(exact) + 1 != need) failures++;
    free(exact);
    expect("commission-no-birth", dev, iotpki_device_commission(dev, NULL, NULL, NULL), IOTPKI_ERR_STATE);
    static const uint8_t garbage[] = "\x30\x03\x02\x01\x00 not a bundle, a voucher or a CRL";
    expect("apply-garbage", dev, iotpki_device_apply(dev, garbage, sizeof garbage - 1, 0), IOTPKI_ERR_UNTRUSTED);
    expect("apply-null-bytes", dev, iotpki_device_apply(dev, NULL, 0, 0), IOTPKI_ERR_NULL_ARGUMENT);
    expect("apply-file-missing", dev, iotpki_device_apply_file(dev, DIR("no-such-update"), 0), IOTPKI_ERR_IO);
    /* A message asked into a too-small buffer: the full length back, truncated. */
    size_t full = iotpki_device_last_error(dev, NULL, 0);
    size_t again = iotpki_device_last_error(dev, small, sizeof small);
    if (full != again || strlen(small) != sizeof small - 1) failures++;
    iotpki_device_free(dev);

    /* Threads: three contexts on the enrolled directory, two threads. */
    cfg = CONFIG(DIR("a"), NULL, NULL, NULL);
    iotpki_device *shared = NULL, *own1 = NULL, *own2 = NULL;
    if (iotpki_device_new(&cfg, &shared, msg, sizeof msg) || iotpki_device_new(&cfg, &own1, msg, sizeof msg) ||
        iotpki_device_new(&cfg, &own2, msg, sizeof msg))
        return fprintf(stderr, "new: %s\n", msg), 1;
    struct worker w1 = {.shared = shared, .own = own1}, w2 = {.shared = shared, .own = own2};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, work, &w1);
    pthread_create(&t2, NULL, work, &w2);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    snprintf(msg, sizeof msg, "ok %u busy %u other %u", w1.ok + w2.ok, w1.busy + w2.busy, w1.other + w2.other);
    report("threads", w1.other + w2.other == 0 && w1.ok + w2.ok > 0 ? IOTPKI_OK : IOTPKI_ERR_OTHER, IOTPKI_OK, msg);
    iotpki_device_free(shared);
    iotpki_device_free(own1);
    iotpki_device_free(own2);

    /* The same directory opened with key callbacks: not theirs. */
    iotpki_key_callbacks cbs = {.user_data = &k, .generate = cb_generate, .public_key = cb_public_key,
                                .sign = cb_sign};
    cfg = CONFIG(DIR("a"), NULL, NULL, NULL);
    cfg.keys = &cbs;
    if (NEW(cfg) != IOTPKI_OK) return fprintf(stderr, "new: %s\n", msg), 1;
    expect("renew-file-keys-with-callbacks", dev, iotpki_device_renew(dev), IOTPKI_ERR_KEYSTORE);
    iotpki_device_free(dev);

    /* Enrollment refusals, each from a fresh directory. */
    struct {
        const char *name, *server, *serial, *ca;
        iotpki_status want;
    } enrolls[] = {
        {"enroll-bad-serial", server, "bad serial!", root, IOTPKI_ERR_USAGE},
        {"enroll-bad-ca-pem", server, "ERR-C", "not a PEM", IOTPKI_ERR_USAGE},
        {"enroll-unreachable", dead, "ERR-C", root, IOTPKI_ERR_CONNECT},
        {"enroll-wrong-ca", server, "ERR-C", other_root, IOTPKI_ERR_CONNECT},
        {"enroll-no-server", NULL, "ERR-C", root, IOTPKI_ERR_INVALID_ARGUMENT},
    };
    for (size_t i = 0; i < sizeof enrolls / sizeof enrolls[0]; i++) {
        cfg = CONFIG(DIR("c"), enrolls[i].server, enrolls[i].serial, enrolls[i].ca);
        if (NEW(cfg) != IOTPKI_OK) return fprintf(stderr, "new: %s\n", msg), 1;
        expect(enrolls[i].name, dev, iotpki_device_enroll(dev, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
               enrolls[i].want);
        iotpki_device_free(dev);
    }

    /* Key callbacks that fail, device ERR-B (each refused before the token is spent). */
    struct {
        const char *name;
        int *flag;
        iotpki_status want;
    } broken[] = {
        {"enroll-generate-fails", &k.fail_generate, IOTPKI_ERR_KEYSTORE},
        {"enroll-public-key-empty", &k.empty_public_key, IOTPKI_ERR_KEYSTORE},
        {"enroll-sign-fails", &k.fail_sign, IOTPKI_ERR_CRYPTO},
        {"enroll-bad-signature", &k.bad_signature, IOTPKI_ERR_CRYPTO},
    };
    cfg = CONFIG(DIR("b"), server, "ERR-B", root);
    cfg.keys = &cbs;
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        *broken[i].flag = 1;
        if (NEW(cfg) != IOTPKI_OK) return fprintf(stderr, "new: %s\n", msg), 1;
        expect(broken[i].name, dev, iotpki_device_enroll(dev, token_b), broken[i].want);
        iotpki_device_free(dev);
        *broken[i].flag = 0;
    }
    /* A sign callback that calls back into its own context: refused, not deadlocked. */
    if (NEW(cfg) != IOTPKI_OK) return fprintf(stderr, "new: %s\n", msg), 1;
    k.reenter = dev;
    k.reentered = IOTPKI_OK;
    expect("enroll-with-callbacks", dev, iotpki_device_enroll(dev, token_b), IOTPKI_OK);
    k.reenter = NULL;
    report("callback-reenters", k.reentered, IOTPKI_ERR_BUSY, "");
    iotpki_device_free(dev);

    /* The external-keys directory opened without callbacks: said so. */
    cfg = CONFIG(DIR("b"), NULL, NULL, NULL);
    if (NEW(cfg) != IOTPKI_OK) return fprintf(stderr, "new: %s\n", msg), 1;
    expect("renew-external-without-callbacks", dev, iotpki_device_renew(dev), IOTPKI_ERR_KEYSTORE);
    iotpki_device_free(dev);
    /* ... and with callbacks whose key is gone: said so. */
    keys_free(&k);
    memset(&k, 0, sizeof k);
    cfg.keys = &cbs;
    if (NEW(cfg) != IOTPKI_OK) return fprintf(stderr, "new: %s\n", msg), 1;
    expect("renew-key-lost", dev, iotpki_device_renew(dev), IOTPKI_ERR_KEYSTORE);
    iotpki_device_free(dev);

    keys_free(&k);
    free(root);
    free(other_root);
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
