-- Acknowledgements move to a table of their own. In inboxes, the mark
-- shared its row with the counter every send locks until its commit, so
-- a recipient's acknowledgements waited behind the sends to them (and
-- with sends committed in batches, behind whole batches), and delivery
-- stalled for want of credit. inboxes.acked is no longer read or written.
CREATE TABLE inbox_acks (
    user_id BIGINT UNSIGNED NOT NULL,
    -- Everything up to here was acknowledged by the user's client.
    acked   BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB;

INSERT INTO inbox_acks (user_id, acked)
    SELECT user_id, acked FROM inboxes WHERE acked > 0;
