//! The access tables, API tokens and the tick record, in SQL both backends accept; the
//! macro stamps one implementation per store, as `sql.rs` does for runs.

macro_rules! impl_access_store {
    ($store:ident, $db:ty) => {
        mod access_impl {
            use std::collections::BTreeSet;

            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use sqlx::types::Json;
            use sqlx::{QueryBuilder, Row};
            use uuid::Uuid;

            use super::$store;
            use crate::access::{AccessFacts, AccessFile, AccessStore, ApplyReport, Request};
            use crate::ticks::{TickDecision, TickRecord, TickStore};
            use crate::tokens::TokenStore;
            use crate::store::StoreError;

            /// `UPDATE table SET status = 'to' WHERE id NOT IN (listed)`.
            async fn retire(
                tx: &mut <$db as sqlx::Database>::Connection,
                table: &str,
                to: &str,
                listed: Vec<String>,
            ) -> Result<usize, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!("UPDATE {table} SET status = "));
                q.push_bind(to.to_string()).push(" WHERE status <> ").push_bind(to.to_string());
                if !listed.is_empty() {
                    q.push(" AND id NOT IN (");
                    let mut sep = q.separated(", ");
                    for id in listed {
                        sep.push_bind(id);
                    }
                    sep.push_unseparated(")");
                }
                Ok(q.build().execute(&mut *tx).await?.rows_affected() as usize)
            }

            /// A tick row as read back.
            fn tick_record(r: &<$db as sqlx::Database>::Row, schedule: &str) -> Result<TickRecord, StoreError> {
                let decision: String = r.try_get("decision")?;
                let ids: Json<Vec<Uuid>> = r.try_get("run_ids")?;
                let details: Json<serde_json::Value> = r.try_get("details")?;
                Ok(TickRecord {
                    schedule: r.try_get("schedule")?,
                    scheduled_for: r.try_get("scheduled_for")?,
                    decision: decision.parse().map_err(|e: crate::lifecycle::ParseEnumError| StoreError::Corrupt {
                        id: format!("tick:{schedule}"),
                        field: "decision",
                        problem: e.to_string(),
                    })?,
                    run_ids: ids.0,
                    details: details.0,
                    decided_by: r.try_get("decided_by")?,
                    decided_at: r.try_get("decided_at")?,
                })
            }

            #[async_trait]
            impl AccessStore for $store {
                async fn apply_access(&self, file: &AccessFile) -> Result<ApplyReport, StoreError> {
                    let mut tx = self.begin_write().await?;
                    let mut report = ApplyReport::default();
                    for a in &file.actors {
                        sqlx::query(
                            "INSERT INTO actors (id, kind, display_name, status) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, \
                             display_name = excluded.display_name, status = excluded.status",
                        )
                        .bind(&a.id)
                        .bind(a.kind.as_str())
                        .bind(&a.display_name)
                        .bind(a.status.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    report.actors = file.actors.len();
                    report.actors_disabled =
                        retire(&mut tx, "actors", "disabled", file.actors.iter().map(|a| a.id.clone()).collect())
                            .await?;
                    for w in &file.workspaces {
                        let name = if w.name.is_empty() { &w.id } else { &w.name };
                        sqlx::query(
                            "INSERT INTO workspaces (id, name, status) VALUES ($1, $2, $3) \
                             ON CONFLICT (id) DO UPDATE SET name = excluded.name, status = excluded.status",
                        )
                        .bind(&w.id)
                        .bind(name)
                        .bind(w.status.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    report.workspaces = file.workspaces.len();
                    report.workspaces_suspended = retire(
                        &mut tx,
                        "workspaces",
                        "suspended",
                        file.workspaces.iter().map(|w| w.id.clone()).collect(),
                    )
                    .await?;
                    for e in &file.environments {
                        let name = if e.name.is_empty() { &e.id } else { &e.name };
                        sqlx::query(
                            "INSERT INTO environments (id, workspace_id, name, status) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (id) DO UPDATE SET workspace_id = excluded.workspace_id, \
                             name = excluded.name, status = excluded.status",
                        )
                        .bind(&e.id)
                        .bind(&e.workspace)
                        .bind(name)
                        .bind(e.status.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    report.environments = file.environments.len();
                    report.environments_offboarded = retire(
                        &mut tx,
                        "environments",
                        "offboarded",
                        file.environments.iter().map(|e| e.id.clone()).collect(),
                    )
                    .await?;
                    for statement in [
                        "DELETE FROM memberships",
                        "DELETE FROM role_capabilities",
                        "DELETE FROM roles",
                        "DELETE FROM provider_connections",
                    ] {
                        sqlx::query(statement).execute(&mut *tx).await?;
                    }
                    for (role, caps) in &file.roles {
                        sqlx::query("INSERT INTO roles (name) VALUES ($1)").bind(role).execute(&mut *tx).await?;
                        for cap in caps.iter().collect::<BTreeSet<_>>() {
                            sqlx::query("INSERT INTO role_capabilities (role, capability) VALUES ($1, $2)")
                                .bind(role)
                                .bind(cap)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                    report.roles = file.roles.len();
                    for m in &file.memberships {
                        sqlx::query("INSERT INTO memberships (actor_id, workspace_id, role) VALUES ($1, $2, $3)")
                            .bind(&m.actor)
                            .bind(&m.workspace)
                            .bind(&m.role)
                            .execute(&mut *tx)
                            .await?;
                    }
                    report.memberships = file.memberships.len();
                    for c in &file.provider_connections {
                        sqlx::query(
                            "INSERT INTO provider_connections (id, environment_id, provider, status) \
                             VALUES ($1, $2, $3, $4)",
                        )
                        .bind(c.id())
                        .bind(&c.environment)
                        .bind(&c.provider)
                        .bind(c.status.as_str())
                        .execute(&mut *tx)
                        .await?;
                    }
                    report.provider_connections = file.provider_connections.len();
                    tx.commit().await?;
                    Ok(report)
                }

                async fn access_facts(&self, req: &Request<'_>) -> Result<AccessFacts, StoreError> {
                    let row = sqlx::query(
                        "SELECT \
                           (SELECT status FROM actors WHERE id = $1) AS actor_status, \
                           (SELECT COUNT(*) FROM memberships m JOIN role_capabilities rc ON rc.role = m.role \
                              WHERE m.actor_id = $1 AND m.workspace_id = $2 AND rc.capability = $3) AS caps, \
                           (SELECT status FROM workspaces WHERE id = $2) AS workspace_status, \
                           (SELECT workspace_id FROM environments WHERE id = $4) AS environment_workspace, \
                           (SELECT status FROM environments WHERE id = $4) AS environment_status, \
                           (SELECT status FROM provider_connections WHERE environment_id = $4 AND provider = $5) \
                              AS connection_status",
                    )
                    .bind(req.actor_id)
                    .bind(&req.scope.workspace_id)
                    .bind(req.capability)
                    .bind(req.scope.environment_id.as_deref())
                    .bind(req.provider)
                    .fetch_one(&self.pool)
                    .await?;
                    let caps: i64 = row.try_get("caps")?;
                    Ok(AccessFacts {
                        actor_status: row.try_get("actor_status")?,
                        has_capability: caps > 0,
                        workspace_status: row.try_get("workspace_status")?,
                        environment_workspace: row.try_get("environment_workspace")?,
                        environment_status: row.try_get("environment_status")?,
                        connection_status: row.try_get("connection_status")?,
                    })
                }

                async fn capabilities(
                    &self,
                    actor_id: &str,
                    workspace_id: &str,
                ) -> Result<BTreeSet<String>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT DISTINCT rc.capability FROM memberships m \
                         JOIN role_capabilities rc ON rc.role = m.role \
                         JOIN actors a ON a.id = m.actor_id AND a.status = 'active' \
                         JOIN workspaces w ON w.id = m.workspace_id AND w.status = 'active' \
                         WHERE m.actor_id = $1 AND m.workspace_id = $2",
                    )
                    .bind(actor_id)
                    .bind(workspace_id)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(StoreError::from)).collect()
                }

                async fn actor_kind(&self, actor_id: &str) -> Result<Option<String>, StoreError> {
                    let row = sqlx::query("SELECT kind FROM actors WHERE id = $1")
                        .bind(actor_id)
                        .fetch_optional(&self.pool)
                        .await?;
                    Ok(row.map(|r| r.try_get(0)).transpose()?)
                }

                async fn workspaces_with(&self, actor_id: &str, capability: &str) -> Result<Vec<String>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT DISTINCT m.workspace_id FROM memberships m \
                         JOIN role_capabilities rc ON rc.role = m.role AND rc.capability = $2 \
                         JOIN actors a ON a.id = m.actor_id AND a.status = 'active' \
                         JOIN workspaces w ON w.id = m.workspace_id AND w.status = 'active' \
                         WHERE m.actor_id = $1 ORDER BY m.workspace_id",
                    )
                    .bind(actor_id)
                    .bind(capability)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(StoreError::from)).collect()
                }

                async fn active_workspaces(&self) -> Result<Vec<String>, StoreError> {
                    let rows = sqlx::query("SELECT id FROM workspaces WHERE status = 'active' ORDER BY id")
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(StoreError::from)).collect()
                }

                async fn operable_environments(&self, workspace_id: &str) -> Result<Vec<String>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT id FROM environments WHERE workspace_id = $1 AND status = 'active' ORDER BY id",
                    )
                    .bind(workspace_id)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(|r| r.try_get::<String, _>(0).map_err(StoreError::from)).collect()
                }

            }

            #[async_trait]
            impl TokenStore for $store {
                async fn create_token(
                    &self,
                    id: &str,
                    token_hash: &str,
                    actor_id: &str,
                    now: DateTime<Utc>,
                    expires_at: Option<DateTime<Utc>>,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO api_tokens (id, token_hash, actor_id, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id)
                    .bind(token_hash)
                    .bind(actor_id)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn revoke_token(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
                    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                        .bind(id)
                        .bind(now)
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn token_actor(
                    &self,
                    token_hash: &str,
                    now: DateTime<Utc>,
                ) -> Result<Option<String>, StoreError> {
                    let row = sqlx::query(
                        "SELECT t.actor_id FROM api_tokens t JOIN actors a ON a.id = t.actor_id \
                         WHERE t.token_hash = $1 AND t.revoked_at IS NULL \
                         AND (t.expires_at IS NULL OR t.expires_at > $2) AND a.status = 'active'",
                    )
                    .bind(token_hash)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(row.map(|r| r.try_get(0)).transpose()?)
                }

            }

            #[async_trait]
            impl TickStore for $store {
                async fn claim_tick(
                    &self,
                    schedule: &str,
                    scheduled_for: DateTime<Utc>,
                    decision: TickDecision,
                    decided_by: &str,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "INSERT INTO schedule_ticks (schedule, scheduled_for, decision, decided_by, decided_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (schedule, scheduled_for) DO NOTHING",
                    )
                    .bind(schedule)
                    .bind(scheduled_for)
                    .bind(decision.as_str())
                    .bind(decided_by)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn decide_tick(
                    &self,
                    schedule: &str,
                    scheduled_for: DateTime<Utc>,
                    decision: TickDecision,
                    run_ids: &[Uuid],
                    details: &serde_json::Value,
                ) -> Result<(), StoreError> {
                    let ids: Vec<String> = run_ids.iter().map(Uuid::to_string).collect();
                    sqlx::query(
                        "UPDATE schedule_ticks SET decision = $3, run_ids = $4, details = $5 \
                         WHERE schedule = $1 AND scheduled_for = $2",
                    )
                    .bind(schedule)
                    .bind(scheduled_for)
                    .bind(decision.as_str())
                    .bind(Json(serde_json::json!(ids)))
                    .bind(Json(details.clone()))
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn progress_tick(
                    &self,
                    schedule: &str,
                    scheduled_for: DateTime<Utc>,
                    decided_by: &str,
                    run_ids: &[Uuid],
                    details: &serde_json::Value,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let ids: Vec<String> = run_ids.iter().map(Uuid::to_string).collect();
                    let done = sqlx::query(
                        "UPDATE schedule_ticks SET run_ids = $4, details = $5, decided_at = $6 \
                         WHERE schedule = $1 AND scheduled_for = $2 AND decided_by = $3 AND decision = 'claimed'",
                    )
                    .bind(schedule)
                    .bind(scheduled_for)
                    .bind(decided_by)
                    .bind(Json(serde_json::json!(ids)))
                    .bind(Json(details.clone()))
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn reclaim_abandoned_ticks(
                    &self,
                    schedule: &str,
                    claimed_before: DateTime<Utc>,
                    decided_by: &str,
                    now: DateTime<Utc>,
                ) -> Result<Vec<TickRecord>, StoreError> {
                    let rows = sqlx::query(
                        "UPDATE schedule_ticks SET decided_by = $3, decided_at = $4 \
                         WHERE schedule = $1 AND decision = 'claimed' AND (decided_at < $2 OR decided_by = $3) \
                         RETURNING schedule, scheduled_for, decision, run_ids, details, decided_by, decided_at",
                    )
                    .bind(schedule)
                    .bind(claimed_before)
                    .bind(decided_by)
                    .bind(now)
                    .fetch_all(&self.pool)
                    .await?;
                    let mut ticks = rows.iter().map(|r| tick_record(r, schedule)).collect::<Result<Vec<_>, _>>()?;
                    ticks.sort_by_key(|t| t.scheduled_for);
                    Ok(ticks)
                }

                async fn last_tick(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
                    let row = sqlx::query(
                        "SELECT scheduled_for FROM schedule_ticks WHERE schedule = $1 \
                         ORDER BY scheduled_for DESC LIMIT 1",
                    )
                    .bind(schedule)
                    .fetch_optional(&self.pool)
                    .await?;
                    Ok(row.map(|r| r.try_get(0)).transpose()?)
                }

                async fn ticks(&self, schedule: &str, limit: u32) -> Result<Vec<TickRecord>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT schedule, scheduled_for, decision, run_ids, details, decided_by, decided_at \
                         FROM schedule_ticks WHERE schedule = $1 ORDER BY scheduled_for DESC LIMIT $2",
                    )
                    .bind(schedule)
                    .bind(i64::from(limit.min(crate::store::MAX_PAGE)))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(|r| tick_record(r, schedule)).collect()
                }
            }
        }
    };
}
pub(crate) use impl_access_store;
