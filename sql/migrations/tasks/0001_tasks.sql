-- The task service: jobs of tasks, claimed by workers on any app server.
--
-- Claims follow solid_queue's layout: a task that can be claimed now has a
-- row in ready_tasks, polled with SELECT ... FOR UPDATE SKIP LOCKED in
-- priority and id order; claiming moves it to claimed_tasks (the lease and
-- its fence), a retry waits in scheduled_tasks until its backoff is over.
-- The polled index never sees a status flip: rows are inserted and
-- deleted. tasks.state is the task's history for readers, never polled.
-- Every time comes from the database clock (NOW(3)).
--
-- Job counts of finished tasks are sharded (job_counts, 16 rows a job), so
-- completions of one job do not all queue on one row.
CREATE TABLE jobs (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    app          VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    user_id      BIGINT UNSIGNED NULL,
    name         VARCHAR(200) NULL,
    max_attempts INT UNSIGNED NOT NULL,
    -- Tasks submitted (keys already in the job do not count twice).
    total        INT UNSIGNED NOT NULL DEFAULT 0,
    next_seq     INT UNSIGNED NOT NULL DEFAULT 0,
    cancelled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   DATETIME(3) NOT NULL,
    PRIMARY KEY (id),
    KEY jobs_app (app, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;

CREATE TABLE tasks (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    job_id       BIGINT UNSIGNED NOT NULL,
    app          VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    seq          INT UNSIGNED NOT NULL,
    -- Unique per app: running the same submit again adds nothing.
    task_key     VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    payload      MEDIUMTEXT NOT NULL,
    priority     INT NOT NULL DEFAULT 0,
    state        ENUM('ready', 'running', 'waiting', 'done', 'dead', 'cancelled') NOT NULL,
    attempts     INT UNSIGNED NOT NULL DEFAULT 0,
    max_attempts INT UNSIGNED NOT NULL,
    result       MEDIUMTEXT NULL,
    error        TEXT NULL,
    created_at   DATETIME(3) NOT NULL,
    started_at   DATETIME(3) NULL,
    finished_at  DATETIME(3) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY tasks_job_seq (job_id, seq),
    UNIQUE KEY tasks_app_key (app, task_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;

CREATE TABLE ready_tasks (
    task_id      BIGINT UNSIGNED NOT NULL,
    app          VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    job_id       BIGINT UNSIGNED NOT NULL,
    -- -priority: the poll reads the index in ascending order.
    neg_priority INT NOT NULL,
    PRIMARY KEY (task_id),
    KEY ready_poll (app, neg_priority, task_id),
    KEY ready_job (job_id)
) ENGINE = InnoDB;

CREATE TABLE scheduled_tasks (
    task_id      BIGINT UNSIGNED NOT NULL,
    app          VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    job_id       BIGINT UNSIGNED NOT NULL,
    neg_priority INT NOT NULL,
    available_at DATETIME(3) NOT NULL,
    PRIMARY KEY (task_id),
    KEY scheduled_due (available_at),
    KEY scheduled_job (job_id)
) ENGINE = InnoDB;

CREATE TABLE claimed_tasks (
    task_id      BIGINT UNSIGNED NOT NULL,
    app          VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    job_id       BIGINT UNSIGNED NOT NULL,
    worker       VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    fence        BIGINT UNSIGNED NOT NULL,
    lease_until  DATETIME(3) NOT NULL,
    claimed_at   DATETIME(3) NOT NULL,
    PRIMARY KEY (task_id),
    KEY claimed_lease (lease_until),
    KEY claimed_job (job_id)
) ENGINE = InnoDB;

CREATE TABLE job_counts (
    job_id       BIGINT UNSIGNED NOT NULL,
    shard        TINYINT UNSIGNED NOT NULL,
    done         INT UNSIGNED NOT NULL DEFAULT 0,
    failed       INT UNSIGNED NOT NULL DEFAULT 0,
    dead         INT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, shard)
) ENGINE = InnoDB;
