/*
 * enroll.c: a device enrolls with iotpki through libiotpki_device, its key
 * held by the firmware (here OpenSSL's libcrypto stands in for a secure
 * element), then renews, and counts how often the library asked it to sign.
 *
 *   cc -o enroll examples/c/enroll.c -Iinclude target/device/libiotpki_device.a \
 *      -lcrypto -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
 *   ./enroll STATE_DIR https://HOST:PORT SERIAL ROOT_CA.pem TOKEN_FILE
 *
 * docs/device-c-api.md walks through it.
 */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "iotpki_device.h"

/* The "secure element": a few named key slots. */
#define SLOTS 8

struct slot {
    char name[64];
    EVP_PKEY *key;
};

struct element {
    struct slot slots[SLOTS];
    unsigned generated, signed_digests, forgotten;
};

static struct slot *find(struct element *se, const char *name) {
    for (int i = 0; i < SLOTS; i++)
        if (se->slots[i].key && strcmp(se->slots[i].name, name) == 0) return &se->slots[i];
    return NULL;
}

static int generate(void *user_data, iotpki_key_type key_type, const char *name) {
    struct element *se = user_data;
    const char *curve = key_type == IOTPKI_KEY_P256 ? "P-256" : key_type == IOTPKI_KEY_P384 ? "P-384" : NULL;
    if (!curve) return -1;
    struct slot *s = find(se, name);
    if (!s)
        for (int i = 0; i < SLOTS && !s; i++)
            if (!se->slots[i].key) s = &se->slots[i];
    if (!s || strlen(name) >= sizeof s->name) return -2;
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
    if (!key) return -3;
    EVP_PKEY_free(s->key);
    s->key = key;
    strcpy(s->name, name);
    se->generated++;
    return 0;
}

static int public_key(void *user_data, const char *name, uint8_t *out, size_t out_cap, size_t *out_len) {
    struct slot *s = find(user_data, name);
    if (!s) return -1;
    int n = i2d_PUBKEY(s->key, NULL); /* DER SubjectPublicKeyInfo */
    if (n <= 0 || (size_t)n > out_cap) return -2;
    unsigned char *p = out;
    i2d_PUBKEY(s->key, &p);
    *out_len = (size_t)n;
    return 0;
}

static int sign(void *user_data, const char *name, iotpki_key_type key_type, const uint8_t *digest,
                size_t digest_len, uint8_t *sig, size_t sig_cap, size_t *sig_len) {
    struct element *se = user_data;
    (void)key_type;
    struct slot *s = find(se, name);
    if (!s) return -1;
    /* No digest set on the context: the digest is signed as given; the
       signature is DER (ECDSA-Sig-Value), as the library wants it. */
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(s->key, NULL);
    size_t n = sig_cap;
    int ok = ctx && EVP_PKEY_sign_init(ctx) == 1 && EVP_PKEY_sign(ctx, sig, &n, digest, digest_len) == 1;
    EVP_PKEY_CTX_free(ctx);
    if (!ok) return -2;
    *sig_len = n;
    se->signed_digests++;
    return 0;
}

static void forget(void *user_data, const char *name) {
    struct element *se = user_data;
    struct slot *s = find(se, name);
    if (!s) return;
    EVP_PKEY_free(s->key);
    memset(s, 0, sizeof *s);
    se->forgotten++;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strdup(buf);
}

static int fail(iotpki_device *dev, const char *what, iotpki_status rc) {
    char msg[1024];
    iotpki_device_last_error(dev, msg, sizeof msg);
    fprintf(stderr, "%s failed: %s: %s\n", what, iotpki_status_name(rc), msg);
    return 1;
}

static void print_status(iotpki_device *dev) {
    char *json = NULL;
    if (iotpki_device_status_json(dev, &json) == IOTPKI_OK) {
        printf("status: %s\n", json);
        iotpki_string_free(json);
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s STATE_DIR SERVER SERIAL ROOT_CA.pem TOKEN_FILE\n", argv[0]);
        return 2;
    }
    char *root = slurp(argv[4]), *token = slurp(argv[5]);
    if (!root || !token) {
        fprintf(stderr, "cannot read %s or %s\n", argv[4], argv[5]);
        return 2;
    }
    token[strcspn(token, "\r\n")] = 0; /* a token file: its first line */

    struct element se = {0};
    iotpki_key_callbacks keys = {
        .user_data = &se, .generate = generate, .public_key = public_key, .sign = sign, .forget = forget,
    };
    iotpki_config config = {
        .state_dir = argv[1], .server = argv[2], .serial = argv[3], .ca_cert_pem = root,
        .key_type = IOTPKI_KEY_P256, .keys = &keys,
    };
    iotpki_device *dev = NULL;
    char msg[1024];
    iotpki_status rc = iotpki_device_new(&config, &dev, msg, sizeof msg);
    if (rc != IOTPKI_OK) {
        fprintf(stderr, "iotpki_device_new failed: %s: %s\n", iotpki_status_name(rc), msg);
        return 1;
    }
    /* The strings were copied: they may go now (the callbacks may not). */
    free(root);

    rc = iotpki_device_enroll(dev, token); /* blocks: one EST exchange */
    free(token);
    if (rc != IOTPKI_OK) return fail(dev, "enroll", rc);
    printf("enrolled: generated %u, signed %u\n", se.generated, se.signed_digests);
    print_status(dev);

    rc = iotpki_device_renew(dev); /* blocks: mutual TLS signed through the callback */
    if (rc != IOTPKI_OK) return fail(dev, "renew", rc);
    printf("renewed: generated %u, signed %u, forgotten %u\n", se.generated, se.signed_digests, se.forgotten);
    print_status(dev);

    iotpki_device_free(dev);
    for (int i = 0; i < SLOTS; i++) EVP_PKEY_free(se.slots[i].key);
    printf("sign callback calls: %u\n", se.signed_digests);
    return 0;
}
