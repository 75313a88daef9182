//! The platform's own tables: the dedup record of every applied or rejected command.

use crate::store::Migration;

/// Version 2: the transactional outbox (what this region applied, in commit order, for peers to
/// pull) and the checkpoint of what was pulled from each peer region.
const OUTBOX_SQLITE: &str = "CREATE TABLE rn_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        command TEXT NOT NULL
    );
    CREATE TABLE rn_checkpoints (
        peer_region TEXT PRIMARY KEY,
        seq BIGINT NOT NULL
    )";

const OUTBOX_POSTGRES: &str = "CREATE TABLE rn_outbox (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL,
        command TEXT NOT NULL
    );
    CREATE TABLE rn_checkpoints (
        peer_region TEXT PRIMARY KEY,
        seq BIGINT NOT NULL
    )";

/// Version 3: the conflict log of last-writer-wins kinds.
const CONFLICTS_SQLITE: &str = "CREATE TABLE rn_conflicts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        entity TEXT NOT NULL,
        winner_id TEXT NOT NULL,
        winner_hlc BIGINT NOT NULL,
        loser_id TEXT NOT NULL,
        loser_hlc BIGINT NOT NULL,
        loser_payload TEXT NOT NULL
    )";

const CONFLICTS_POSTGRES: &str = "CREATE TABLE rn_conflicts (
        seq BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        entity TEXT NOT NULL,
        winner_id TEXT NOT NULL,
        winner_hlc BIGINT NOT NULL,
        loser_id TEXT NOT NULL,
        loser_hlc BIGINT NOT NULL,
        loser_payload TEXT NOT NULL
    )";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        component: "platform",
        version: 1,
        sqlite: "CREATE TABLE rn_commands (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('committed', 'rejected')),
        reason TEXT,
        origin_region TEXT NOT NULL,
        origin_node TEXT NOT NULL,
        applied_region TEXT NOT NULL,
        applied_node TEXT NOT NULL,
        hlc BIGINT NOT NULL,
        payload TEXT NOT NULL,
        via_queue BIGINT NOT NULL,
        applied_at_ms BIGINT NOT NULL
    );
    CREATE INDEX rn_commands_kind_hlc ON rn_commands (kind, hlc);",
        postgres: "CREATE TABLE rn_commands (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('committed', 'rejected')),
        reason TEXT,
        origin_region TEXT NOT NULL,
        origin_node TEXT NOT NULL,
        applied_region TEXT NOT NULL,
        applied_node TEXT NOT NULL,
        hlc BIGINT NOT NULL,
        payload TEXT NOT NULL,
        via_queue BIGINT NOT NULL,
        applied_at_ms BIGINT NOT NULL
    );
    CREATE INDEX rn_commands_kind_hlc ON rn_commands (kind, hlc);",
    },
    Migration { component: "platform", version: 2, sqlite: OUTBOX_SQLITE, postgres: OUTBOX_POSTGRES },
    Migration { component: "platform", version: 3, sqlite: CONFLICTS_SQLITE, postgres: CONFLICTS_POSTGRES },
    Migration { component: "platform", version: 4, sqlite: OWNERS, postgres: OWNERS },
    Migration { component: "platform", version: 5, sqlite: REQUESTS, postgres: REQUESTS },
];

/// Version 5: keyed requests (`requests`). A request's commands carry its id, unique, so the same
/// request is applied once; the first answer to each key, for replays.
const REQUESTS: &str = "ALTER TABLE rn_commands ADD COLUMN request_id TEXT;
    CREATE UNIQUE INDEX rn_commands_request ON rn_commands (request_id);
    CREATE TABLE rn_request_answers (
        scope TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        status BIGINT NOT NULL,
        content_type TEXT,
        location TEXT,
        body TEXT NOT NULL,
        recorded_at_ms BIGINT NOT NULL
    );
    CREATE INDEX rn_request_answers_recorded ON rn_request_answers (recorded_at_ms)";

/// Who acts for each region's `global` and `home` writes (see `ownership`).
const OWNERS: &str = "CREATE TABLE rn_owners (
        region TEXT PRIMARY KEY,
        acting TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        effective_at_ms BIGINT NOT NULL
    )";
