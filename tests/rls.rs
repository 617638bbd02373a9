//! PostgreSQL's row-level security, the second wall between tenants: a
//! non-superuser login role granted `pulse_app` sees only the rows of the
//! tenant named in `pulse.tenant_id`, even with a bare `SELECT`.

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};

use crate::common::*;

#[tokio::test]
async fn rows_of_another_tenant_are_invisible_to_a_raw_select() {
    let Some(admin_url) = postgres_url() else {
        // SQLite has no row-level security; there the tenant filter in every
        // query is the only wall, which the isolation tests cover.
        eprintln!("rls: PostgreSQL only (PULSE_TEST_DATABASE_URL unset)");
        return;
    };
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let globex = app.tenant("globex").await;

    let role = format!("pulse_probe_{}", short_id());
    let admin = Database::connect(&admin_url).await.expect("connect");
    admin
        .execute_unprepared(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS INHERIT PASSWORD 'probe'; GRANT pulse_app TO {role};"
        ))
        .await
        .expect("create the probe role");

    let mut url = url::Url::parse(&admin_url).expect("url");
    url.set_username(&role).expect("user");
    url.set_password(Some("probe")).expect("password");
    let probe = Database::connect(url.as_str())
        .await
        .expect("connect as the probe role");

    let count = |sql: &'static str, tenant: Option<uuid::Uuid>| {
        let probe = &probe;
        async move {
            let txn = probe.begin().await.expect("begin");
            if let Some(t) = tenant {
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT set_config('pulse.tenant_id', $1, true)",
                    [t.to_string().into()],
                ))
                .await
                .expect("set tenant");
            }
            let row = txn
                .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
                .await
                .expect("query")
                .expect("row");
            let n: i64 = row.try_get_by_index(0).expect("count");
            txn.commit().await.expect("commit");
            n
        }
    };
    // No WHERE clause: only the tenant in the setting is visible.
    assert_eq!(count("SELECT count(*) FROM users", Some(acme.id)).await, 4);
    assert_eq!(
        count("SELECT count(DISTINCT tenant_id) FROM users", Some(acme.id)).await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM users", Some(globex.id)).await,
        4
    );
    // No tenant set: nothing at all.
    assert_eq!(count("SELECT count(*) FROM users", None).await, 0);
    assert_eq!(count("SELECT count(*) FROM audit_log", None).await, 0);

    // Writing into another tenant is refused too.
    let txn = probe.begin().await.expect("begin");
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT set_config('pulse.tenant_id', $1, true)",
        [acme.id.to_string().into()],
    ))
    .await
    .expect("set tenant");
    let forged = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE users SET role = 'SUPER_ADMIN' WHERE tenant_id = $1",
            [globex.id.into()],
        ))
        .await
        .expect("update runs");
    assert_eq!(forged.rows_affected(), 0);
    let insert = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO audit_log (id, tenant_id, actor, action, resource_type, created_at) VALUES ($1, $2, 'x', 'x', 'x', now())",
            [uuid::Uuid::now_v7().into(), globex.id.into()],
        ))
        .await;
    assert!(insert.is_err(), "inserted a row into another tenant");
    drop(txn);

    probe.close().await.expect("close");
    admin
        .execute_unprepared(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .expect("drop the probe role");
}

#[tokio::test]
async fn request_paths_run_as_the_tenant_scoped_role() {
    let Some(_) = postgres_url() else {
        eprintln!("rls: PostgreSQL only (PULSE_TEST_DATABASE_URL unset)");
        return;
    };
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let ctx = pulse::auth::TenantCtx {
        tenant_id: acme.id,
        tenant_slug: acme.slug.clone(),
        user_id: Some(acme.user(pulse::auth::Role::Admin).id),
        actor: acme.user(pulse::auth::Role::Admin).email.clone(),
        role: pulse::auth::Role::Admin,
        policy: Default::default(),
    };
    let (user, tenant, tenants): (String, String, i64) =
        pulse::db::scoped(&app.state.db, &ctx, |txn| {
            Box::pin(async move {
                let row = txn
                    .query_one_raw(Statement::from_string(
                        DbBackend::Postgres,
                        "SELECT current_user::text, current_setting('pulse.tenant_id'), (SELECT count(DISTINCT tenant_id) FROM users)",
                    ))
                    .await?
                    .expect("row");
                Ok((
                    row.try_get_by_index(0)?,
                    row.try_get_by_index(1)?,
                    row.try_get_by_index(2)?,
                ))
            })
        })
        .await
        .expect("scoped query");
    assert_eq!(user, "pulse_app");
    assert_eq!(tenant, acme.id.to_string());
    assert_eq!(tenants, 1);
}
