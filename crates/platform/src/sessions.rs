//! Revoked sessions: a signed-out session's id is a write like any other (`rn.revoke_session`,
//! `local`: inserts commute), replicated to every region, so every node refuses the session until
//! it would have expired anyway. Sessions themselves are the apps' (signed tokens); this is only
//! the list of the ones that ended early.

use crate::command::{ApplyError, Command, CommandHandler, WritePattern};
use crate::id::CommandId;
use crate::platform::{Platform, StoreUnavailable, SubmitError, SubmitOptions, Submitted};
use crate::NewCommand;
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use std::time::Duration;

pub const KIND_REVOKE_SESSION: &str = "rn.revoke_session";

/// How long asking whether a session was revoked may take before the answer is "cannot say".
const REVOKED_READ_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RevokedSession {
    pub session_id: String,
    /// When the session would have expired by itself: the row is not needed after it.
    pub expires_at_ms: u64,
}

pub(crate) struct RevokeSessionHandler;

impl RevokeSessionHandler {
    fn record<'a>(command: &'a Command, connection: &'a mut AnyConnection) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let revoked: RevokedSession = serde_json::from_value(command.payload.clone())
                .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
            sqlx::query(
                "INSERT INTO rn_revoked_sessions (session_id, expires_at_ms) VALUES ($1, $2) \
                 ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(&revoked.session_id)
            .bind(revoked.expires_at_ms as i64)
            .execute(&mut *connection)
            .await?;
            // Rows of sessions that have expired anyway go, by the command's own clock (apply
            // reads no wall clock).
            sqlx::query("DELETE FROM rn_revoked_sessions WHERE expires_at_ms < $1")
                .bind((command.hlc.0 >> 16) as i64)
                .execute(&mut *connection)
                .await?;
            Ok(())
        })
    }
}

impl CommandHandler for RevokeSessionHandler {
    fn kind(&self) -> &'static str {
        KIND_REVOKE_SESSION
    }

    fn write_pattern(&self) -> WritePattern {
        // A revocation only adds to a set: any region takes it, in any order.
        WritePattern::Local
    }

    fn apply<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move { Self::record(command, connection).await.map_err(ApplyError::Store) })
    }

    fn apply_replicated<'a>(
        &'a self,
        command: &'a Command,
        connection: &'a mut AnyConnection,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Self::record(command, connection)
    }
}

fn revocation_id(session_id: &str) -> CommandId {
    CommandId::digest(KIND_REVOKE_SESSION, session_id.as_bytes())
}

impl Platform {
    /// Ends a session everywhere: committed, or queued (and then refused by this node at once).
    pub async fn revoke_session(&self, session_id: &str, expires_at_ms: u64) -> Result<Submitted, SubmitError> {
        let payload = RevokedSession { session_id: session_id.to_string(), expires_at_ms };
        let command = NewCommand {
            kind: KIND_REVOKE_SESSION,
            id: revocation_id(session_id),
            payload: serde_json::to_value(&payload).expect("a revocation serializes"),
        };
        self.submit(command, SubmitOptions::default()).await
    }

    /// Whether a session was revoked: a revocation waiting in this node's queue, else the
    /// region's database (another region's while this one fails). `Err` when neither could say
    /// within `REVOKED_READ_TIMEOUT`.
    pub async fn session_revoked(&self, session_id: &str) -> Result<bool, StoreUnavailable> {
        if self.queued_command(&revocation_id(session_id)).is_some() {
            return Ok(true);
        }
        let read = async {
            let chosen = self.read_pool().await?;
            let row = sqlx::query("SELECT 1 AS revoked FROM rn_revoked_sessions WHERE session_id = $1")
                .bind(session_id)
                .fetch_optional(&chosen.pool)
                .await
                .map_err(crate::store::StoreError::from)?;
            Ok::<bool, StoreUnavailable>(row.is_some())
        };
        match tokio::time::timeout(REVOKED_READ_TIMEOUT, read).await {
            Ok(answer) => answer,
            Err(_elapsed) => Err(StoreUnavailable::Timeout),
        }
    }
}
