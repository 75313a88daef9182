//! Store faults on the first region: down (PostgreSQL really stopped), flaky, slow.

use super::{FaultRun, Injected};
use crate::deployment::StoreKind;
use crate::DrillError;
use serde_json::{json, Value};

/// Sets `fault` on every node of the first region for the duration, then `{"db":"up"}`.
async fn on_first_region(run: &FaultRun<'_>, fault: Value, what: String) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    run.fault_now(&what);
    for node in &region.nodes {
        run.healer.set_fault(&node.url, fault.clone(), json!({ "db": "up" })).await?;
    }
    run.hold(run.duration()).await?;
    run.healer.heal().await?;
    run.healed_now();
    Ok(Injected { what, restore: None })
}

pub(super) async fn db_outage(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    let seconds = run.duration().as_secs_f64();
    match region.database.kind {
        StoreKind::Postgres => {
            let what = format!(
                "PostgreSQL of region {} stopped with pg_ctl stop -m immediate for {seconds:.0} s, then started",
                region.name
            );
            run.fault_now(&what);
            run.healer.stop_database(&region.database).await?;
            run.hold(run.duration()).await?;
            // Returns once the server accepts connections again: the database is back.
            run.healer.heal().await?;
            run.healed_now();
            Ok(Injected { what, restore: None })
        }
        StoreKind::Sqlite => {
            let what = format!(
                "store of region {} down for {seconds:.0} s (the store fault on its {} nodes: a SQLite file cannot be stopped)",
                region.name,
                region.nodes.len()
            );
            on_first_region(run, json!({ "db": "down" }), what).await
        }
    }
}

pub(super) async fn db_flaky(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    let what =
        format!("half of the store accesses of region {} fail for {:.0} s", region.name, run.duration().as_secs_f64());
    on_first_region(run, json!({ "db": { "flaky": 0.5 } }), what).await
}

/// Slower than half the budget: writes still commit, with the budget's margin nearly spent.
const SLOW_MS: u64 = 800;

pub(super) async fn db_slow(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    let what = format!(
        "every store access of region {} waits {SLOW_MS} ms for {:.0} s",
        region.name,
        run.duration().as_secs_f64()
    );
    on_first_region(run, json!({ "db": { "slow_ms": SLOW_MS } }), what).await
}
