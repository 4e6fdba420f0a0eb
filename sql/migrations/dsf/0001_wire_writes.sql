-- Writes that run once, on any node (wire version 2). Every request of a
-- type that writes records its app and nonce, and the reply it got, in the
-- same transaction as the write: the same signed request arriving again, on
-- any app server, finds the record and gets the stored reply instead of
-- running again. Records are deleted once their request has left the replay
-- window (a resend of it is then stale anyway).
-- app and nonce compare byte for byte (the replay guard does too).
CREATE TABLE wire_writes (
    app        VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    nonce      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    kind       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    ok         BOOLEAN NOT NULL,
    reply      MEDIUMTEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (app, nonce),
    KEY wire_writes_created (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;
