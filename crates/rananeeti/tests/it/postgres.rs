//! Local PostgreSQL clusters: started from the machine's binaries, stopped like a crash, restarted.

use rananeeti::postgres::{free_loopback_port, PgCluster};
use sqlx::{Connection, PgConnection, Row};

#[test]
fn committed_row_survives_an_immediate_stop_and_restart_of_a_local_cluster() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let port = free_loopback_port().unwrap();
    let cluster = PgCluster::init_and_start(&directory.path().join("pg"), port).unwrap();
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.url(), format!("postgres://rananeeti@127.0.0.1:{port}/rananeeti"));
    let first_pid = cluster.pid().expect("a running cluster has a postmaster pid");

    runtime.block_on(async {
        let mut connection = PgConnection::connect(&cluster.connect_url().unwrap()).await.unwrap();
        sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY, item TEXT NOT NULL)")
            .execute(&mut connection)
            .await
            .unwrap();
        sqlx::query("INSERT INTO orders (id, item) VALUES (1, 'flat white')").execute(&mut connection).await.unwrap();
        connection.close().await.unwrap();
    });

    cluster.stop_immediate().unwrap();
    runtime.block_on(async {
        let refused = PgConnection::connect(&cluster.connect_url().unwrap()).await;
        assert!(refused.is_err(), "a stopped cluster must refuse connections");
    });

    cluster.start().unwrap();
    let second_pid = cluster.pid().expect("a restarted cluster has a postmaster pid");
    assert_ne!(first_pid, second_pid, "the restart runs a new postmaster");
    runtime.block_on(async {
        let mut connection = PgConnection::connect(&cluster.connect_url().unwrap()).await.unwrap();
        let rows = sqlx::query("SELECT id, item FROM orders").fetch_all(&mut connection).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<i64, _>("id"), 1);
        assert_eq!(rows[0].get::<String, _>("item"), "flat white");
        connection.close().await.unwrap();
    });

    // Another database for the apps' role (the benchmark's): its own schema, the same password.
    let second = cluster.add_database("second").unwrap();
    runtime.block_on(async {
        let url = rananeeti::postgres::connect_url(&second, Some(&cluster.password_file())).unwrap();
        let mut connection = PgConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE kept_apart (id BIGINT)").execute(&mut connection).await.unwrap();
        connection.close().await.unwrap();
    });

    // Initialising again finds the existing cluster and keeps its data.
    drop(cluster);
    let port = free_loopback_port().unwrap();
    let cluster = PgCluster::init_and_start(&directory.path().join("pg"), port).unwrap();
    runtime.block_on(async {
        let mut connection = PgConnection::connect(&cluster.connect_url().unwrap()).await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&mut connection).await.unwrap();
        assert_eq!(count, 1);
        connection.close().await.unwrap();
    });
}
