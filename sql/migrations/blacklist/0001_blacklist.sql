-- dsf blacklist, version 1: the blacklist and the record of every gate check.
--
-- Times are BIGINT milliseconds since the Unix epoch (UTC), written by the app
-- servers: unambiguous across time zones and past 2038, and compared as plain
-- integers. Every table is utf8mb4 so 4-byte characters (emoji) round-trip;
-- utf8mb4_unicode_520_ci gives supplementary characters distinct weights
-- (the older utf8mb4_unicode_ci folds them all together) and makes names
-- case-insensitive, so 'Bob' and 'bob' cannot both register.
-- Column sizes match the rules in sql/src/validate.rs, which run first.
-- Each statement ends with ';' at the end of a line (see migrate.rs).

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
