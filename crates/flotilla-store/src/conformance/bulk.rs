//! Bulk actions: one action applied to many agents a chunk at a time, each
//! agent's outcome tracked from delivery to acknowledgement.

use super::*;
use crate::BulkOperation;
use flotilla_domain::action::TargetOutcome;

fn bulk_action(id: &str, action_type: ActionType) -> NewAction {
    NewAction {
        id: id.into(),
        action_type,
        data: json!({}),
        created_at: Utc::now(),
        expiration: None,
        agent_ids: vec![],
    }
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub async fn bulk_reassign_tracks_each_agent_from_delivery_to_ack(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    for id in ["a1", "a2", "a3", "gone"] {
        enrolled(&s, id, "p").await;
    }
    s.reassign_agent("a3", "q", now).await.unwrap();
    s.unenroll_now("gone", now).await.unwrap();
    s.create_action(&bulk_action("b1", ActionType::PolicyReassign))
        .await
        .unwrap();
    let op = BulkOperation::Reassign {
        policy_id: "q".into(),
    };
    // Duplicates count once; refused agents are failed with why.
    let applied = s
        .apply_bulk_action(
            "b1",
            &op,
            &ids(&["a1", "a2", "a2", "a3", "gone", "nobody"]),
            now,
        )
        .await
        .unwrap();
    assert_eq!(applied, 2);
    assert_eq!(s.get_agent("a1", now).await.unwrap().policy_id, "q");
    assert_eq!(s.get_agent("a2", now).await.unwrap().policy_id, "q");

    let p = s.get_action_progress("b1", now).await.unwrap();
    assert_eq!(p.action_type, ActionType::PolicyReassign);
    assert_eq!(
        (
            p.nb_agents_action_created,
            p.nb_agents_delivered,
            p.nb_agents_ack,
            p.nb_agents_failed,
            p.nb_agents_pending
        ),
        (5, 0, 0, 3, 2)
    );
    assert_eq!(p.status, "IN_PROGRESS");

    // The check-in hands it out: delivered.
    let pending = s.pending_actions("a1", now, 10).await.unwrap();
    assert!(pending.iter().any(|a| a.id == "b1"), "{pending:?}");
    s.mark_delivered("a1", &ids(&["b1"]), "tok-1")
        .await
        .unwrap();
    let p = s.get_action_progress("b1", now).await.unwrap();
    assert_eq!((p.nb_agents_delivered, p.nb_agents_pending), (1, 1));

    // Acks: one fine, one with the agent's error.
    s.ack_action("a1", "b1", None, now).await.unwrap();
    s.ack_action("a2", "b1", Some("policy failed to apply"), now)
        .await
        .unwrap();
    let p = s.get_action_progress("b1", now).await.unwrap();
    assert_eq!(
        (
            p.nb_agents_delivered,
            p.nb_agents_ack,
            p.nb_agents_failed,
            p.nb_agents_pending
        ),
        (2, 1, 4, 0)
    );
    assert_eq!(p.status, "FAILED");
    assert!(p.completion_time.is_some());

    // Per agent, paged in id order.
    let first = s.action_targets("b1", page(1, 3)).await.unwrap();
    assert_eq!(first.total, 5);
    let got: Vec<(&str, TargetOutcome)> = first
        .items
        .iter()
        .map(|t| (t.agent_id.as_str(), t.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("a1", TargetOutcome::Acked),
            ("a2", TargetOutcome::Failed),
            ("a3", TargetOutcome::Failed)
        ]
    );
    assert_eq!(
        first.items[1].error.as_deref(),
        Some("policy failed to apply")
    );
    assert!(first.items[2].error.as_deref().unwrap().contains("already"));
    let second = s.action_targets("b1", page(2, 3)).await.unwrap();
    let why: Vec<(String, Option<String>)> = second
        .items
        .into_iter()
        .map(|t| (t.agent_id, t.error))
        .collect();
    assert_eq!(why.len(), 2);
    assert!(
        why[0].1.as_deref().unwrap().contains("unenrolled"),
        "{why:?}"
    );
    assert!(
        why[1].1.as_deref().unwrap().contains("not found"),
        "{why:?}"
    );

    // Unknown actions and policies.
    assert!(matches!(
        s.get_action_progress("nope", now).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.action_targets("nope", page(1, 10)).await,
        Err(StoreError::NotFound { .. })
    ));
    s.create_action(&bulk_action("b2", ActionType::PolicyReassign))
        .await
        .unwrap();
    let missing = BulkOperation::Reassign {
        policy_id: "missing".into(),
    };
    assert!(matches!(
        s.apply_bulk_action("b2", &missing, &ids(&["a1"]), now)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get_agent("a1", now).await.unwrap().policy_id, "q");
}

pub async fn bulk_tags_settings_and_unenrolment_apply_per_agent(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for id in ["t1", "t2", "t3"] {
        let mut a = agent(id, "p", &["prod", "web"]);
        let access = key(&format!("acc-{id}"), id, "access");
        a.access_api_key_id = Some(access.id.clone());
        s.enroll_agent(&a, &access, &[]).await.unwrap();
    }

    // Tags: applied by the server, acked at once.
    s.create_action(&bulk_action("tags", ActionType::UpdateTags))
        .await
        .unwrap();
    let op = BulkOperation::UpdateTags {
        add: ids(&["blue", "web"]),
        remove: ids(&["prod"]),
    };
    let n = s
        .apply_bulk_action("tags", &op, &ids(&["t1", "t2"]), now)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let mut tags = s.get_agent("t1", now).await.unwrap().tags;
    tags.sort();
    assert_eq!(tags, ["blue", "web"]);
    let mut untouched = s.get_agent("t3", now).await.unwrap().tags;
    untouched.sort();
    assert_eq!(untouched, ["prod", "web"]);
    let p = s.get_action_progress("tags", now).await.unwrap();
    assert_eq!((p.nb_agents_ack, p.nb_agents_pending), (2, 0));
    assert_eq!(p.status, "COMPLETE");
    assert!(s.pending_actions("t1", now, 10).await.unwrap().is_empty());

    // Settings: waits for the agents.
    s.create_action(&bulk_action("set", ActionType::Settings))
        .await
        .unwrap();
    s.apply_bulk_action("set", &BulkOperation::Settings, &ids(&["t1", "t3"]), now)
        .await
        .unwrap();
    let pending = s.pending_actions("t3", now, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].action_type, ActionType::Settings);

    // Unenrolment asked of one agent, and at once (revoking its keys) of
    // another; asking an unenrolling agent again is refused.
    s.create_action(&bulk_action("ask", ActionType::Unenroll))
        .await
        .unwrap();
    s.apply_bulk_action(
        "ask",
        &BulkOperation::Unenroll { revoke: false },
        &ids(&["t1"]),
        now,
    )
    .await
    .unwrap();
    let t1 = s.get_agent("t1", now).await.unwrap();
    assert!(t1.active && t1.unenrollment_started_at.is_some());
    s.create_action(&bulk_action("ask2", ActionType::Unenroll))
        .await
        .unwrap();
    let again = s
        .apply_bulk_action(
            "ask2",
            &BulkOperation::Unenroll { revoke: false },
            &ids(&["t1"]),
            now,
        )
        .await
        .unwrap();
    assert_eq!(again, 0);
    s.create_action(&bulk_action("now", ActionType::Unenroll))
        .await
        .unwrap();
    s.apply_bulk_action(
        "now",
        &BulkOperation::Unenroll { revoke: true },
        &ids(&["t2"]),
        now,
    )
    .await
    .unwrap();
    assert!(!s.get_agent("t2", now).await.unwrap().active);
    let key = s.get_api_key("acc-t2").await.unwrap().unwrap();
    assert!(
        key.invalidated_at.is_some(),
        "a revoking unenrolment invalidates the keys"
    );
    let p = s.get_action_progress("now", now).await.unwrap();
    assert_eq!((p.nb_agents_ack, p.status.as_str()), (1, "COMPLETE"));

    // Listed newest first, a page at a time.
    let all = s.action_progress(page(1, 50), now).await.unwrap();
    assert_eq!(all.total, 5);
    assert!(all.items.iter().any(|a| a.action_id == "set"));
    assert_eq!(
        s.action_progress(page(2, 3), now)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

pub async fn bulk_targets_by_kuery_are_read_a_chunk_at_a_time(s: S) {
    use flotilla_domain::kuery;
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    for id in ["k1", "k2", "k3", "k4", "k5"] {
        enrolled(&s, id, "p").await;
    }
    enrolled(&s, "other", "q").await;
    enrolled(&s, "gone", "p").await;
    s.unenroll_now("gone", now).await.unwrap();
    let filter = AgentFilter {
        kuery: kuery::parse("policy_id:p", now).unwrap(),
        ..Default::default()
    };
    let first = s.agent_ids(&filter, None, 2, now).await.unwrap();
    assert_eq!(first, ["k1", "k2"]);
    let next = s.agent_ids(&filter, Some("k2"), 2, now).await.unwrap();
    assert_eq!(next, ["k3", "k4"]);
    let last = s.agent_ids(&filter, Some("k4"), 2, now).await.unwrap();
    assert_eq!(last, ["k5"], "unenrolled agents are not selected");
    assert!(s
        .agent_ids(&filter, Some("k5"), 2, now)
        .await
        .unwrap()
        .is_empty());
}
