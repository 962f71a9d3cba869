//! The access tables, API tokens and schedule ticks over a [`Backend`]: each
//! store method runs the statement named beside it.

use std::collections::BTreeSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Backend, Cols, SqlStore, Stmt};
use crate::access::{AccessFacts, AccessFile, AccessStore, ApplyReport, Request};
use crate::store::{MAX_PAGE, StoreError};
use crate::ticks::{ScheduleState, Settlement, TickDecision, TickRecord, TickStore};
use crate::tokens::TokenStore;

const UPSERT_ACTOR: &str = "INSERT INTO actors (id, kind, display_name, status) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, display_name = excluded.display_name, status = excluded.status";

const UPSERT_WORKSPACE: &str = "INSERT INTO workspaces (id, name, status) VALUES ($1, $2, $3) \
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, status = excluded.status";

const UPSERT_ENVIRONMENT: &str = "INSERT INTO environments (id, workspace_id, name, status) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (id) DO UPDATE SET workspace_id = excluded.workspace_id, name = excluded.name, status = excluded.status";

/// What an access file replaces as a whole.
const CLEAR_GRANTS: [&str; 4] = [
    "DELETE FROM memberships",
    "DELETE FROM role_capabilities",
    "DELETE FROM roles",
    "DELETE FROM provider_connections",
];

const INSERT_ROLE: &str = "INSERT INTO roles (name) VALUES ($1)";

const INSERT_ROLE_CAPABILITY: &str = "INSERT INTO role_capabilities (role, capability) VALUES ($1, $2)";

const INSERT_MEMBERSHIP: &str = "INSERT INTO memberships (actor_id, workspace_id, role) VALUES ($1, $2, $3)";

const INSERT_CONNECTION: &str =
    "INSERT INTO provider_connections (id, environment_id, provider, status) VALUES ($1, $2, $3, $4)";

/// Everything a decision needs, in one round trip: $1 actor, $2 workspace,
/// $3 capability, $4 environment, $5 provider.
const SELECT_ACCESS_FACTS: &str = "SELECT \
    (SELECT status FROM actors WHERE id = $1) AS actor_status, \
    (SELECT COUNT(*) FROM memberships m JOIN role_capabilities rc ON rc.role = m.role \
       WHERE m.actor_id = $1 AND m.workspace_id = $2 AND rc.capability = $3) AS caps, \
    (SELECT status FROM workspaces WHERE id = $2) AS workspace_status, \
    (SELECT workspace_id FROM environments WHERE id = $4) AS environment_workspace, \
    (SELECT status FROM environments WHERE id = $4) AS environment_status, \
    (SELECT status FROM provider_connections WHERE environment_id = $4 AND provider = $5) AS connection_status";

const SELECT_CAPABILITIES: &str = "SELECT DISTINCT rc.capability AS capability FROM memberships m \
    JOIN role_capabilities rc ON rc.role = m.role \
    JOIN actors a ON a.id = m.actor_id AND a.status = 'active' \
    JOIN workspaces w ON w.id = m.workspace_id AND w.status = 'active' \
    WHERE m.actor_id = $1 AND m.workspace_id = $2";

const SELECT_ACTOR_KIND: &str = "SELECT kind FROM actors WHERE id = $1";

const SELECT_WORKSPACES_WITH: &str = "SELECT DISTINCT m.workspace_id AS workspace_id FROM memberships m \
    JOIN role_capabilities rc ON rc.role = m.role AND rc.capability = $2 \
    JOIN actors a ON a.id = m.actor_id AND a.status = 'active' \
    JOIN workspaces w ON w.id = m.workspace_id AND w.status = 'active' \
    WHERE m.actor_id = $1 ORDER BY m.workspace_id";

const SELECT_ACTIVE_WORKSPACES: &str = "SELECT id FROM workspaces WHERE status = 'active' ORDER BY id";

const SELECT_OPERABLE_ENVIRONMENTS: &str =
    "SELECT id FROM environments WHERE workspace_id = $1 AND status = 'active' ORDER BY id";

const INSERT_TOKEN: &str =
    "INSERT INTO api_tokens (id, token_hash, actor_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";

const REVOKE_TOKEN: &str = "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";

const SELECT_TOKEN_ACTOR: &str = "SELECT t.actor_id AS actor_id FROM api_tokens t JOIN actors a ON a.id = t.actor_id \
    WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2) \
    AND a.status = 'active'";

const INSERT_TICK: &str = "INSERT INTO schedule_ticks (schedule, scheduled_for, decision, decided_by, decided_at) \
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (schedule, scheduled_for) DO NOTHING";

const DECIDE_TICK: &str = "UPDATE schedule_ticks SET decision = $3, run_ids = $4, details = $5 \
    WHERE schedule = $1 AND scheduled_for = $2";

const PROGRESS_TICK: &str = "UPDATE schedule_ticks SET run_ids = $4, details = $5, decided_at = $6 \
    WHERE schedule = $1 AND scheduled_for = $2 AND decided_by = $3 AND decision = 'claimed'";

const TICK_COLUMNS: &str =
    "schedule, scheduled_for, decision, run_ids, details, decided_by, decided_at, settled, clean";

fn reclaim_ticks() -> String {
    format!(
        "UPDATE schedule_ticks SET decided_by = $3, decided_at = $4 \
         WHERE schedule = $1 AND decision = 'claimed' AND (decided_at < $2 OR decided_by = $3) RETURNING {TICK_COLUMNS}"
    )
}

fn select_ticks() -> String {
    format!("SELECT {TICK_COLUMNS} FROM schedule_ticks WHERE schedule = $1 ORDER BY scheduled_for DESC LIMIT $2")
}

const SELECT_STREAK: &str = "SELECT clean_streak FROM schedule_state WHERE schedule = $1";

const UPSERT_STREAK: &str = "INSERT INTO schedule_state (schedule, clean_streak, settled_through, updated_at) \
    VALUES ($1, $2, $3, $4) ON CONFLICT (schedule) DO UPDATE SET clean_streak = excluded.clean_streak, \
    settled_through = excluded.settled_through, updated_at = excluded.updated_at";

const SELECT_STATES: &str = "SELECT schedule, paused_at, paused_by, pause_note, clean_streak, settled_through \
    FROM schedule_state ORDER BY schedule";

/// Pause a schedule that is not paused (a row is written either way the
/// first time).
const PAUSE: &str = "INSERT INTO schedule_state (schedule, paused_at, paused_by, pause_note, updated_at) \
    VALUES ($1, $2, $3, $4, $2) ON CONFLICT (schedule) DO UPDATE SET paused_at = excluded.paused_at, \
    paused_by = excluded.paused_by, pause_note = excluded.pause_note, updated_at = excluded.updated_at \
    WHERE schedule_state.paused_at IS NULL";

const RESUME: &str = "UPDATE schedule_state SET paused_at = NULL, paused_by = NULL, pause_note = NULL, updated_at = $2 \
    WHERE schedule = $1 AND paused_at IS NOT NULL";

const SELECT_LAST_TICK: &str =
    "SELECT scheduled_for FROM schedule_ticks WHERE schedule = $1 ORDER BY scheduled_for DESC LIMIT 1";

/// `UPDATE table SET status = 'to' WHERE id NOT IN (listed)`: what an access
/// file no longer lists is retired, not deleted.
fn retire(table: &str, to: &str, listed: Vec<String>) -> Stmt {
    let mut q = Stmt::new(format!("UPDATE {table} SET status = "));
    q.bind(to).push(" WHERE status <> ").bind(to);
    if !listed.is_empty() {
        q.push(" AND id NOT IN ").bind_list(listed);
    }
    q
}

/// A tick row as read back.
fn tick_record(r: &impl Cols, schedule: &str) -> Result<TickRecord, StoreError> {
    let corrupt =
        |field: &'static str, problem: String| StoreError::Corrupt { id: format!("tick:{schedule}"), field, problem };
    Ok(TickRecord {
        schedule: r.text("schedule")?,
        scheduled_for: r.time("scheduled_for")?,
        decision: r
            .text("decision")?
            .parse()
            .map_err(|e: crate::lifecycle::ParseEnumError| corrupt("decision", e.to_string()))?,
        run_ids: serde_json::from_value(r.json("run_ids")?).map_err(|e| corrupt("run_ids", e.to_string()))?,
        details: r.json("details")?,
        decided_by: r.text("decided_by")?,
        decided_at: r.time("decided_at")?,
        clean: r.opt_int("clean")?.map(|c| c != 0),
        settled: r.int("settled")? != 0,
    })
}

/// Run ids as a tick stores them (a JSON list of strings).
fn run_ids_json(run_ids: &[Uuid]) -> serde_json::Value {
    serde_json::json!(run_ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
}

impl<B: Backend> SqlStore<B> {
    /// One text column of every row `stmt` returns.
    async fn texts(&self, stmt: Stmt, col: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.fetch(stmt).await?.iter().map(|r| r.text(col)).collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl<B: Backend> AccessStore for SqlStore<B> {
    async fn apply_access(&self, file: &AccessFile) -> Result<ApplyReport, StoreError> {
        let mut tx = B::begin_write(&self.pool).await?;
        let mut report = ApplyReport::default();
        for a in &file.actors {
            let stmt =
                Stmt::new(UPSERT_ACTOR).arg(&a.id).arg(a.kind.as_str()).arg(&a.display_name).arg(a.status.as_str());
            B::execute(&mut tx, stmt).await?;
        }
        report.actors = file.actors.len();
        let listed = file.actors.iter().map(|a| a.id.clone()).collect();
        report.actors_disabled = B::execute(&mut tx, retire("actors", "disabled", listed)).await? as usize;
        for w in &file.workspaces {
            let name = if w.name.is_empty() { &w.id } else { &w.name };
            B::execute(&mut tx, Stmt::new(UPSERT_WORKSPACE).arg(&w.id).arg(name).arg(w.status.as_str())).await?;
        }
        report.workspaces = file.workspaces.len();
        let listed = file.workspaces.iter().map(|w| w.id.clone()).collect();
        report.workspaces_suspended = B::execute(&mut tx, retire("workspaces", "suspended", listed)).await? as usize;
        for e in &file.environments {
            let name = if e.name.is_empty() { &e.id } else { &e.name };
            let stmt = Stmt::new(UPSERT_ENVIRONMENT).arg(&e.id).arg(&e.workspace).arg(name).arg(e.status.as_str());
            B::execute(&mut tx, stmt).await?;
        }
        report.environments = file.environments.len();
        let listed = file.environments.iter().map(|e| e.id.clone()).collect();
        report.environments_offboarded =
            B::execute(&mut tx, retire("environments", "offboarded", listed)).await? as usize;
        for statement in CLEAR_GRANTS {
            B::execute(&mut tx, Stmt::new(statement)).await?;
        }
        for (role, caps) in &file.roles {
            B::execute(&mut tx, Stmt::new(INSERT_ROLE).arg(role)).await?;
            for cap in caps.iter().collect::<BTreeSet<_>>() {
                B::execute(&mut tx, Stmt::new(INSERT_ROLE_CAPABILITY).arg(role).arg(cap)).await?;
            }
        }
        report.roles = file.roles.len();
        for m in &file.memberships {
            B::execute(&mut tx, Stmt::new(INSERT_MEMBERSHIP).arg(&m.actor).arg(&m.workspace).arg(&m.role)).await?;
        }
        report.memberships = file.memberships.len();
        for c in &file.provider_connections {
            let stmt =
                Stmt::new(INSERT_CONNECTION).arg(c.id()).arg(&c.environment).arg(&c.provider).arg(c.status.as_str());
            B::execute(&mut tx, stmt).await?;
        }
        report.provider_connections = file.provider_connections.len();
        tx.commit().await?;
        Ok(report)
    }

    async fn access_facts(&self, req: &Request<'_>) -> Result<AccessFacts, StoreError> {
        let stmt = Stmt::new(SELECT_ACCESS_FACTS)
            .arg(req.actor_id)
            .arg(&req.scope.workspace_id)
            .arg(req.capability)
            .arg(req.scope.environment_id.as_deref())
            .arg(req.provider);
        let rows = self.fetch(stmt).await?;
        let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
        Ok(AccessFacts {
            actor_status: row.opt_text("actor_status")?,
            has_capability: row.bigint("caps")? > 0,
            workspace_status: row.opt_text("workspace_status")?,
            environment_workspace: row.opt_text("environment_workspace")?,
            environment_status: row.opt_text("environment_status")?,
            connection_status: row.opt_text("connection_status")?,
        })
    }

    async fn capabilities(&self, actor_id: &str, workspace_id: &str) -> Result<BTreeSet<String>, StoreError> {
        let stmt = Stmt::new(SELECT_CAPABILITIES).arg(actor_id).arg(workspace_id);
        Ok(self.texts(stmt, "capability").await?.into_iter().collect())
    }

    async fn actor_kind(&self, actor_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.texts(Stmt::new(SELECT_ACTOR_KIND).arg(actor_id), "kind").await?.into_iter().next())
    }

    async fn workspaces_with(&self, actor_id: &str, capability: &str) -> Result<Vec<String>, StoreError> {
        self.texts(Stmt::new(SELECT_WORKSPACES_WITH).arg(actor_id).arg(capability), "workspace_id").await
    }

    async fn active_workspaces(&self) -> Result<Vec<String>, StoreError> {
        self.texts(Stmt::new(SELECT_ACTIVE_WORKSPACES), "id").await
    }

    async fn operable_environments(&self, workspace_id: &str) -> Result<Vec<String>, StoreError> {
        self.texts(Stmt::new(SELECT_OPERABLE_ENVIRONMENTS).arg(workspace_id), "id").await
    }
}

#[async_trait]
impl<B: Backend> TokenStore for SqlStore<B> {
    async fn create_token(
        &self,
        id: &str,
        token_hash: &str,
        actor_id: &str,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        self.execute(Stmt::new(INSERT_TOKEN).arg(id).arg(token_hash).arg(actor_id).arg(now).arg(expires_at)).await?;
        Ok(())
    }

    async fn revoke_token(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self.execute(Stmt::new(REVOKE_TOKEN).arg(id).arg(now)).await? == 1)
    }

    async fn token_actor(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<String>, StoreError> {
        Ok(self.texts(Stmt::new(SELECT_TOKEN_ACTOR).arg(token_hash).arg(now), "actor_id").await?.into_iter().next())
    }
}

#[async_trait]
impl<B: Backend> TickStore for SqlStore<B> {
    async fn claim_tick(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        decision: TickDecision,
        decided_by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let stmt =
            Stmt::new(INSERT_TICK).arg(schedule).arg(scheduled_for).arg(decision.as_str()).arg(decided_by).arg(now);
        Ok(self.execute(stmt).await? == 1)
    }

    async fn decide_tick(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        decision: TickDecision,
        run_ids: &[Uuid],
        details: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let stmt = Stmt::new(DECIDE_TICK)
            .arg(schedule)
            .arg(scheduled_for)
            .arg(decision.as_str())
            .arg(run_ids_json(run_ids))
            .arg(details.clone());
        self.execute(stmt).await?;
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
        let stmt = Stmt::new(PROGRESS_TICK)
            .arg(schedule)
            .arg(scheduled_for)
            .arg(decided_by)
            .arg(run_ids_json(run_ids))
            .arg(details.clone())
            .arg(now);
        Ok(self.execute(stmt).await? == 1)
    }

    async fn reclaim_abandoned_ticks(
        &self,
        schedule: &str,
        claimed_before: DateTime<Utc>,
        decided_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<TickRecord>, StoreError> {
        let stmt = Stmt::new(reclaim_ticks()).arg(schedule).arg(claimed_before).arg(decided_by).arg(now);
        let mut ticks =
            self.fetch(stmt).await?.iter().map(|r| tick_record(r, schedule)).collect::<Result<Vec<_>, _>>()?;
        ticks.sort_by_key(|t| t.scheduled_for);
        Ok(ticks)
    }

    async fn last_tick(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let rows = self.fetch(Stmt::new(SELECT_LAST_TICK).arg(schedule)).await?;
        Ok(rows.first().map(|r| r.time("scheduled_for")).transpose()?)
    }

    async fn ticks(&self, schedule: &str, limit: u32) -> Result<Vec<TickRecord>, StoreError> {
        let stmt = Stmt::new(select_ticks()).arg(schedule).arg(i64::from(limit.min(MAX_PAGE)));
        self.fetch(stmt).await?.iter().map(|r| tick_record(r, schedule)).collect()
    }

    async fn unsettled_ticks(&self, schedule: &str, limit: u32) -> Result<Vec<TickRecord>, StoreError> {
        let stmt = Stmt::new(format!(
            "SELECT {TICK_COLUMNS} FROM schedule_ticks WHERE schedule = $1 AND settled = 0 ORDER BY scheduled_for LIMIT $2"
        ))
        .arg(schedule)
        .arg(i64::from(limit.clamp(1, MAX_PAGE)));
        self.fetch(stmt).await?.iter().map(|r| tick_record(r, schedule)).collect()
    }

    async fn settle_ticks(
        &self,
        schedule: &str,
        settled: &[Settlement],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let Some(newest) = settled.iter().map(|s| s.0).max() else { return Ok(true) };
        let mut tx = B::begin_write(&self.pool).await?;
        for (at, clean) in settled {
            let stmt = Stmt::new(
                "UPDATE schedule_ticks SET settled = 1, clean = $3 WHERE schedule = $1 AND scheduled_for = $2 AND settled = 0",
            )
            .arg(schedule)
            .arg(*at)
            .arg(clean.map(i32::from));
            if B::execute(&mut tx, stmt).await? != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        let rows = B::fetch(&mut tx, Stmt::new(SELECT_STREAK).arg(schedule)).await?;
        let mut streak = rows.first().map(|r| r.int("clean_streak")).transpose()?.unwrap_or(0);
        for (_, clean) in settled {
            match clean {
                Some(true) => streak = streak.saturating_add(1),
                Some(false) => streak = 0,
                None => {}
            }
        }
        B::execute(&mut tx, Stmt::new(UPSERT_STREAK).arg(schedule).arg(streak).arg(newest).arg(now)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn schedule_states(&self) -> Result<Vec<ScheduleState>, StoreError> {
        let rows = self.fetch(Stmt::new(SELECT_STATES)).await?;
        rows.iter()
            .map(|r| {
                Ok(ScheduleState {
                    schedule: r.text("schedule")?,
                    paused_at: r.opt_time("paused_at")?,
                    paused_by: r.opt_text("paused_by")?,
                    pause_note: r.opt_text("pause_note")?,
                    clean_streak: i64::from(r.int("clean_streak")?),
                    settled_through: r.opt_time("settled_through")?,
                })
            })
            .collect()
    }

    async fn set_paused(
        &self,
        schedule: &str,
        pause: Option<(&str, Option<&str>)>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let stmt = match pause {
            Some((by, note)) => Stmt::new(PAUSE).arg(schedule).arg(now).arg(by).arg(note),
            None => Stmt::new(RESUME).arg(schedule).arg(now),
        };
        Ok(self.execute(stmt).await? == 1)
    }

    async fn prune_ticks(&self, before: DateTime<Utc>, limit: u32, dry_run: bool) -> Result<u64, StoreError> {
        let stmt = super::retention::prune_ticks(before, limit, dry_run);
        if dry_run {
            let rows = self.fetch(stmt).await?;
            return super::retention::read_count(&rows);
        }
        Ok(self.execute(stmt).await?)
    }
}
