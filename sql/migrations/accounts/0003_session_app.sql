-- A session belongs to the app whose key logged in: its token is accepted
-- only on requests signed with that app's key. Sessions made before this
-- column existed have none and are refused (their users log in again).
ALTER TABLE sessions
    ADD COLUMN app VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL AFTER user_id;
