-- iotpki store, version 2 (PostgreSQL): production batches, factory stations, births.
CREATE TABLE batches (
    id          TEXT    PRIMARY KEY,
    product     TEXT    NOT NULL,
    quota       BIGINT  NOT NULL CHECK (quota > 0),
    issued      BIGINT  NOT NULL DEFAULT 0,
    refused     BIGINT  NOT NULL DEFAULT 0,
    flagged     BIGINT  NOT NULL DEFAULT 0,
    valid_from  BIGINT  NOT NULL,
    valid_until BIGINT  NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('open', 'closed')),
    created_at  BIGINT  NOT NULL,
    CHECK (issued <= quota)
);

-- The allowlist: the serials a batch may give birth to.
CREATE TABLE batch_serials (
    batch_id      TEXT   NOT NULL REFERENCES batches (id),
    device_serial TEXT   NOT NULL,
    position      BIGINT NOT NULL,
    PRIMARY KEY (batch_id, device_serial)
);

-- One birth certificate per device serial, ever: the constraint is the guarantee.
CREATE TABLE births (
    device_serial TEXT   PRIMARY KEY,
    cert_serial   TEXT   NOT NULL,
    batch_id      TEXT   NOT NULL REFERENCES batches (id),
    station       TEXT   NOT NULL,
    born_at       BIGINT NOT NULL
);

CREATE TABLE stations (
    name        TEXT   PRIMARY KEY,
    cert_serial TEXT   NOT NULL UNIQUE,
    status      TEXT   NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE station_batches (
    station  TEXT NOT NULL REFERENCES stations (name),
    batch_id TEXT NOT NULL REFERENCES batches (id),
    PRIMARY KEY (station, batch_id)
);
