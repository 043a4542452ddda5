-- iotpki store, version 11 (PostgreSQL): the fleet console (issue #18); mirrors
-- migrations/sqlite/0011_fleet.sql.
-- Summaries the console's overview reads instead of the whole registry,
-- kept by the engine in the transaction of every write that changes them
-- (src/fleet.rs says what each state means). An existing store's summaries
-- are built when it is first opened with this version (fleet_meta.built = 0).

-- Every device: its state without the clock ('certified': its current
-- certificate is good; the clock tells active, expiring and expired apart by
-- not_after), and its current operational certificate.
CREATE TABLE fleet_devices (
    device_serial TEXT   PRIMARY KEY,
    state         TEXT   NOT NULL CHECK (state IN ('born', 'commissioned', 'certified', 'revoked')),
    cert_serial   TEXT,
    not_after     BIGINT
);
CREATE INDEX fleet_devices_expiry ON fleet_devices (not_after) WHERE state = 'certified';

-- Devices per state of fleet_devices.
CREATE TABLE fleet_states (
    state TEXT   PRIMARY KEY,
    n     BIGINT NOT NULL
);

-- Certified devices by the hour (not_after / 3600) their current certificate expires.
CREATE TABLE fleet_expiry (
    hour BIGINT PRIMARY KEY,
    n    BIGINT NOT NULL
);

-- Per UTC day (its first second): operational certificates issued, renewals, refusals.
CREATE TABLE fleet_days (
    day     BIGINT PRIMARY KEY,
    issued  BIGINT NOT NULL DEFAULT 0,
    renewed BIGINT NOT NULL DEFAULT 0,
    refused BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE fleet_meta (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    built BIGINT  NOT NULL
);
INSERT INTO fleet_meta (id, built) VALUES (1, 0);

-- When a station's production record was last synced (NULL before this version).
ALTER TABLE syncs ADD COLUMN synced_at BIGINT;

-- A station's births (count, latest).
CREATE INDEX births_station ON births (station, born_at);

-- The audit log searched by target (a device's page), action (prefix) and
-- actor, newest first. Actions are few and seq grows: action entries append
-- at the end of their range.
CREATE INDEX audit_target ON audit (target, seq);
-- Bytewise, as the prefix search compares (COLLATE "C").
CREATE INDEX audit_action ON audit (action COLLATE "C", seq);
CREATE INDEX audit_actor ON audit (actor, seq);
