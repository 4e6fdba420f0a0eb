-- dsf tasks, version 2: a claim walks the ready queue in its primary key.
--
-- A claim takes the first rows of its app in priority and id order, and
-- deletes them. Until InnoDB purges them, the deleted rows stay in the
-- index a claim walks, and so do the rows other claims hold. Walked
-- through the secondary index of version 1, a claim of 10 took 5.6 ms at
-- the median under eight claimers (0.14 ms alone), most of it in index
-- look-ups; walked in the primary key, at READ COMMITTED, 1.4x as many
-- tasks go through (docs/BENCHMARKS.md, "The claim's scan"). The task id
-- keeps a unique index of its own, for the deletes by id.
ALTER TABLE ready_tasks
    DROP PRIMARY KEY,
    DROP KEY ready_poll,
    ADD PRIMARY KEY (app, neg_priority, task_id),
    ADD UNIQUE KEY ready_task (task_id);
