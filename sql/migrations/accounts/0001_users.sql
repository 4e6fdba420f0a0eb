-- dsf accounts, version 1: users and their sessions.
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
