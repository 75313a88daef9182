//! The platform's own tables: the dedup record of every applied or rejected command.

use crate::store::Migration;

pub const MIGRATIONS: &[Migration] = &[Migration {
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
}];
