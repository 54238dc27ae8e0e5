-- Tables the example sinks write to. Switchyard never creates tables: create them first,
-- e.g. `sqlite3 data/messages.db < examples/rules/schema.sql`.
CREATE TABLE IF NOT EXISTS messages (topic TEXT NOT NULL, payload TEXT, qos INTEGER, ts INTEGER);
CREATE TABLE IF NOT EXISTS device_events (clientid TEXT NOT NULL, reason TEXT, ts INTEGER);
