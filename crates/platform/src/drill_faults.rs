//! Test builds only (feature `drill-faults`): faults that break the platform's promise on purpose,
//! once, so a drill's checker can be shown to catch a lost or a doubled acknowledged write.
//!
//! `RANANEETI_TEST_FAULT="drop NODE KIND N"` rolls back the apply of the (N+1)th command of
//! `KIND` applied by node `NODE` and still answers it *committed*; `"double NODE KIND N"` applies
//! that command's effect a second time in the same transaction, under another id (as a lost
//! dedup record would). Several faults are separated by `;`. Each fires once per process.

use crate::command::{Command, CommandHandler};
use crate::id::CommandId;
use sqlx::{Any, Transaction};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const VARIABLE: &str = "RANANEETI_TEST_FAULT";

#[derive(Debug, PartialEq)]
enum Action {
    Drop,
    Double,
}

#[derive(Debug)]
struct Fault {
    action: Action,
    node: String,
    kind: String,
    /// Applies of `kind` let through before the one that is hit.
    after: u64,
    seen: AtomicU64,
}

fn parse(text: &str) -> Vec<Fault> {
    text.split(';')
        .filter_map(|one| {
            let words: Vec<&str> = one.split_whitespace().collect();
            let [action, node, kind, after] = words.as_slice() else { return None };
            let action = match *action {
                "drop" => Action::Drop,
                "double" => Action::Double,
                _ => return None,
            };
            Some(Fault {
                action,
                node: node.to_string(),
                kind: kind.to_string(),
                after: after.parse().ok()?,
                seen: AtomicU64::new(0),
            })
        })
        .collect()
}

fn faults() -> &'static [Fault] {
    static FAULTS: OnceLock<Vec<Fault>> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let faults = std::env::var(VARIABLE).map(|text| parse(&text)).unwrap_or_default();
        for fault in &faults {
            tracing::warn!(?fault, "drill test fault armed");
        }
        faults
    })
}

/// Called after a command's apply succeeded, before COMMIT. `None`: the transaction was rolled
/// back and the write is to be answered *committed* anyway (dropped).
pub(crate) async fn before_commit(
    node: &str,
    handler: &dyn CommandHandler,
    command: &Command,
    mut tx: Transaction<'static, Any>,
) -> Result<Option<Transaction<'static, Any>>, sqlx::Error> {
    let hit = faults().iter().find(|fault| {
        fault.node == node && fault.kind == command.kind && fault.seen.fetch_add(1, Ordering::SeqCst) == fault.after
    });
    match hit.map(|fault| &fault.action) {
        None => Ok(Some(tx)),
        Some(Action::Drop) => {
            tx.rollback().await?;
            tracing::error!(id = %command.id, "drill test fault: dropped acknowledged write");
            Ok(None)
        }
        Some(Action::Double) => {
            let mut twin = command.clone();
            twin.id = CommandId::digest("drill-test-fault-twin", command.id.as_bytes());
            handler.apply_replicated(&twin, &mut tx).await?;
            tracing::error!(id = %command.id, "drill test fault: applied write twice");
            Ok(Some(tx))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_the_variable_and_bad_ones_are_ignored() {
        let faults = parse("drop r1-n1 cafe.reserve 20; double r1-n2 cafe.reserve 3;nonsense");
        assert_eq!(faults.len(), 2);
        assert_eq!(faults[0].action, Action::Drop);
        assert_eq!((faults[0].node.as_str(), faults[0].kind.as_str(), faults[0].after), ("r1-n1", "cafe.reserve", 20));
        assert_eq!(faults[1].action, Action::Double);
        assert!(parse("drop r1-n1 cafe.reserve").is_empty());
    }
}
