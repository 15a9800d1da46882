//! The live edge's store (`LiveStore`, seed 003), checked identically against embedded SQLite
//! and a real PostgreSQL: tenant isolation of groups and streams, listing order and paging,
//! nonces spent once, play keys kept to their latest expiry, reports only from the stream's
//! node, metering that only grows, and deletes that take a group's streams with it.

use cloudphone_control::store::{
    self, GroupFilter, Store, StoreError, StreamChange, StreamFilter, StreamReport, VsGroup,
    VsNode, VsOrder, VsPage, VsPublish, VsStatus, VsStream, VsTenant,
};

use crate::support::on_each_store;

fn tenant(user_id: &str, ak: &str) -> VsTenant {
    VsTenant::active(user_id.into(), ak.into(), "sealed".into(), 0)
}

fn group(id: &str, user_id: &str, name: &str, created_at_ms: i64) -> VsGroup {
    VsGroup {
        id: id.into(),
        user_id: user_id.into(),
        name: name.into(),
        description: String::new(),
        region: "cn-north-7".into(),
        app: "live".into(),
        in_protocol: "rtmp".into(),
        out_protocol: "flv".into(),
        lazy_pull: false,
        callback: String::new(),
        enabled: true,
        created_at_ms,
    }
}

fn stream(id: &str, user_id: &str, group_id: &str, node: Option<&str>) -> VsStream {
    let keys = ("pk".into(), "sk".into());
    VsStream {
        node_id: node.map(str::to_string),
        ..VsStream::new(
            id.into(),
            user_id.into(),
            group_id.into(),
            format!("s{id}"),
            keys,
            5,
        )
    }
}

fn all_groups(order: VsOrder, descending: bool, offset: i64, limit: i64) -> GroupFilter {
    GroupFilter::all(VsPage {
        order,
        descending,
        offset,
        limit,
    })
}

async fn suite(s: impl Store) {
    s.migrate().await.unwrap();

    // Tenants: one per UserId until deleted; a deleted one's row can be replaced.
    s.vs_put_tenant(&tenant("u1", "AK1")).await.unwrap();
    s.vs_put_tenant(&tenant("u2", "AK2")).await.unwrap();
    assert!(matches!(
        s.vs_put_tenant(&tenant("u1", "AK3")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        s.vs_tenant_by_key("AK2").await.unwrap().unwrap().user_id,
        "u2"
    );
    assert!(
        s.vs_set_tenant_status("u2", VsStatus::Suspended, 9)
            .await
            .unwrap()
    );
    assert_eq!(
        s.vs_tenant("u2").await.unwrap().unwrap().status,
        VsStatus::Suspended
    );
    assert!(
        !s.vs_set_tenant_status("nobody", VsStatus::Active, 9)
            .await
            .unwrap()
    );

    // Groups: isolation, filters, order and paging.
    for (id, name, at) in [("11", "b", 3), ("12", "a", 1), ("13", "c", 2)] {
        s.vs_insert_group(&group(id, "u1", name, at)).await.unwrap();
    }
    s.vs_insert_group(&group("21", "u2", "x", 0)).await.unwrap();
    assert!(s.vs_group("u2", "11").await.unwrap().is_none());
    let names = |groups: Vec<VsGroup>| groups.into_iter().map(|g| g.name).collect::<Vec<_>>();
    let (page, total) = s
        .vs_groups("u1", &all_groups(VsOrder::Name, true, 0, 2))
        .await
        .unwrap();
    assert_eq!((names(page), total), (vec!["c".to_string(), "b".into()], 3));
    let (page, _) = s
        .vs_groups("u1", &all_groups(VsOrder::CreatedTime, false, 1, 5))
        .await
        .unwrap();
    assert_eq!(names(page), ["c", "b"]);
    let mut halted = group("12", "u1", "a", 1);
    halted.enabled = false;
    assert!(s.vs_update_group(&halted).await.unwrap());
    let off = GroupFilter {
        enabled: Some(false),
        ..all_groups(VsOrder::Id, false, 0, 10)
    };
    let (page, total) = s.vs_groups("u1", &off).await.unwrap();
    assert_eq!((names(page), total), (vec!["a".to_string()], 1));
    let mut stolen = group("11", "u2", "mine", 0);
    stolen.user_id = "u2".into();
    assert!(!s.vs_update_group(&stolen).await.unwrap());

    // Streams: isolation, changes, reports from the right node only.
    s.vs_insert_streams(&[
        stream("101", "u1", "11", Some("n1")),
        stream("102", "u1", "11", None),
    ])
    .await
    .unwrap();
    assert!(s.vs_stream("u2", "101").await.unwrap().is_none());
    assert_eq!(
        s.vs_stream_by_id("101").await.unwrap().unwrap().user_id,
        "u1"
    );
    let forbid = StreamChange {
        forbidden: Some(true),
        ..StreamChange::default()
    };
    assert!(
        s.vs_change_stream("u2", "101", &forbid)
            .await
            .unwrap()
            .is_none()
    );
    let changed = s
        .vs_change_stream("u1", "101", &forbid)
        .await
        .unwrap()
        .unwrap();
    assert!(changed.forbidden && changed.enabled);
    let rename = StreamChange {
        name: Some("door".into()),
        enabled: Some(false),
        ..StreamChange::default()
    };
    let changed = s
        .vs_change_stream("u1", "101", &rename)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (changed.name.as_str(), changed.enabled, changed.forbidden),
        ("door", false, true)
    );
    let report = StreamReport {
        stream_id: "101".into(),
        is_on: true,
        codec: "H264".into(),
        width: 1280,
        height: 720,
        bitrate_bps: 1,
        started_at_ms: Some(7),
        stopped_at_ms: None,
    };
    assert!(!s.vs_record_report("n2", &report).await.unwrap());
    assert!(s.vs_record_report("n1", &report).await.unwrap());
    let on_filter = StreamFilter {
        group_id: Some("11".into()),
        app: Some("live".into()),
        on: Some(true),
        ..StreamFilter::all(VsPage::by_id(0, 10))
    };
    let (on, total) = s.vs_streams("u1", &on_filter).await.unwrap();
    assert_eq!((on.len(), total, on[0].started_at_ms), (1, 1, Some(7)));
    assert_eq!(s.vs_streams("u2", &on_filter).await.unwrap().1, 0);
    let stopped = StreamReport {
        is_on: false,
        started_at_ms: None,
        stopped_at_ms: Some(9),
        ..report
    };
    assert!(s.vs_record_report("n1", &stopped).await.unwrap());
    let after = s.vs_stream("u1", "101").await.unwrap().unwrap();
    assert_eq!(
        (after.is_on, after.started_at_ms, after.stopped_at_ms),
        (false, Some(7), Some(9))
    );

    // Nodes and placement bookkeeping.
    let node = VsNode {
        node_id: "n1".into(),
        region: "cn-north-7".into(),
        rtmp_base_url: "rtmp://n1:1935".into(),
        http_base_url: "http://n1:8080".into(),
    };
    s.vs_put_node(&node, 1).await.unwrap();
    s.vs_put_node(
        &VsNode {
            node_id: "n2".into(),
            rtmp_base_url: String::new(),
            ..node.clone()
        },
        1,
    )
    .await
    .unwrap();
    assert_eq!(s.vs_live_nodes().await.unwrap(), vec![(node.clone(), 1)]);
    assert_eq!(s.vs_unplaced_streams().await.unwrap()[0].id, "102");
    s.vs_place_stream("102", "n1").await.unwrap();
    assert_eq!(s.vs_node_streams("n1").await.unwrap().len(), 2);

    // Nonces: once each, per key, until they expire.
    assert!(s.vs_spend_nonce("AK1", "n", 100, 0).await.unwrap());
    assert!(!s.vs_spend_nonce("AK1", "n", 100, 50).await.unwrap());
    assert!(s.vs_spend_nonce("AK2", "n", 100, 50).await.unwrap());
    assert!(s.vs_spend_nonce("AK1", "n", 300, 101).await.unwrap());

    // Play keys keep their latest expiry.
    s.vs_add_play_key("101", "k1", 1000, 0).await.unwrap();
    s.vs_add_play_key("101", "k1", 500, 0).await.unwrap();
    s.vs_add_play_key("101", "k2", 200, 0).await.unwrap();
    assert_eq!(s.vs_play_keys("101", 300).await.unwrap(), ["k1"]);

    // Metering: one row per publish, figures only grow, the stop sticks.
    let mut publish = VsPublish {
        publish_id: "p1".into(),
        stream_id: "101".into(),
        user_id: "u1".into(),
        node_id: "n1".into(),
        bytes_in: 10,
        frames_in: 2,
        started_at_ms: 1,
        stopped_at_ms: None,
    };
    s.vs_meter(&publish).await.unwrap();
    publish.bytes_in = 5;
    publish.frames_in = 3;
    publish.stopped_at_ms = Some(9);
    s.vs_meter(&publish).await.unwrap();
    publish.stopped_at_ms = None;
    s.vs_meter(&publish).await.unwrap();
    let metered: Vec<_> = (s.vs_publishes("u1").await.unwrap().iter())
        .map(|p| (p.bytes_in, p.frames_in, p.stopped_at_ms))
        .collect();
    assert_eq!(
        metered,
        [(10, 3, Some(9))],
        "one publish, its figures grown"
    );

    // Deleting a group takes its streams and their play keys; another tenant deletes nothing.
    assert!(s.vs_delete_group("u2", "11").await.unwrap().is_none());
    assert!(s.vs_stream("u1", "101").await.unwrap().is_some());
    let removed = s.vs_delete_group("u1", "11").await.unwrap().unwrap();
    assert_eq!(removed.len(), 2);
    assert!(s.vs_stream("u1", "101").await.unwrap().is_none());
    assert!(s.vs_play_keys("101", 0).await.unwrap().is_empty());

    // Deleting a tenant takes everything of it and leaves the row as deleted.
    s.vs_insert_streams(&[stream("201", "u1", "13", None)])
        .await
        .unwrap();
    let removed = s.vs_delete_tenant("u1", 20).await.unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(
        s.vs_tenant("u1").await.unwrap().unwrap().status,
        VsStatus::Deleted
    );
    assert!(s.vs_group("u1", "13").await.unwrap().is_none());
    assert!(s.vs_group("u2", "21").await.unwrap().is_some());
    s.vs_put_tenant(&tenant("u1", "AK9")).await.unwrap();
    assert_eq!(
        s.vs_tenant("u1").await.unwrap().unwrap().access_key_id,
        "AK9"
    );
}

on_each_store!(suite: sqlite_live_store, postgres_live_store);
