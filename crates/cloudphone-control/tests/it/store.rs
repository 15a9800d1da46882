//! The store's contract, checked identically against embedded SQLite and a real PostgreSQL.

use cloudphone_control::store::{
    self, BackupState, InstanceQuery, InstanceRecord, JobRecord, NewTenant, NewUser, NodeRecord,
    ProjectRecord, Store, StoreError, TaskRecord, TokenRecord,
};
use cloudphone_core::instance::ControlState;
use cloudphone_core::lifecycle::InstanceState;

use crate::support::on_each_store;

fn tenant(n: u32) -> NewTenant {
    NewTenant {
        tenant_id: format!("t{n}"),
        domain_name: format!("domain{n}"),
        user_id: format!("u{n}"),
        user_name: "alice".into(),
        password_hash: "$argon2id$fake".into(),
        project_id: format!("p{n}"),
        project_name: "cn-north-7".into(),
        created_at_ms: 1_000,
    }
}

fn node(id: &str) -> NodeRecord {
    NodeRecord {
        node_id: id.into(),
        grpc_endpoint: format!("http://{id}:50051"),
        signaling_base_url: format!("ws://{id}:8090"),
        region: "cn-north-7".into(),
        capacity: 4,
        runtimes: vec!["x11".into()],
        encoders: vec!["x264enc".into(), "x265enc".into()],
        version: "0.1.0".into(),
        status: "up".into(),
        last_seen_ms: 5,
    }
}

fn instance(id: &str, tenant: u32, node: &str, created_at_ms: i64) -> InstanceRecord {
    InstanceRecord {
        created_at_ms,
        updated_at_ms: created_at_ms,
        ..InstanceRecord::sample(id, &format!("t{tenant}"), &format!("p{tenant}"), node)
    }
}

/// The instance `id`, which must exist.
async fn stored(store: &impl Store, id: &str) -> InstanceRecord {
    store.get_instance(id).await.unwrap().expect("instance")
}

/// The id of the project `tenant_id` finds by `name` or `id`, if any.
async fn project_id(
    store: &impl Store,
    tenant_id: &str,
    name: Option<&str>,
    id: Option<&str>,
) -> Option<String> {
    let found = store.find_project(tenant_id, name, id).await.unwrap();
    found.map(|project| project.project_id)
}

/// The backup bookkeeping of instance `id`, which must exist.
async fn backup(store: &impl Store, id: &str) -> BackupState {
    store.backup_state(id).await.unwrap().expect("instance")
}

async fn suite(store: impl Store) {
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrating twice is a no-op");

    // Tenants: created whole, domain names unique.
    store.create_tenant(&tenant(1)).await.unwrap();
    store.create_tenant(&tenant(2)).await.unwrap();
    let mut dup = tenant(3);
    dup.domain_name = "domain1".into();
    assert!(matches!(
        store.create_tenant(&dup).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(
        store.find_user("domain3", "alice").await.unwrap().is_none(),
        "a failed create leaves nothing"
    );

    // Further users and projects join an existing tenant; names are unique per tenant.
    assert_eq!(
        store.find_tenant("domain1").await.unwrap().as_deref(),
        Some("t1")
    );
    assert_eq!(store.find_tenant("nope").await.unwrap(), None);
    let bob = NewUser {
        user_id: "u1b".into(),
        tenant_id: "t1".into(),
        name: "bob".into(),
        password_hash: "$argon2id$fake".into(),
        created_at_ms: 2,
    };
    assert!(store.find_user("domain1", "bob").await.unwrap().is_none());
    store.create_user(&bob).await.unwrap();
    let again = NewUser {
        user_id: "u1c".into(),
        ..bob.clone()
    };
    assert!(matches!(
        store.create_user(&again).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        store
            .find_user("domain1", "bob")
            .await
            .unwrap()
            .unwrap()
            .user_id,
        "u1b"
    );
    let eu = ProjectRecord {
        project_id: "p1b".into(),
        tenant_id: "t1".into(),
        name: "eu-west-0".into(),
    };
    store.create_project(&eu, 3).await.unwrap();
    let dup = ProjectRecord {
        project_id: "p1c".into(),
        ..eu.clone()
    };
    assert!(matches!(
        store.create_project(&dup, 3).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let found = project_id(&store, "t1", Some("eu-west-0"), None).await;
    assert_eq!(found.as_deref(), Some("p1b"));

    let user = store
        .find_user("domain1", "alice")
        .await
        .unwrap()
        .expect("user");
    assert_eq!(
        (user.tenant_id.as_str(), user.user_id.as_str()),
        ("t1", "u1")
    );
    let by_name = project_id(&store, "t1", Some("cn-north-7"), None).await;
    assert_eq!(by_name.as_deref(), Some("p1"), "by name");
    let by_id = project_id(&store, "t1", None, Some("p1")).await;
    assert_eq!(by_id.as_deref(), Some("p1"), "by id");
    let theirs = project_id(&store, "t2", None, Some("p1")).await;
    assert_eq!(theirs, None, "another tenant's project");
    // Projects listed oldest first (p1b was made at 3 ms, the tenant's first at 1000 ms).
    let listed = |tenant: &'static str| {
        let store = &store;
        async move {
            store
                .list_projects(tenant)
                .await
                .unwrap()
                .into_iter()
                .map(|p| (p.project_id, p.tenant_id))
                .collect::<Vec<_>>()
        }
    };
    let pair = |p: &str, t: &str| (p.to_string(), t.to_string());
    assert_eq!(listed("t1").await, [pair("p1b", "t1"), pair("p1", "t1")]);
    assert_eq!(listed("t2").await, [pair("p2", "t2")]);

    // Tokens: found by hash, purged after expiry; a domain-scoped one has no project.
    let token = TokenRecord {
        token_sha256: "abc".into(),
        user_id: "u1".into(),
        tenant_id: "t1".into(),
        project_id: Some("p1".into()),
        issued_at_ms: 10,
        expires_at_ms: 100,
    };
    let domain_token = TokenRecord {
        token_sha256: "abd".into(),
        project_id: None,
        ..token.clone()
    };
    store.insert_token(&token).await.unwrap();
    store.insert_token(&domain_token).await.unwrap();
    assert_eq!(store.find_token("abc").await.unwrap(), Some(token));
    assert_eq!(store.find_token("abd").await.unwrap(), Some(domain_token));
    assert_eq!(store.purge_expired_tokens(100).await.unwrap(), 0);
    assert_eq!(store.purge_expired_tokens(101).await.unwrap(), 2);
    assert_eq!(store.find_token("abc").await.unwrap(), None);

    // Nodes: upsert replaces, status changes.
    store.upsert_node(&node("n1")).await.unwrap();
    let mut changed = node("n1");
    changed.capacity = 9;
    store.upsert_node(&changed).await.unwrap();
    store.upsert_node(&node("n2")).await.unwrap();
    store.set_node_status("n2", "down", 50).await.unwrap();
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!((nodes[0].capacity, nodes[0].encoders.len()), (9, 2));
    assert_eq!(
        (nodes[1].status.as_str(), nodes[1].last_seen_ms),
        ("down", 50)
    );

    // Instances: batch insert is all-or-nothing.
    store
        .insert_instances(&[
            instance("a", 1, "n1", 100),
            instance("b", 1, "n2", 200),
            instance("c", 2, "n1", 300),
        ])
        .await
        .unwrap();
    let clash = [instance("d", 1, "n1", 400), instance("a", 1, "n1", 400)];
    assert!(store.insert_instances(&clash).await.is_err());
    assert!(
        store.get_instance("d").await.unwrap().is_none(),
        "no partial write"
    );
    let mut counts = store.instance_counts().await.unwrap();
    counts.sort();
    assert_eq!(counts, [("n1".to_string(), 2), ("n2".to_string(), 1)]);

    // Instances left `creating` past a cut-off are claimed once per period (stamped `now`).
    let claim = async |before_ms: i64, now_ms: i64| {
        let mut ids: Vec<String> = store
            .claim_stale_creations(before_ms, now_ms)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(claim(250, 260).await, ["a", "b"]);
    assert!(claim(250, 261).await.is_empty(), "claimed once per period");
    assert_eq!(
        claim(270, 280).await,
        ["a", "b"],
        "c is newer than the cut-off"
    );

    let set = async |id: &str, state: ControlState, at_ms: i64| {
        store
            .set_instance_state(id, state, "", at_ms)
            .await
            .unwrap();
    };
    let report = async |node: &str, id: &str, state: ControlState, at_ms: i64| {
        store
            .set_reported_state(node, id, state, "", at_ms, at_ms)
            .await
            .unwrap();
    };
    set("a", ControlState::RUNNING, 150).await;
    // A node's late report cannot overwrite a state control owns.
    set("b", ControlState::BackedUp, 151).await;
    report("n2", "b", ControlState::RUNNING, 152).await;
    assert_eq!(stored(&store, "b").await.state, ControlState::BackedUp);
    // Another node's report about "a" (placed on n1) changes nothing.
    report("n2", "a", ControlState::Node(InstanceState::Failed), 153).await;
    assert_eq!(stored(&store, "a").await.state, ControlState::RUNNING);
    report("n1", "a", ControlState::STOPPED, 153).await;
    assert_eq!(stored(&store, "a").await.state, ControlState::STOPPED);
    // Reports land in no set order (every replica writes them): an older change than the
    // one stored is dropped, the same one again is taken.
    report("n1", "a", ControlState::Node(InstanceState::Starting), 152).await;
    assert_eq!(stored(&store, "a").await.state, ControlState::STOPPED);
    report("n1", "a", ControlState::STOPPED, 153).await;
    assert_eq!(stored(&store, "a").await.state, ControlState::STOPPED);
    set("a", ControlState::RUNNING, 154).await;
    set("b", ControlState::Creating, 155).await;
    assert_eq!(stored(&store, "a").await.state, ControlState::RUNNING);

    // Listing: per tenant and project, newest first, with filters and paging.
    let all = InstanceQuery {
        project_id: "p1".into(),
        limit: 10,
        ..Default::default()
    };
    let (rows, total) = store.list_instances("t1", &all).await.unwrap();
    assert_eq!(total, 2);
    let ids: Vec<_> = rows
        .iter()
        .map(|r| r.instance.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["b", "a"]);
    assert_eq!(
        (rows[0].node_status.as_str(), rows[0].domain_name.as_str()),
        ("down", "domain1")
    );
    assert_eq!(rows[1].project_name, "cn-north-7");
    let page2 = InstanceQuery {
        project_id: "p1".into(),
        limit: 1,
        offset: 1,
        ..Default::default()
    };
    let (rows, total) = store.list_instances("t1", &page2).await.unwrap();
    assert_eq!(
        (rows.len(), total, rows[0].instance.instance_id.as_str()),
        (1, 2, "a")
    );
    let by_id = InstanceQuery {
        project_id: "p1".into(),
        instance_id: Some("c".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        store.list_instances("t1", &by_id).await.unwrap().1,
        0,
        "tenant isolation"
    );
    let window = InstanceQuery {
        project_id: "p1".into(),
        created_from_ms: Some(150),
        created_to_ms: Some(250),
        limit: 10,
        ..Default::default()
    };
    let (rows, _) = store.list_instances("t1", &window).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.instance.instance_id.clone())
            .collect::<Vec<_>>(),
        ["b"]
    );
    let by_name = InstanceQuery {
        project_id: "p1".into(),
        instance_name: Some("name-a".into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(store.list_instances("t1", &by_name).await.unwrap().1, 1);
    let other_project = InstanceQuery {
        project_id: "p1b".into(),
        ..all.clone()
    };
    assert_eq!(
        store.list_instances("t1", &other_project).await.unwrap().1,
        0,
        "a project lists only its own instances"
    );

    // Assignment, video settings and deletion.
    store
        .set_assign_user("a", Some("user-7"), 160)
        .await
        .unwrap();
    assert_eq!(
        stored(&store, "a").await.assign_user.as_deref(),
        Some("user-7")
    );
    store.set_assign_user("a", None, 161).await.unwrap();
    assert_eq!(stored(&store, "a").await.assign_user, None);
    assert_eq!(store.video_config("a").await.unwrap(), "");
    store
        .set_video_config(&["a".into(), "b".into()], "{\"x\":1}", 170)
        .await
        .unwrap();
    assert_eq!(store.video_config("b").await.unwrap(), "{\"x\":1}");
    assert!(store.delete_instance("c").await.unwrap());
    assert!(!store.delete_instance("c").await.unwrap());
    assert!(store.get_instance("c").await.unwrap().is_none());

    // Tasks keep their jobs and results.
    let job = |id: &str, instance: &str| JobRecord {
        job_id: id.into(),
        task_id: "task1".into(),
        instance_id: instance.into(),
        node_id: "n1".into(),
        node_job_id: String::new(),
        status: 1,
        error_code: String::new(),
        error_msg: String::new(),
        execute_msg: None,
        updated_at_ms: 1,
    };
    let task = TaskRecord {
        task_id: "task1".into(),
        tenant_id: "t1".into(),
        project_id: "p1".into(),
        kind: "command".into(),
        created_at_ms: 1,
        jobs: vec![job("j1", "a"), job("j2", "b")],
    };
    store.insert_task(&task).await.unwrap();
    assert_eq!(store.get_task("task1").await.unwrap(), Some(task.clone()));
    assert_eq!(store.get_task("nope").await.unwrap(), None);
    let done = JobRecord {
        status: 2,
        execute_msg: Some("out".into()),
        node_job_id: "nj".into(),
        ..job("j2", "b")
    };
    store.update_job(&done).await.unwrap();
    let stored = store.get_task("task1").await.unwrap().unwrap();
    assert_eq!(stored.jobs[1], done);
    assert_eq!(stored.jobs[0].status, 1);

    backup_and_prepare(&store).await;
    node_identity(&store).await;
}

/// Join tokens are spent once and only before they expire; a node id is pinned to one
/// certificate until revoked.
async fn node_identity(store: &impl Store) {
    store.insert_join_token("t1", 1_000, 2_000).await.unwrap();
    assert!(
        !store.spend_join_token("t1", "n1", 2_000).await.unwrap(),
        "expired"
    );
    assert!(!store.spend_join_token("nope", "n1", 1_500).await.unwrap());
    assert!(store.spend_join_token("t1", "n1", 1_999).await.unwrap());
    assert!(
        !store.spend_join_token("t1", "n2", 1_999).await.unwrap(),
        "spent"
    );

    assert_eq!(store.node_identity("n1").await.unwrap(), None);
    store.pin_node_identity("n1", "fp1", 10).await.unwrap();
    assert!(matches!(
        store.pin_node_identity("n1", "fp2", 11).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        store.node_identity("n1").await.unwrap().as_deref(),
        Some("fp1")
    );
    assert!(store.revoke_node_identity("n1").await.unwrap());
    assert!(!store.revoke_node_identity("n1").await.unwrap());
    store.pin_node_identity("n1", "fp2", 12).await.unwrap();
    assert_eq!(
        store.node_identity("n1").await.unwrap().as_deref(),
        Some("fp2")
    );
}

/// BatchBackupInstances / BatchPrepareInstances bookkeeping: backup states, the prepare queue,
/// claiming, and slots held only by instances that live on a node.
async fn backup_and_prepare(store: &impl Store) {
    // Two on n1 (whose slots the counts check), one on n2.
    let to_back_up = [
        instance("q1", 1, "n1", 500),
        instance("q2", 1, "n1", 501),
        instance("q3", 1, "n2", 502),
    ];
    store.insert_instances(&to_back_up).await.unwrap();
    let counts = |c: Vec<(String, i64)>| c.into_iter().collect::<std::collections::HashMap<_, _>>();
    let before = counts(store.instance_counts().await.unwrap());
    let fresh = backup(store, "q1").await;
    assert_eq!(
        (
            fresh.backup_status,
            fresh.backup_time_ms,
            fresh.restore_status
        ),
        (0, None, 0)
    );
    assert_eq!(store.backup_state("nope").await.unwrap(), None);

    let uri = |id: &str| format!("file:///b/t1/{id}.tar.gz");
    store
        .begin_backup(&[("q1".into(), uri("q1")), ("q2".into(), uri("q2"))], 600)
        .await
        .unwrap();
    let running = backup(store, "q1").await;
    assert_eq!(
        (
            running.state,
            running.backup_status,
            running.backup_time_ms,
            running.backup_uri.as_str()
        ),
        (
            ControlState::BACKING_UP,
            1,
            Some(600),
            "file:///b/t1/q1.tar.gz"
        )
    );
    // Prepared while its backup runs: it is queued once the backup ends.
    assert!(store.request_prepare("q2", 605).await.unwrap());
    assert_eq!(stored(store, "q2").await.state, ControlState::BACKING_UP);
    store.finish_backup("q1", None, 610).await.unwrap();
    store.finish_backup("q2", None, 611).await.unwrap();
    let done = backup(store, "q1").await;
    assert_eq!(
        (done.state, done.backup_status, done.backup_time_ms),
        (ControlState::BackedUp, 2, Some(610))
    );
    assert_eq!(backup(store, "q2").await.state, ControlState::Queued);
    let after = counts(store.instance_counts().await.unwrap());
    assert_eq!(
        after.get("n1").copied().unwrap_or(0),
        before.get("n1").copied().unwrap_or(0) - 2,
        "archived instances hold no slot"
    );

    // A failed backup says why and leaves the queue.
    store
        .begin_backup(&[("q3".into(), uri("q3"))], 620)
        .await
        .unwrap();
    assert!(store.request_prepare("q3", 621).await.unwrap());
    store
        .finish_backup("q3", Some("disk full"), 622)
        .await
        .unwrap();
    assert_eq!(stored(store, "q3").await.state_message, "disk full");
    let failed = backup(store, "q3").await;
    assert_eq!(
        (
            failed.state,
            failed.backup_status,
            failed.prepare_queued_at_ms
        ),
        (ControlState::BackupFailed, 3, None)
    );
    assert!(
        !store.request_prepare("q3", 623).await.unwrap(),
        "only archived instances can be queued"
    );

    // The queue: first come first; a repeated prepare keeps the place.
    assert!(store.request_prepare("q1", 700).await.unwrap());
    assert!(store.request_prepare("q2", 701).await.unwrap());
    let queued: Vec<(String, i64)> = store
        .queued_instances()
        .await
        .unwrap()
        .into_iter()
        .map(|(r, since)| (r.instance_id, since))
        .collect();
    assert_eq!(queued, [("q2".to_string(), 605), ("q1".to_string(), 700)]);

    // Claiming moves it onto a node, once.
    assert!(store.claim_restore_slot("q2", "n2", 800).await.unwrap());
    assert!(!store.claim_restore_slot("q2", "n1", 801).await.unwrap());
    let claimed = backup(store, "q2").await;
    assert_eq!(
        (
            claimed.state,
            claimed.restore_status,
            claimed.restore_time_ms,
            claimed.prepare_queued_at_ms
        ),
        (ControlState::RESTORING, 1, Some(800), None)
    );
    assert_eq!(stored(store, "q2").await.node_id, "n2");
    // No room after all: back in line at its old place.
    store.requeue("q2", 605).await.unwrap();
    assert_eq!(
        store.queued_instances().await.unwrap()[0].0.instance_id,
        "q2"
    );
    // Claimed again, then the restore ends (10 ms later) as it ends on the node.
    let restore = async |id: &str, node: &str, at_ms: i64, end: (ControlState, &str, i64)| {
        assert!(store.claim_restore_slot(id, node, at_ms).await.unwrap());
        let (state, message, restore_status) = end;
        store
            .finish_restore(id, state, message, restore_status, at_ms + 10)
            .await
            .unwrap();
    };
    restore("q2", "n2", 810, (ControlState::RUNNING, "", 2)).await;
    assert_eq!(
        backup(store, "q2").await,
        BackupState {
            state: ControlState::RUNNING,
            restore_status: 2,
            restore_time_ms: Some(820),
            ..claimed
        },
        "a finished restore changes only its own fields"
    );
    let failed_restore = (ControlState::RestoreFailed, "bad archive", 3);
    restore("q1", "n1", 830, failed_restore).await;
    assert!(
        store.request_prepare("q1", 850).await.unwrap(),
        "a failed restore can be prepared again"
    );
    assert_eq!(store.queued_instances().await.unwrap().len(), 1);

    // Unassigning an archived phone wipes its archive in the same transaction; one that is no
    // longer archived (q2 runs again) makes the whole call write nothing.
    let bound = [
        ("q1".to_string(), Some("user-1".to_string())),
        ("q2".to_string(), Some("user-2".to_string())),
    ];
    store.set_assign_users(&bound, 860).await.unwrap();
    let both = ["q1".to_string(), "q2".to_string()];
    assert_eq!(store.wipe_archives(&both, &both, 870).await.unwrap(), None);
    assert_eq!(
        (
            stored(store, "q1").await.assign_user.as_deref(),
            backup(store, "q1").await.backup_uri
        ),
        (Some("user-1"), uri("q1")),
        "nothing written"
    );
    let q1 = ["q1".to_string()];
    let wiped = store.wipe_archives(&q1, &q1, 880).await.unwrap();
    assert_eq!(wiped, Some(vec![uri("q1")]), "the archive to delete");
    let after = backup(store, "q1").await;
    assert_eq!(
        (after.state, after.backup_uri.as_str()),
        (ControlState::Queued, ""),
        "still queued, restored fresh"
    );
    assert_eq!(stored(store, "q1").await.assign_user, None);
    assert_eq!(
        stored(store, "q2").await.assign_user.as_deref(),
        Some("user-2")
    );
}

on_each_store!(suite: sqlite_store, postgres_store);

#[tokio::test]
async fn unknown_urls_are_refused() {
    assert!(matches!(
        store::open("mysql://x").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
}
