-- Rate limits and login backoff shared by control replicas on one PostgreSQL (issue 17,
-- docs/reliability.md). SQLite's single process keeps them in memory and leaves these empty.

-- Requests per key in one fixed window: `key` names the budget and its caller
-- ("volc:<user>", "live:<access key>"), `window_start_ms` the window's start.
CREATE TABLE rate_windows (
    key TEXT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (key, window_start_ms)
);

-- Wrong passwords per backoff key (a user, or a client address; by its SHA-256 in hex) and
-- the lock they earned.
CREATE TABLE login_failures (
    key TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_failure_ms BIGINT NOT NULL,
    locked_until_ms BIGINT NOT NULL
);
