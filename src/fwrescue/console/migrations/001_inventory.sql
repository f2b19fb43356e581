-- 001: the fleet inventory, policies and rollouts, console accounts and sessions.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    board TEXT,
    power TEXT,
    health TEXT,
    reachable INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_seen REAL,
    policy_version INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE targets (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version TEXT,
    security_version INTEGER NOT NULL DEFAULT 0,
    floor INTEGER NOT NULL DEFAULT 0,
    baseline TEXT,
    health TEXT,
    state TEXT,
    PRIMARY KEY (node_id, name)
);
CREATE TABLE operations (
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    op_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT,
    state TEXT NOT NULL,
    percent INTEGER NOT NULL DEFAULT 0,
    donor TEXT,
    donor_kind TEXT,
    message TEXT,
    started_at TEXT,
    ended_at TEXT,
    first_seen REAL NOT NULL,
    updated_at REAL NOT NULL,
    counted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, op_id)
);
CREATE INDEX operations_by_time ON operations (updated_at);
CREATE TABLE transcript (
    node_id TEXT NOT NULL,
    op_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (node_id, op_id, seq),
    FOREIGN KEY (node_id, op_id) REFERENCES operations(node_id, op_id) ON DELETE CASCADE
);
CREATE TABLE policies (
    board TEXT NOT NULL,
    version INTEGER NOT NULL,
    document BLOB NOT NULL,
    summary TEXT NOT NULL,
    uploaded_by TEXT NOT NULL,
    uploaded_at REAL NOT NULL,
    PRIMARY KEY (board, version)
);
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    board TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'paused', 'halted', 'completed')),
    fraction REAL NOT NULL,
    halt_after INTEGER NOT NULL,
    failures_allowed INTEGER NOT NULL,
    stage INTEGER NOT NULL DEFAULT 1,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    FOREIGN KEY (board, version) REFERENCES policies(board, version)
);
CREATE TABLE deliveries (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'done', 'failed', 'refused')),
    detail TEXT,
    delivered_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (rollout_id, node_id)
);
CREATE TABLE accounts (
    username TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('readonly', 'operator')),
    salt BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
    expires_at REAL NOT NULL
);
