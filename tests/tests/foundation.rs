//! The test bed itself: clusters of each version start, answer SQL, and accept a replication
//! connection from our client.

use pgrepl_testbed::{Cluster, PgVersion, Role};

fn check(version: PgVersion) {
    let c = Cluster::start(version);
    let v = c.psql("SELECT version()");
    assert!(
        v.starts_with(&format!("PostgreSQL {}.", version.major())),
        "unexpected version string {v:?}"
    );
    assert_eq!(c.psql("SHOW data_checksums"), "on");
    assert_eq!(c.psql("SHOW wal_level"), "replica");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg =
            pgrepl::Config::from_conninfo(&c.conninfo(Role::Postgres, "sslmode=disable")).unwrap();
        let mut conn = pgrepl::Connection::connect(&cfg).await.unwrap();
        assert_eq!(conn.server_version().major, version.major());
        let id = conn.identify_system().await.unwrap();
        assert_eq!(
            id.system_id.to_string(),
            c.psql("SELECT system_identifier FROM pg_control_system()")
        );
        conn.close().await.unwrap();
    });
}

#[test]
fn pg17_cluster_starts_and_replicates() {
    check(PgVersion::V17);
}

#[test]
fn pg18_cluster_starts_and_replicates() {
    check(PgVersion::V18);
}

#[test]
fn pg15_cluster_starts_and_replicates() {
    check(PgVersion::V15);
}
