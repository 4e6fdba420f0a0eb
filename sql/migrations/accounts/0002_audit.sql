-- The audit trail: who changed what, when, on which node. Written in the
-- transaction of the change it records (a change that rolls back leaves no
-- entry), never updated, read newest first.
CREATE TABLE audit (
    id      BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    -- Unix ms, the recording node's clock.
    at      BIGINT UNSIGNED NOT NULL,
    -- The user who did it; NULL for the command line (app-server create-admin).
    actor   VARCHAR(64) NULL,
    node    VARCHAR(256) NOT NULL,
    -- user.create, user.set_role, blacklist.add, blacklist.update, blacklist.remove
    action  VARCHAR(32) NOT NULL,
    -- The user name or id card acted on.
    subject VARCHAR(128) NOT NULL,
    -- JSON: what changed, e.g. {"from":"viewer","to":"operator"}.
    detail  TEXT NULL,
    PRIMARY KEY (id),
    KEY audit_subject (subject, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;
