-- The node's time (unix ms) of the state change an instance's stored state came from. Every
-- replica writes the states nodes report, in no set order; a report older than the one stored
-- (a lagging or killed replica's write landing last) must not undo a newer one
-- (docs/reliability.md, section 7.3). 0: no report yet, or a node that sends no time.
ALTER TABLE instances ADD COLUMN reported_at_ms BIGINT NOT NULL DEFAULT 0;
