//! Cases for the management resources: outputs, policies, integrations,
//! enrollment and operator keys, agents. (Test cases, each self-contained:
//! longer than most files on purpose.)

use super::*;

pub async fn outputs_keep_exactly_one_default(s: S) {
    let now = Utc::now();
    let a = s
        .create_output("a", &output("a", false), now)
        .await
        .unwrap();
    assert!(a.is_default, "the first output becomes the default");
    let b = s.create_output("b", &output("b", true), now).await.unwrap();
    assert!(b.is_default);
    assert!(!s.get_output("a").await.unwrap().is_default);
    assert_eq!(s.default_output().await.unwrap().unwrap().id, "b");

    assert!(matches!(
        s.create_output("c", &output("a", false), now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_output("a", &output("zz", false), now).await,
        Err(StoreError::Conflict(_))
    ));

    let unset = OutputUpdate {
        is_default: Some(false),
        ..Default::default()
    };
    assert!(matches!(
        s.update_output("b", &unset, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.delete_output("b").await,
        Err(StoreError::Conflict(_))
    ));

    let make_a_default = OutputUpdate {
        is_default: Some(true),
        ..Default::default()
    };
    s.update_output("a", &make_a_default, now).await.unwrap();
    assert_eq!(s.default_output().await.unwrap().unwrap().id, "a");
    s.delete_output("b").await.unwrap();
    assert!(matches!(
        s.get_output("b").await,
        Err(StoreError::NotFound { .. })
    ));

    let listed = s.list_outputs(page(1, 10)).await.unwrap();
    assert_eq!(listed.total, 1);
    assert_eq!(listed.items[0].hosts, ["https://es:9200"]);
}

pub async fn output_changes_bump_the_policies_that_use_them(s: S) {
    let now = Utc::now();
    s.create_output("def", &output("def", true), now)
        .await
        .unwrap();
    s.create_output("other", &output("other", false), now)
        .await
        .unwrap();
    s.create_policy(&policy("p-default", "on default"), now)
        .await
        .unwrap();
    let mut explicit = policy("p-other", "on other");
    explicit.output_id = Some("other".into());
    s.create_policy(&explicit, now).await.unwrap();
    let mut missing = policy("p-missing", "missing output");
    missing.output_id = Some("nope".into());
    assert!(matches!(
        s.create_policy(&missing, now).await,
        Err(StoreError::NotFound { .. })
    ));

    let hosts = OutputUpdate {
        hosts: Some(vec!["https://es2:9200".into()]),
        ..Default::default()
    };
    s.update_output("other", &hosts, now).await.unwrap();
    assert_eq!(s.get_policy("p-other").await.unwrap().revision, 2);
    assert_eq!(s.get_policy("p-default").await.unwrap().revision, 1);

    s.update_output("def", &hosts, now).await.unwrap();
    assert_eq!(s.get_policy("p-default").await.unwrap().revision, 2);

    // Moving the default flag changes where default-output policies send.
    let make_default = OutputUpdate {
        is_default: Some(true),
        ..Default::default()
    };
    s.update_output("other", &make_default, now).await.unwrap();
    assert_eq!(s.get_policy("p-default").await.unwrap().revision, 3);

    assert!(matches!(s.delete_output("def").await, Ok(())));
    assert!(matches!(
        s.delete_output("other").await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn policies_crud_and_paging(s: S) {
    let now = Utc::now();
    for i in 0..5 {
        s.create_policy(
            &policy(&format!("p{i}"), &format!("Policy {i}")),
            now + Duration::milliseconds(i),
        )
        .await
        .unwrap();
    }
    assert!(matches!(
        s.create_policy(&policy("p0", "another"), now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_policy(&policy("px", "Policy 1"), now).await,
        Err(StoreError::Conflict(_))
    ));

    let p = s.get_policy("p3").await.unwrap();
    assert_eq!(
        (p.name.as_str(), p.namespace.as_str(), p.revision),
        ("Policy 3", "default", 1)
    );
    assert!(matches!(
        s.get_policy("nope").await,
        Err(StoreError::NotFound { .. })
    ));

    let second = s
        .list_policies(&PolicyFilter::default(), page(2, 2))
        .await
        .unwrap();
    assert_eq!(second.total, 5);
    let ids: Vec<_> = second.items.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p2", "p3"]);
    let past = s
        .list_policies(&PolicyFilter::default(), page(9, 2))
        .await
        .unwrap();
    assert!(past.items.is_empty());

    let filtered = s
        .list_policies(
            &PolicyFilter {
                name: Some("policy 4".into()),
            },
            page(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(filtered.total, 1);
    let percent = s
        .list_policies(
            &PolicyFilter {
                name: Some("%".into()),
            },
            page(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(percent.total, 0, "LIKE wildcards in a filter are literal");

    s.delete_policy("p4").await.unwrap();
    assert!(matches!(
        s.delete_policy("p4").await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn policy_revision_counts_every_change(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    let update = AgentPolicyUpdate {
        namespace: Some("prod".into()),
        description: Some(Some("d".into())),
        ..Default::default()
    };
    let p = s.update_policy("p", &update, now).await.unwrap();
    assert_eq!(
        (p.revision, p.namespace.as_str(), p.description.as_deref()),
        (2, "prod", Some("d"))
    );
    let clear = AgentPolicyUpdate {
        description: Some(None),
        ..Default::default()
    };
    let p = s.update_policy("p", &clear, now).await.unwrap();
    assert_eq!((p.revision, p.description), (3, None));

    let rename = AgentPolicyUpdate {
        name: Some("Q".into()),
        ..Default::default()
    };
    assert!(matches!(
        s.update_policy("p", &rename, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get_policy("p").await.unwrap().revision,
        3,
        "a refused update changes nothing"
    );
    let bad_output = AgentPolicyUpdate {
        output_id: Some(Some("none".into())),
        ..Default::default()
    };
    assert!(matches!(
        s.update_policy("p", &bad_output, now).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.update_policy("zz", &clear, now).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn concurrent_policy_updates_lose_nothing(s: S) {
    install_nginx(&*s).await;
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let u = AgentPolicyUpdate {
                    description: Some(Some(format!("d{i}"))),
                    ..Default::default()
                };
                s.update_policy("p", &u, Utc::now()).await.map(|_| ())
            } else {
                s.create_package_policy(&integration(&format!("i{i}"), "p"), Utc::now())
                    .await
                    .map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.get_policy("p").await.unwrap().revision, 17);
}

pub async fn integrations_bump_their_policy(s: S) {
    install_nginx(&*s).await;
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    assert!(matches!(
        s.create_package_policy(&integration("x", "missing"), now)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let mut new = integration("i1", "p");
    new.vars.insert(
        "k".into(),
        flotilla_domain::package_policy::ConfigVar {
            value: Some(json!("v")),
            var_type: Some("text".into()),
        },
    );
    new.namespace = Some("prod".into());
    let pp = s.create_package_policy(&new, now).await.unwrap();
    assert_eq!(pp.vars["k"].value, Some(json!("v")));
    assert_eq!(pp.vars["k"].var_type.as_deref(), Some("text"));
    assert_eq!(pp.namespace.as_deref(), Some("prod"));
    assert_eq!(s.get_policy("p").await.unwrap().revision, 2);
    let mut dup = integration("i2", "p");
    dup.name = pp.name.clone();
    assert!(matches!(
        s.create_package_policy(&dup, now).await,
        Err(StoreError::Conflict(_))
    ));

    s.create_package_policy(&integration("i2", "p"), now + Duration::milliseconds(1))
        .await
        .unwrap();
    let ids: Vec<_> = s
        .policy_integrations("p")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["i1", "i2"]);

    let mut moved = integration("i1", "q");
    moved.name = pp.name.clone();
    let stale = now - Duration::seconds(60);
    assert!(
        matches!(
            s.update_package_policy("i1", &moved, Some(stale), now)
                .await,
            Err(StoreError::Conflict(_))
        ),
        "an update based on a stale read is refused"
    );
    let current = s.get_package_policy("i1").await.unwrap().updated_at;
    s.update_package_policy("i1", &moved, Some(current), now)
        .await
        .unwrap();
    assert_eq!(s.get_policy("p").await.unwrap().revision, 4);
    assert_eq!(s.get_policy("q").await.unwrap().revision, 2);

    let on_q = s
        .list_package_policies(
            &PackagePolicyFilter {
                policy_id: Some("q".into()),
                ..Default::default()
            },
            page(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(on_q.total, 1);

    s.delete_package_policy("i1", now).await.unwrap();
    assert_eq!(s.get_policy("q").await.unwrap().revision, 3);
    assert!(matches!(
        s.get_package_policy("i1").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete_package_policy("i1", now).await,
        Err(StoreError::NotFound { .. })
    ));
}

fn enrollment_key(id: &str, policy_id: &str) -> EnrollmentApiKey {
    EnrollmentApiKey {
        id: id.into(),
        name: format!("key {id}"),
        policy_id: policy_id.into(),
        active: true,
        hint: "abcd".into(),
        created_at: Utc::now(),
        expiration: None,
        max_uses: None,
        uses: 0,
    }
}

pub async fn deleting_a_policy_removes_its_integrations_and_keys(s: S) {
    install_nginx(&*s).await;
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_package_policy(&integration("i", "p"), now)
        .await
        .unwrap();
    s.create_enrollment_key(&enrollment_key("k", "p"), "hash-k")
        .await
        .unwrap();
    s.insert_agent(&agent("a", "p", &[])).await.unwrap();
    assert!(
        matches!(s.delete_policy("p").await, Err(StoreError::Conflict(_))),
        "active agents block deletion"
    );
    s.unenroll_now("a", now).await.unwrap();
    s.delete_policy("p").await.unwrap();
    assert!(matches!(
        s.get_package_policy("i").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(s
        .find_enrollment_key_by_hash("hash-k")
        .await
        .unwrap()
        .is_none());
    // The unenrolled agent's record survives its policy.
    assert_eq!(
        s.get_agent("a", now).await.unwrap().status,
        AgentStatus::Unenrolled
    );
}

pub async fn enrollment_keys_lookup_and_revoke(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    assert!(matches!(
        s.create_enrollment_key(&enrollment_key("x", "none"), "h")
            .await,
        Err(StoreError::NotFound { .. })
    ));
    s.create_enrollment_key(&enrollment_key("k1", "p"), "hash-1")
        .await
        .unwrap();
    s.create_enrollment_key(&enrollment_key("k2", "q"), "hash-2")
        .await
        .unwrap();
    assert!(matches!(
        s.create_enrollment_key(&enrollment_key("k3", "q"), "hash-2")
            .await,
        Err(StoreError::Conflict(_))
    ));
    let found = s
        .find_enrollment_key_by_hash("hash-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.id.as_str(), found.policy_id.as_str(), found.active),
        ("k1", "p", true)
    );
    assert!(s
        .find_enrollment_key_by_hash("hash-x")
        .await
        .unwrap()
        .is_none());

    let on_q = s
        .list_enrollment_keys(
            &EnrollmentKeyFilter {
                policy_id: Some("q".into()),
            },
            page(1, 10),
        )
        .await
        .unwrap();
    assert_eq!(
        on_q.items.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["k2"]
    );

    let revoked = s.revoke_enrollment_key("k1").await.unwrap();
    assert!(!revoked.active);
    assert!(
        !s.find_enrollment_key_by_hash("hash-1")
            .await
            .unwrap()
            .unwrap()
            .active
    );
    assert!(matches!(
        s.revoke_enrollment_key("nope").await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn agents_filter_reassign_and_unenroll(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    s.insert_agent(&agent("a1", "p", &["eu", "web"]))
        .await
        .unwrap();
    s.insert_agent(&agent("a2", "p", &["us"])).await.unwrap();
    s.insert_agent(&agent("a3", "q", &["eu"])).await.unwrap();
    assert!(matches!(
        s.insert_agent(&agent("a1", "p", &[])).await,
        Err(StoreError::Conflict(_))
    ));

    let a1 = s.get_agent("a1", now).await.unwrap();
    assert_eq!(a1.tags, ["eu", "web"]);
    assert_eq!(a1.status, AgentStatus::Enrolling);
    assert_eq!(a1.local_metadata["host"]["hostname"], "a1");
    assert!(matches!(
        s.get_agent("zz", now).await,
        Err(StoreError::NotFound { .. })
    ));

    let by_policy = s
        .list_agents(
            &AgentFilter {
                policy_id: Some("p".into()),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(by_policy.total, 2);
    let by_tag = s
        .list_agents(
            &AgentFilter {
                tag: Some("eu".into()),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    let mut ids: Vec<_> = by_tag.items.iter().map(|a| a.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["a1", "a3"]);
    let paged = s
        .list_agents(&AgentFilter::default(), page(2, 2), now)
        .await
        .unwrap();
    assert_eq!((paged.total, paged.items.len()), (3, 1));

    let moved = s.reassign_agent("a2", "q", now).await.unwrap();
    assert_eq!(
        (moved.policy_id.as_str(), moved.policy_revision),
        ("q", None)
    );
    assert!(matches!(
        s.reassign_agent("a2", "none", now).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.reassign_agent("zz", "q", now).await,
        Err(StoreError::NotFound { .. })
    ));

    let tagged = s.set_agent_tags("a2", &["blue".into()], now).await.unwrap();
    assert_eq!(tagged.tags, ["blue"]);

    let leaving = s
        .start_agent_unenrollment("a3", &unenroll_action("u-a3", "a3"), now)
        .await
        .unwrap();
    assert_eq!(leaving.status, AgentStatus::Unenrolling);
    s.unenroll_now("a3", now).await.unwrap();
    let gone = s.get_agent("a3", now).await.unwrap();
    assert_eq!(gone.status, AgentStatus::Unenrolled);
    assert!(gone.unenrolled_at.is_some());
    s.unenroll_now("a3", now).await.unwrap();
    assert_eq!(
        s.get_agent("a3", now).await.unwrap().unenrolled_at,
        gone.unenrolled_at,
        "idempotent"
    );
    assert!(matches!(
        s.unenroll_now("zz", now).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.reassign_agent("a3", "p", now).await,
        Err(StoreError::Conflict(_))
    ));

    let active = s
        .list_agents(&AgentFilter::default(), page(1, 10), now)
        .await
        .unwrap();
    assert_eq!(active.total, 2, "unenrolled agents are hidden by default");
    let all = s
        .list_agents(
            &AgentFilter {
                show_inactive: true,
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(all.total, 3);
    let unenrolled = s
        .list_agents(
            &AgentFilter {
                status: Some(AgentStatus::Unenrolled),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        unenrolled
            .items
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["a3"]
    );
}

pub async fn operator_keys_lookup_and_revoke(s: S) {
    let key = OperatorApiKey {
        id: "k1".into(),
        name: "admin".into(),
        active: true,
        hint: "flt_".into(),
        created_at: Utc::now(),
    };
    s.create_operator_key(&key, "h1").await.unwrap();
    let dup = OperatorApiKey {
        id: "k2".into(),
        ..key.clone()
    };
    assert!(matches!(
        s.create_operator_key(&dup, "h2").await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.find_operator_key_by_hash("h1").await.unwrap().unwrap().id,
        "k1"
    );
    assert!(s.find_operator_key_by_hash("h2").await.unwrap().is_none());
    assert_eq!(s.list_operator_keys(page(1, 10)).await.unwrap().total, 1);
    s.revoke_operator_key("k1").await.unwrap();
    assert!(s.find_operator_key_by_hash("h1").await.unwrap().is_none());
    assert!(matches!(
        s.revoke_operator_key("zz").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// (id, revision) names one content for ever: caches and action ids trust it.
pub async fn revisions_never_repeat_across_delete_and_recreate(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    let u = AgentPolicyUpdate {
        description: Some(Some("x".into())),
        ..Default::default()
    };
    assert_eq!(s.update_policy("q", &u, now).await.unwrap().revision, 2);
    s.delete_policy("q").await.unwrap();
    let again = s.create_policy(&policy("q", "Q"), now).await.unwrap();
    assert_eq!(
        again.revision, 3,
        "a recreated policy starts above the deleted one"
    );
    s.update_policy("q", &u, now).await.unwrap();
    s.delete_policy("q").await.unwrap();
    assert_eq!(
        s.create_policy(&policy("q", "Q"), now)
            .await
            .unwrap()
            .revision,
        5
    );
    // Other ids are unaffected.
    assert_eq!(
        s.create_policy(&policy("r", "R"), now)
            .await
            .unwrap()
            .revision,
        1
    );
}
