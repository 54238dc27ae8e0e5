CREATE TABLE IF NOT EXISTS audit (
    kind TEXT NOT NULL,        -- the event name, or what the rule made of a message
    clientid TEXT,
    data TEXT NOT NULL,        -- JSON
    at INTEGER NOT NULL DEFAULT (strftime('%s', 'now'))
);
