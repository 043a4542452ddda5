/*
 * commission.c: a device born on the factory line (its birth key and
 * certificate in the state directory, key files) is commissioned by its
 * owner's server through libiotpki_device, then renews.
 *
 *   ./commission STATE_DIR https://OWNER:PORT OWNER_ROOT.pem
 */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iotpki_device.h"

static int fail(iotpki_device *dev, const char *what, iotpki_status rc) {
    char msg[1024];
    iotpki_device_last_error(dev, msg, sizeof msg);
    fprintf(stderr, "%s failed: %s: %s\n", what, iotpki_status_name(rc), msg);
    iotpki_device_free(dev);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s STATE_DIR OWNER_SERVER OWNER_ROOT.pem\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[3], "rb");
    if (!f) return fprintf(stderr, "cannot read %s\n", argv[3]), 2;
    static char root[16384];
    root[fread(root, 1, sizeof root - 1, f)] = 0;
    fclose(f);

    /* No key callbacks: the birth key is the key file the line left. */
    iotpki_config config = {.state_dir = argv[1]};
    iotpki_device *dev = NULL;
    char msg[1024];
    iotpki_status rc = iotpki_device_new(&config, &dev, msg, sizeof msg);
    if (rc != IOTPKI_OK) return fprintf(stderr, "iotpki_device_new failed: %s\n", msg), 1;

    /* The owner's server and root; the label is the server's default. Blocks. */
    rc = iotpki_device_commission(dev, argv[2], root, NULL);
    if (rc != IOTPKI_OK) return fail(dev, "commission", rc);
    char status[4096];
    size_t len = 0;
    rc = iotpki_device_status(dev, status, sizeof status, &len);
    if (rc != IOTPKI_OK) return fail(dev, "status", rc);
    printf("commissioned: %s\n", status);

    rc = iotpki_device_renew(dev); /* with the operational certificate, at the owner's server */
    if (rc != IOTPKI_OK) return fail(dev, "renew", rc);
    rc = iotpki_device_status(dev, status, sizeof status, &len);
    if (rc != IOTPKI_OK) return fail(dev, "status", rc);
    printf("renewed: %s\n", status);
    iotpki_device_free(dev);
    return 0;
}
