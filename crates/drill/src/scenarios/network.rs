//! Network faults between regions: a partition of the first region, replication cut everywhere.

use super::{FaultRun, Injected};
use crate::DrillError;
use serde_json::json;

pub(super) async fn partition(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let region = run.deployment.first_region();
    let what = format!(
        "region {} cut off from the other regions and the witness for {:.0} s",
        region.name,
        run.duration().as_secs_f64()
    );
    run.fault_now(&what);
    for node in &region.nodes {
        run.healer.set_fault(&node.url, json!({ "partition": "cut" }), json!({ "partition": "ok" })).await?;
    }
    run.hold(run.duration()).await?;
    run.healer.heal().await?;
    run.healed_now();
    Ok(Injected { what, restore: None })
}

pub(super) async fn replication_cut(run: &FaultRun<'_>) -> Result<Injected, DrillError> {
    let what = format!("replication cut on every node for {:.0} s", run.duration().as_secs_f64());
    run.fault_now(&what);
    for node in run.deployment.nodes() {
        run.healer.set_fault(&node.url, json!({ "replication": "cut" }), json!({ "replication": "ok" })).await?;
    }
    run.hold(run.duration()).await?;
    run.healer.heal().await?;
    run.healed_now();
    Ok(Injected { what, restore: None })
}
