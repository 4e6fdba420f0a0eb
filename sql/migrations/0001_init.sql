-- dsf schema, version 1.
--
-- Times are BIGINT milliseconds since the Unix epoch (UTC), written by the app
-- servers: unambiguous across time zones and past 2038, and compared as plain
-- integers. Every table is utf8mb4 so 4-byte characters (emoji) round-trip;
-- utf8mb4_unicode_520_ci gives supplementary characters distinct weights
-- (the older utf8mb4_unicode_ci folds them all together) and makes names
-- case-insensitive, so 'Bob' and 'bob' cannot both register.
-- Column sizes match the rules in sql/src/validate.rs, which run first.
-- Each statement ends with ';' at the end of a line (see migrate.rs).

CREATE TABLE users (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    name          VARCHAR(64) NOT NULL,
    -- argon2id PHC string; ~97 characters with default parameters.
    password_hash VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    role          ENUM('viewer', 'operator', 'admin') NOT NULL DEFAULT 'viewer',
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY users_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;

-- A session is found by the SHA-256 of its token: a leaked table (or backup)
-- does not hand out valid tokens. Any app server can check any session.
CREATE TABLE sessions (
    token_hash BINARY(32) NOT NULL,
    user_id    BIGINT UNSIGNED NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (token_hash),
    KEY sessions_user (user_id),
    KEY sessions_expires (expires_at),
    CONSTRAINT sessions_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;

-- The id card is the primary key: InnoDB clusters rows by it, so the keyset
-- listing (id_card > ? ORDER BY id_card) reads one contiguous range, and the
-- point lookup is a single index dive. The name index serves prefix search;
-- as a secondary index it also carries id_card, i.e. it orders (name, id_card).
CREATE TABLE blacklist (
    id_card    VARCHAR(32) NOT NULL,
    name       VARCHAR(64) NOT NULL,
    reason     VARCHAR(512) NULL,
    created_by VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL,
    updated_by VARCHAR(64) NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (id_card),
    KEY blacklist_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;

-- The audit trail of every gate check. Newest first is ORDER BY id DESC; the
-- two secondary indexes end in id so each filtered query reads in order and
-- stops at the limit.
CREATE TABLE gate_checks (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    id_card    VARCHAR(32) NOT NULL,
    name       VARCHAR(64) NOT NULL,
    gate       VARCHAR(64) NULL,
    node       VARCHAR(128) NOT NULL,
    hit        BOOLEAN NOT NULL,
    checked_at BIGINT NOT NULL,
    PRIMARY KEY (id),
    KEY gate_checks_id_card (id_card, id),
    KEY gate_checks_gate (gate, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;
