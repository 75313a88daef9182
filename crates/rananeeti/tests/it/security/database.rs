//! Issue 12.2: the PostgreSQL clusters `up` started trusted every local connection as superuser:
//! any process on the machine could read every table and, through `COPY ... TO PROGRAM`, run
//! commands as the database's OS user.

use crate::regions::start_up;
use sqlx::{Connection, Row};
use std::os::unix::fs::MetadataExt;

#[tokio::test(flavor = "multi_thread")]
async fn connecting_to_up_postgres_without_the_password_is_refused() {
    let up = start_up(1, 1, "postgres").await;
    let database = &up.topology.regions[0].database;
    assert!(database.url.starts_with("postgres://rananeeti@127.0.0.1:"), "no password in the URL: {}", database.url);
    let topology = std::fs::read_to_string(up._dir.path().join("data/topology.json")).unwrap();

    // Without the password: refused, as the apps' role and as the superuser.
    let refused = sqlx::PgConnection::connect(&database.url).await;
    assert!(refused.is_err(), "a connection without the password was let in");
    let superuser = database.url.replacen("rananeeti@", "postgres@", 1);
    assert!(sqlx::PgConnection::connect(&superuser).await.is_err(), "the superuser without a password was let in");
    let wrong = database.url.replacen("rananeeti@", "rananeeti:not-the-password@", 1);
    assert!(sqlx::PgConnection::connect(&wrong).await.is_err(), "a wrong password was let in");

    // The password is in a private file, which topology.json names but does not hold.
    let password_file = database.password_file.clone().expect("topology.json names the password file");
    let metadata = std::fs::metadata(&password_file).unwrap();
    assert_eq!(metadata.mode() & 0o777, 0o600, "{}", password_file.display());
    let password = std::fs::read_to_string(&password_file).unwrap().trim().to_string();
    assert!(password.len() >= 32, "a generated password");
    assert!(!topology.contains(&password), "the password in topology.json");

    // With it: the apps' role, which is no superuser and owns only its schema.
    let mut connection = sqlx::PgConnection::connect(&database.connect_url().unwrap()).await.unwrap();
    let role = sqlx::query(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    for (index, privilege) in ["superuser", "createrole", "createdb", "replication", "bypassrls"].iter().enumerate() {
        assert!(!role.get::<bool, _>(index), "the apps' role has {privilege}");
    }
    let owned: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert_eq!(owned, ["rananeeti"], "the role owns only its schema");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT schemaname::text FROM pg_tables WHERE tableowner = current_user")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    assert_eq!(tables, ["rananeeti"], "the apps' tables are in its schema");
    let program = sqlx::query("COPY (SELECT 1) TO PROGRAM 'true'").execute(&mut connection).await;
    assert!(program.is_err(), "the apps' role ran a program through COPY");
    let database_created = sqlx::query("CREATE DATABASE stolen").execute(&mut connection).await;
    assert!(database_created.is_err(), "the apps' role created a database");
    let public = sqlx::query("CREATE TABLE public.planted (id BIGINT)").execute(&mut connection).await;
    assert!(public.is_err(), "the apps' role wrote to the public schema");
    let auth: String =
        sqlx::query_scalar("SELECT current_setting('password_encryption')").fetch_one(&mut connection).await.unwrap();
    assert_eq!(auth, "scram-sha-256");
    connection.close().await.unwrap();

    // And the deployment works on it.
    let booked = reqwest::Client::new()
        .post(format!("{}/api/cafe/reservations", up.topology.gateway_url.as_deref().unwrap()))
        .json(&crate::support::reservation("database", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(booked.status(), 201);
}
