-- Messaging: a user on one app server sends to a user on another.
--
-- A message is stored once (messages) and listed in each recipient's inbox
-- under that recipient's next sequence number (inbox), in the transaction
-- that records the send's run-once row, so a resend never lists it twice.
-- inboxes holds each user's counter and how far they acknowledged: the
-- counter's row is locked by the send that takes a number, so a
-- recipient's messages commit in sequence order, and a reader that has
-- seen number n has seen everything before it.
--
-- presence says which app server holds a user's open subscription, under
-- an epoch that every new subscription increments: a sender tells that
-- server (peer.notify); a subscription whose epoch is no longer the row's
-- was taken over by a newer one. The holder refreshes seen_at; a row not
-- refreshed for a while belongs to a server that died.
--
-- A message's sent_at is Unix ms of the storing app server's clock (it
-- goes out in the notification without a read); every other time is the
-- database clock's (NOW(3)).
CREATE TABLE messages (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    sender_id    BIGINT UNSIGNED NOT NULL,
    sender_name  VARCHAR(64) NOT NULL,
    -- A direct message's recipient; NULL for a room's.
    recipient_id BIGINT UNSIGNED NULL,
    room_id      BIGINT UNSIGNED NULL,
    body         MEDIUMTEXT NOT NULL,
    sent_at      BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (id),
    KEY messages_sender (sender_id, id),
    KEY messages_recipient (recipient_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;

CREATE TABLE inboxes (
    user_id  BIGINT UNSIGNED NOT NULL,
    -- The last sequence number given out.
    last_seq BIGINT UNSIGNED NOT NULL,
    -- Everything up to here was acknowledged by the user's client.
    acked    BIGINT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB;

CREATE TABLE inbox (
    user_id    BIGINT UNSIGNED NOT NULL,
    seq        BIGINT UNSIGNED NOT NULL,
    message_id BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (user_id, seq),
    -- History pages by message id.
    KEY inbox_user_message (user_id, message_id)
) ENGINE = InnoDB;

CREATE TABLE rooms (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    name       VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    created_by BIGINT UNSIGNED NOT NULL,
    created_at DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY rooms_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;

CREATE TABLE room_members (
    room_id   BIGINT UNSIGNED NOT NULL,
    user_id   BIGINT UNSIGNED NOT NULL,
    joined_at DATETIME(3) NOT NULL,
    PRIMARY KEY (room_id, user_id),
    KEY room_members_user (user_id)
) ENGINE = InnoDB;

CREATE TABLE presence (
    user_id BIGINT UNSIGNED NOT NULL,
    node    VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    epoch   BIGINT UNSIGNED NOT NULL,
    seen_at DATETIME(3) NOT NULL,
    PRIMARY KEY (user_id),
    KEY presence_node (node)
) ENGINE = InnoDB;
