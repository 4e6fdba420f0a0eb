-- An order: who placed it, what, how many, and where it is.
CREATE TABLE orders (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    owner BIGINT UNSIGNED NOT NULL,
    item VARCHAR(100) NOT NULL,
    qty INT UNSIGNED NOT NULL,
    status ENUM('placed', 'shipped', 'delivered') NOT NULL DEFAULT 'placed',
    KEY by_owner (owner, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_520_ci;
