-- A message row holds the (app, nonce) of the request that sent it, under a
-- unique key: the send's run-once record. A direct send committed in a
-- group with others writes no row in wire_writes; its reply ({"id","seq"})
-- is read back from its message and inbox rows, and a run of the same
-- request anywhere meets this key as it would meet the record's. It takes
-- a row and two index entries out of every grouped send, and out of the
-- time the recipients' counters stay locked. NULL in rows from before.
ALTER TABLE messages
    ADD COLUMN app   VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN nonce VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD UNIQUE KEY messages_request (app, nonce);
