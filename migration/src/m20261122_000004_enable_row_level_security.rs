//! PostgreSQL only: row-level security as the second wall between tenants.
//!
//! Request paths run each transaction as the non-login role `pulse_app`
//! with `pulse.tenant_id` set (see `src/db.rs`); policies hide every row of
//! another tenant from that role, whatever the SQL says. The connecting
//! role (table owner) bypasses RLS and serves the few named system paths.
//! SQLite has no RLS; there the tenant filter in every query is the wall.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Tables whose rows belong to one tenant, each with a `tenant_id` column.
const TENANT_TABLES: &[&str] = &["users", "audit_log"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        // Roles are cluster-wide: another database may create it at the same
        // moment, so a duplicate is fine.
        db.execute_unprepared(
            r#"
            DO $$
            BEGIN
              IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pulse_app') THEN
                CREATE ROLE pulse_app NOLOGIN NOBYPASSRLS;
              END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END $$;
            DO $$
            BEGIN
              IF NOT pg_has_role(current_user, 'pulse_app', 'MEMBER') THEN
                EXECUTE format('GRANT pulse_app TO %I', current_user);
              END IF;
              EXECUTE format('GRANT USAGE ON SCHEMA %I TO pulse_app', current_schema());
              EXECUTE format(
                'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO pulse_app',
                current_schema());
            END $$;
            GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, audit_log TO pulse_app;
            CREATE OR REPLACE FUNCTION pulse_current_tenant() RETURNS uuid
              LANGUAGE sql STABLE
              AS $$ SELECT NULLIF(current_setting('pulse.tenant_id', true), '')::uuid $$;
            "#,
        )
        .await?;
        for table in TENANT_TABLES {
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
                 DROP POLICY IF EXISTS tenant_isolation ON {table};
                 CREATE POLICY tenant_isolation ON {table}
                   USING (tenant_id = pulse_current_tenant())
                   WITH CHECK (tenant_id = pulse_current_tenant());"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for table in TENANT_TABLES {
            db.execute_unprepared(&format!(
                "DROP POLICY IF EXISTS tenant_isolation ON {table};
                 ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;"
            ))
            .await?;
        }
        Ok(())
    }
}
