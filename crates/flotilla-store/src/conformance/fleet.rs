//! Cases for the fleet protocol's storage: enrolment, output keys, actions, check-ins, change events.

use super::*;

pub async fn enrolment_output_keys_and_retirement(s: S) {
    let now = Utc::now();
    let mut a = agent("a", "missing", &["t"]);
    a.access_api_key_id = Some("acc".into());
    assert!(matches!(
        s.enroll_agent(&a, &key("acc", "a", "access"), &[]).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        s.get_fleet_agent("a").await.unwrap().is_none(),
        "nothing recorded against a missing policy"
    );
    assert!(s.get_api_key("acc").await.unwrap().is_none());

    s.create_policy(&policy("p", "P"), now).await.unwrap();
    a.policy_id = "p".into();
    a.enrollment_id = Some("e1".into());
    let enrolled = s
        .enroll_agent(&a, &key("acc", "a", "access"), &[])
        .await
        .unwrap();
    assert_eq!(enrolled.tags, ["t"]);
    let fa = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(fa.access_api_key_id.as_deref(), Some("acc"));
    assert_eq!(fa.enrollment_id.as_deref(), Some("e1"));

    s.set_output_key("a", &output_change("o1", "a", 2, None))
        .await
        .unwrap();
    assert!(
        matches!(
            s.set_output_key("a", &output_change("lost", "a", 2, None))
                .await,
            Err(StoreError::Conflict(_))
        ),
        "a rotation racing another loses instead of overwriting it"
    );
    assert!(s.get_api_key("lost").await.unwrap().is_none());
    s.set_output_key("a", &output_change("o2", "a", 3, Some("o1")))
        .await
        .unwrap();
    let fa = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(
        (fa.output_api_key_id.as_deref(), fa.output_key_revision),
        (Some("o2"), Some(3))
    );
    assert_eq!(fa.output_api_key_sealed.as_deref(), Some("sealed-o2"));
    assert!(s.get_api_key("o1").await.unwrap().unwrap().retire_pending);
    assert!(!s.get_api_key("o2").await.unwrap().unwrap().retire_pending);

    // A revision the policy never reached is not believed.
    assert!(s
        .agent_runs_policy("a", "p", 99, now)
        .await
        .unwrap()
        .is_empty());
    let fa = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(fa.policy_revision, None);
    // Bring the policy to revision 3.
    for d in ["x", "y"] {
        let u = AgentPolicyUpdate {
            description: Some(Some(d.into())),
            ..Default::default()
        };
        s.update_policy("p", &u, now).await.unwrap();
    }
    // Running an older revision retires nothing; the new one retires o1.
    assert!(s
        .agent_runs_policy("a", "p", 2, now)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.get_fleet_agent("a")
            .await
            .unwrap()
            .unwrap()
            .policy_revision,
        Some(2)
    );
    assert_eq!(s.agent_runs_policy("a", "p", 3, now).await.unwrap(), ["o1"]);
    assert!(s
        .get_api_key("o1")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(s
        .get_api_key("o2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_none());
    assert!(s
        .agent_runs_policy("a", "other", 9, now)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        s.get_fleet_agent("a")
            .await
            .unwrap()
            .unwrap()
            .policy_revision,
        Some(3)
    );

    // Replacing the agent removes it and its keys; unenrolling invalidates all.
    let mut b = agent("a", "p", &[]);
    b.access_api_key_id = Some("acc2".into());
    s.enroll_agent(&b, &key("acc2", "a", "access"), &["a".to_string()])
        .await
        .unwrap();
    assert!(s
        .get_api_key("acc")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(s
        .get_api_key("o2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    s.unenroll_now("a", now).await.unwrap();
    assert!(s
        .get_api_key("acc2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(!s.get_fleet_agent("a").await.unwrap().unwrap().active);
    assert_eq!(
        s.invalidate_api_keys(&["acc2".into()], now).await.unwrap(),
        0,
        "idempotent"
    );

    s.audit_unenroll("a", "orphaned", now, now).await.unwrap();
    assert!(matches!(
        s.audit_unenroll("a", "uninstall", now, now).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn actions_are_delivered_until_confirmed_and_acked(s: S) {
    let now = Utc::now();
    let new = |id: &str, agents: &[&str], expiration| NewAction {
        id: id.into(),
        action_type: ActionType::Settings,
        data: json!({"log_level": "debug"}),
        created_at: now,
        expiration,
        agent_ids: agents.iter().map(|a| a.to_string()).collect(),
    };
    s.create_action(&new("x1", &["a", "b"], None))
        .await
        .unwrap();
    s.create_action(&new("x2", &["a"], Some(now - Duration::seconds(1))))
        .await
        .unwrap();
    let pending = s.pending_actions("a", now, 100).await.unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["x1"],
        "expired actions are not delivered"
    );
    assert_eq!(pending[0].data["log_level"], "debug");

    s.mark_delivered("a", &["x1".into()], "tok1").await.unwrap();
    assert_eq!(
        s.pending_actions("a", now, 100).await.unwrap().len(),
        1,
        "unconfirmed deliveries are resent"
    );
    s.confirm_delivery("a", "tok1").await.unwrap();
    assert!(s.pending_actions("a", now, 100).await.unwrap().is_empty());
    assert_eq!(
        s.pending_actions("b", now, 100).await.unwrap().len(),
        1,
        "per agent"
    );

    assert_eq!(
        s.ack_action("b", "x1", None, now).await.unwrap(),
        ActionAck::Acked {
            action_type: ActionType::Settings,
            first_time: true
        }
    );
    assert!(
        s.pending_actions("b", now, 100).await.unwrap().is_empty(),
        "acked actions are done"
    );
    assert_eq!(
        s.ack_action("b", "x1", None, now).await.unwrap(),
        ActionAck::Acked {
            action_type: ActionType::Settings,
            first_time: false
        }
    );
    assert_eq!(
        s.ack_action("c", "x1", None, now).await.unwrap(),
        ActionAck::OtherAgent
    );
    assert_eq!(
        s.ack_action("a", "nope", None, now).await.unwrap(),
        ActionAck::NotFound
    );

    // The operator's view: delivery and acknowledgement per agent.
    s.ack_action("a", "x1", Some("could not apply"), now)
        .await
        .unwrap();
    let a = s.agent_actions("a", page(1, 10)).await.unwrap();
    assert_eq!(a.total, 2);
    let x1 = a.items.iter().find(|i| i.action.id == "x1").unwrap();
    assert!(x1.delivered && x1.acked_at.is_some());
    assert_eq!(x1.ack_error.as_deref(), Some("could not apply"));
    let x2 = a.items.iter().find(|i| i.action.id == "x2").unwrap();
    assert!(!x2.delivered && x2.acked_at.is_none());
    assert_eq!(s.agent_actions("b", page(1, 10)).await.unwrap().total, 1);

    // Expiry: x2 expired a second ago; nothing was created before an hour ago.
    let n = s
        .expire_actions(now - Duration::hours(1), now)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let a = s.agent_actions("a", page(1, 10)).await.unwrap();
    assert_eq!(
        a.items
            .iter()
            .map(|i| i.action.id.as_str())
            .collect::<Vec<_>>(),
        ["x1"]
    );
    let n = s
        .expire_actions(now + Duration::seconds(1), now)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(s.agent_actions("b", page(1, 10)).await.unwrap().total, 0);
}

pub async fn checkins_are_recorded_in_batches(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.insert_agent(&agent("a", "p", &[])).await.unwrap();
    s.insert_agent(&agent("b", "p", &[])).await.unwrap();
    let rec = |id: &str, status: &str| CheckinRecord {
        agent_id: id.into(),
        at: now,
        status: status.into(),
        message: "m".into(),
        local_metadata: Some(json!({"host": {"hostname": format!("{id}-new")}})),
        components: None,
        agent_version: Some("9.6.0".into()),
        reported_policy: Some(("p".into(), 1)),
    };
    s.record_checkins(&[
        rec("a", "online"),
        rec("b", "error"),
        rec("ghost", "online"),
    ])
    .await
    .unwrap();
    let a = s.get_agent("a", now).await.unwrap();
    assert_eq!(a.status, AgentStatus::Online);
    assert_eq!(a.local_metadata["host"]["hostname"], "a-new");
    assert_eq!(a.agent_version.as_deref(), Some("9.6.0"));
    assert_eq!(
        (a.reported_policy_id.as_deref(), a.reported_policy_revision),
        (Some("p"), Some(1))
    );
    assert_eq!(
        s.get_agent("b", now).await.unwrap().status,
        AgentStatus::Error
    );
    let later = now + Duration::seconds(600);
    assert_eq!(
        s.get_agent("a", later).await.unwrap().status,
        AgentStatus::Offline
    );
    let much_later = now + Duration::seconds(7200);
    assert_eq!(
        s.get_agent("a", much_later).await.unwrap().status,
        AgentStatus::Inactive
    );
    let online = s
        .list_agents(
            &AgentFilter {
                status: Some(AgentStatus::Online),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(online.total, 1);

    // One agent twice in a batch: both apply, in time order (the later
    // one's status stands, the earlier one's metadata is kept where the
    // later one sends none); one older than what is stored changes nothing.
    let t1 = now + Duration::seconds(1);
    let t2 = now + Duration::seconds(2);
    let mut second = rec("b", "degraded");
    second.at = t2;
    second.local_metadata = None;
    let mut first = rec("b", "online");
    first.at = t1;
    first.local_metadata = Some(json!({"host": {"hostname": "b-t1"}}));
    let mut stale = rec("a", "error");
    stale.at = now - Duration::seconds(60);
    s.record_checkins(&[first, stale, second]).await.unwrap();
    let b = s.get_agent("b", t2).await.unwrap();
    assert_eq!(b.status, AgentStatus::Degraded);
    assert_eq!(b.local_metadata["host"]["hostname"], "b-t1");
    assert_eq!(
        s.get_agent("a", t2).await.unwrap().status,
        AgentStatus::Online
    );
}

pub async fn changes_reach_subscribers(s: S) {
    install_nginx(&*s).await;
    let now = Utc::now();
    let mut events = s.subscribe();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_package_policy(&integration("i", "p"), now)
        .await
        .unwrap();
    let wanted = StoreEvent::PolicyChanged {
        policy_id: Some("p".into()),
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(e) if e == wanted => return e,
                Ok(_) => continue,
                Err(e) => panic!("subscription failed: {e}"),
            }
        }
    })
    .await
    .expect("the change event arrives");
    assert_eq!(got, wanted);
}

pub async fn one_active_agent_per_enrollment_id(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.create_policy(&policy("p2", "P2"), now).await.unwrap();
    // Never checked in: the next enrolment with its enrollment id removes it.
    let (a, k) = enrolling("a", "p", "e");
    s.enroll_agent(&a, &k, &[]).await.unwrap();
    let (b, k) = enrolling("b", "p", "e");
    s.enroll_agent(&b, &k, &[]).await.unwrap();
    assert!(s.get_fleet_agent("a").await.unwrap().is_none());
    assert!(s
        .get_api_key("acc-a")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    // Checked in: unenrolled (kept as a record), its keys invalidated.
    s.record_checkins(&[CheckinRecord {
        agent_id: "b".into(),
        at: now,
        status: "online".into(),
        message: String::new(),
        local_metadata: None,
        components: None,
        agent_version: None,
        reported_policy: None,
    }])
    .await
    .unwrap();
    // Checked in, or on another policy: a live agent no enrolment may
    // displace; the enrolment is refused and nothing changes.
    for (id, policy_id) in [("c", "p2"), ("d", "p")] {
        let (c, k) = enrolling(id, policy_id, "e");
        assert!(
            matches!(s.enroll_agent(&c, &k, &[]).await, Err(StoreError::InUse(_))),
            "{id} on {policy_id}"
        );
        assert!(s.get_fleet_agent(id).await.unwrap().is_none());
    }
    let b = s.get_fleet_agent("b").await.unwrap().unwrap();
    assert!(b.active, "the live agent keeps its enrollment id");
    assert!(s
        .get_api_key("acc-b")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_none());
    // Another policy's agent that never checked in is not removed either.
    let (x, k) = enrolling("x", "p2", "e2");
    s.enroll_agent(&x, &k, &[]).await.unwrap();
    let (y, k) = enrolling("y", "p", "e2");
    assert!(matches!(
        s.enroll_agent(&y, &k, &[]).await,
        Err(StoreError::InUse(_))
    ));
    assert!(s.get_fleet_agent("x").await.unwrap().unwrap().active);
}

pub async fn a_key_less_output_retires_the_agents_key(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    let mut a = agent("a", "p", &[]);
    a.access_api_key_id = Some("acc".into());
    s.enroll_agent(&a, &key("acc", "a", "access"), &[])
        .await
        .unwrap();
    s.set_output_key("a", &output_change("o1", "a", 1, None))
        .await
        .unwrap();
    s.agent_runs_policy("a", "p", 1, now).await.unwrap();
    let u = AgentPolicyUpdate {
        description: Some(Some("to logstash".into())),
        ..Default::default()
    };
    s.update_policy("p", &u, now).await.unwrap();
    assert!(
        !s.retire_output_key("a", "other", "p", 2, now)
            .await
            .unwrap(),
        "not its current key"
    );
    assert!(s.retire_output_key("a", "o1", "p", 2, now).await.unwrap());
    let fa = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(fa.output_api_key_id, None);
    let o1 = s.get_api_key("o1").await.unwrap().unwrap();
    assert!(
        o1.retire_pending && o1.invalidated_at.is_none(),
        "valid until the agent runs revision 2"
    );
    assert_eq!(s.agent_runs_policy("a", "p", 2, now).await.unwrap(), ["o1"]);
    assert!(s
        .get_api_key("o1")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());

    // An agent already running the revision loses the key at once.
    s.set_output_key("a", &output_change("o2", "a", 2, None))
        .await
        .unwrap();
    assert!(s.retire_output_key("a", "o2", "p", 2, now).await.unwrap());
    assert!(s
        .get_api_key("o2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(s
        .get_api_key("acc")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_none());
}

pub async fn unenrolment_and_its_action_are_one_transaction(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    enrolled(&s, "a", "p").await;
    enrolled(&s, "b", "p").await;
    s.create_action(&unenroll_action("taken", "b"))
        .await
        .unwrap();
    // The action cannot be stored: the agent is not left "unenrolling".
    assert!(matches!(
        s.start_agent_unenrollment("a", &unenroll_action("taken", "a"), now)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get_agent("a", now).await.unwrap().status,
        AgentStatus::Enrolling
    );
    let leaving = s
        .start_agent_unenrollment("a", &unenroll_action("u-a", "a"), now)
        .await
        .unwrap();
    assert_eq!(leaving.status, AgentStatus::Unenrolling);
    let pending = s.pending_actions("a", now, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].action_type, ActionType::Unenroll);
}

pub async fn the_offline_threshold_is_a_setting(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    s.insert_agent(&agent("a", "p", &[])).await.unwrap();
    s.record_checkins(&[CheckinRecord {
        agent_id: "a".into(),
        at: now - Duration::seconds(120),
        status: "online".into(),
        message: "m".into(),
        local_metadata: None,
        components: None,
        agent_version: None,
        reported_policy: None,
    }])
    .await
    .unwrap();
    assert_eq!(
        s.get_agent("a", now).await.unwrap().status,
        AgentStatus::Online,
        "two minutes is within the default five"
    );
    s.set_offline_after(std::time::Duration::from_secs(60));
    assert_eq!(
        s.get_agent("a", now).await.unwrap().status,
        AgentStatus::Offline
    );
    let offline = s
        .list_agents(
            &AgentFilter {
                status: Some(AgentStatus::Offline),
                ..Default::default()
            },
            page(1, 10),
            now,
        )
        .await
        .unwrap();
    assert_eq!(offline.total, 1);
}

pub async fn revisions_run_are_written_in_one_batch(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for id in ["b", "c"] {
        s.insert_agent(&agent(id, "p", &[])).await.unwrap();
    }
    let run = |a: &str, rev: i64| crate::RunsPolicy {
        agent_id: a.into(),
        policy_id: "p".into(),
        revision: rev,
    };
    // Out of id order, an unknown agent and an unbelievable revision among
    // them: each gets its own answer, in the order given.
    let out = s
        .agents_run_policies(
            &[run("c", 1), run("ghost", 1), run("b", 99), run("b", 1)],
            now,
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 4);
    assert!(out.iter().all(Vec::is_empty));
    for id in ["b", "c"] {
        let fa = s.get_fleet_agent(id).await.unwrap().unwrap();
        assert_eq!(fa.policy_revision, Some(1), "{id}");
    }
    assert!(s.agents_run_policies(&[], now).await.unwrap().is_empty());
}

pub async fn key_rotations_are_written_in_one_batch(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    for id in ["a", "b", "c", "d"] {
        enrolled(&s, id, "p").await;
    }
    s.unenroll_now("c", now).await.unwrap();
    s.set_output_key("d", &output_change("d1", "d", 1, None))
        .await
        .unwrap();
    let rot = |agent: &str, key: &str, replaces: Option<&str>| {
        (agent.to_owned(), output_change(key, agent, 1, replaces))
    };
    // Out of id order; one agent three times (the second replaces the
    // first's key, the third raced the first and lost); an inactive agent,
    // a stale compare-and-swap and an unknown agent, each losing alone.
    let out = s
        .set_output_keys(&[
            rot("b", "b1", None),
            rot("a", "a1", None),
            rot("a", "a2", Some("a1")),
            rot("a", "a-lost", None),
            rot("c", "c1", None),
            rot("d", "d-stale", None),
            rot("ghost", "g1", None),
        ])
        .await
        .unwrap();
    assert_eq!(out, [true, true, true, false, false, false, false]);
    let a = s.get_fleet_agent("a").await.unwrap().unwrap();
    assert_eq!(a.output_api_key_id.as_deref(), Some("a2"));
    assert_eq!(a.output_api_key_sealed.as_deref(), Some("sealed-a2"));
    assert!(s.get_api_key("a1").await.unwrap().unwrap().retire_pending);
    assert!(!s.get_api_key("a2").await.unwrap().unwrap().retire_pending);
    for lost in ["a-lost", "c1", "d-stale", "g1"] {
        assert!(s.get_api_key(lost).await.unwrap().is_none(), "{lost}");
    }
    let d = s.get_fleet_agent("d").await.unwrap().unwrap();
    assert_eq!(d.output_api_key_id.as_deref(), Some("d1"));
    assert!(s.set_output_keys(&[]).await.unwrap().is_empty());

    // Acked in one batch: a's replaced key is invalidated, b had none.
    let run = |agent: &str| crate::RunsPolicy {
        agent_id: agent.into(),
        policy_id: "p".into(),
        revision: 1,
    };
    let retired = s
        .agents_run_policies(&[run("b"), run("a"), run("a")], now)
        .await
        .unwrap();
    assert_eq!(retired, [vec![], vec!["a1".to_owned()], vec![]]);
    assert!(s
        .get_api_key("a1")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_some());
    assert!(s
        .get_api_key("a2")
        .await
        .unwrap()
        .unwrap()
        .invalidated_at
        .is_none());
}

pub async fn enrolments_are_written_in_one_batch(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    enrolled(&s, "old", "p").await;
    let plain = |id: &str, policy_id: &str, key_id: &str, tags: &[&str]| {
        let mut a = agent(id, policy_id, tags);
        let access = key(key_id, id, "access");
        a.access_api_key_id = Some(access.id.clone());
        crate::Enrolment {
            agent: a,
            access_key: access,
            replace: vec![],
            key_use: Default::default(),
        }
    };
    let (a, access) = enrolling("b4", "p", "e9");
    let with_id = crate::Enrolment {
        agent: a,
        access_key: access,
        replace: vec![],
        key_use: Default::default(),
    };
    let mut replacing = plain("b5", "p", "acc-b5", &[]);
    replacing.replace = vec!["old".into()];
    // Plain ones (one on a missing policy, one id twice) with one that has
    // an enrollment id and one that replaces an agent.
    let out = s
        .enroll_agents(&[
            plain("b1", "p", "acc-b1", &["t2", "t1"]),
            plain("b2", "missing", "acc-b2", &[]),
            plain("b3", "p", "acc-b3", &[]),
            plain("b1", "p", "acc-b1-again", &[]),
            with_id,
            replacing,
        ])
        .await
        .unwrap();
    assert!(
        out[0].is_ok() && out[2].is_ok() && out[4].is_ok() && out[5].is_ok(),
        "{out:?}"
    );
    assert!(
        matches!(out[1], Err(StoreError::NotFound { .. })),
        "{out:?}"
    );
    assert!(matches!(out[3], Err(StoreError::Conflict(_))), "{out:?}");
    let b1 = s.get_agent("b1", now).await.unwrap();
    let mut tags = b1.tags.clone();
    tags.sort();
    assert_eq!(tags, ["t1", "t2"]);
    assert_eq!(b1.local_metadata["host"]["hostname"], "b1");
    let fa = s.get_fleet_agent("b1").await.unwrap().unwrap();
    assert!(fa.active);
    assert_eq!(fa.access_api_key_id.as_deref(), Some("acc-b1"));
    assert_eq!(
        s.get_api_key("acc-b1")
            .await
            .unwrap()
            .unwrap()
            .agent_id
            .as_deref(),
        Some("b1")
    );
    for absent in ["acc-b2", "acc-b1-again", "acc-old"] {
        assert!(
            s.get_api_key(absent)
                .await
                .unwrap()
                .is_none_or(|k| k.invalidated_at.is_some()),
            "{absent}"
        );
    }
    assert!(s.get_fleet_agent("b2").await.unwrap().is_none());
    assert!(s.get_fleet_agent("b3").await.unwrap().is_some());
    assert_eq!(
        s.get_fleet_agent("b4")
            .await
            .unwrap()
            .unwrap()
            .enrollment_id
            .as_deref(),
        Some("e9")
    );
    assert!(s.get_fleet_agent("old").await.unwrap().is_none());
    assert!(s.get_fleet_agent("b5").await.unwrap().is_some());

    // A plain one whose id already exists: refused, and whatever the
    // engine wrote with it in the same transaction is either written
    // whole or not at all (then the caller retries one by one).
    match s
        .enroll_agents(&[
            plain("c1", "p", "acc-c1", &[]),
            plain("b3", "p", "acc-b3-again", &[]),
        ])
        .await
    {
        Ok(out) => {
            assert!(out[1].is_err(), "{out:?}");
            assert_eq!(
                out[0].is_ok(),
                s.get_fleet_agent("c1").await.unwrap().is_some()
            );
        }
        Err(_) => assert!(s.get_fleet_agent("c1").await.unwrap().is_none()),
    }
    assert!(s.get_api_key("acc-b3-again").await.unwrap().is_none());
    assert!(s.enroll_agents(&[]).await.unwrap().is_empty());
}

pub async fn an_agent_and_a_key_read_together_as_apart(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    enrolled(&s, "a1", "p").await;
    enrolled(&s, "a2", "p").await;
    let apart = |agent: &'static str, key: &'static str| {
        let s = s.clone();
        async move {
            (
                s.get_fleet_agent(agent).await.unwrap(),
                s.get_api_key(key).await.unwrap(),
            )
        }
    };
    for (agent, key) in [
        ("a1", "acc-a1"),
        ("a1", "acc-a2"),
        ("a1", "nope"),
        ("nope", "acc-a2"),
        ("nope", "nope"),
    ] {
        let together = s.fleet_agent_and_key(agent, key).await.unwrap();
        let expected = apart(agent, key).await;
        assert_eq!(together.0.is_some(), agent != "nope", "{agent} {key}");
        assert_eq!(together.1.is_some(), key != "nope", "{agent} {key}");
        assert_eq!(together, expected, "{agent} {key}");
    }
    // An invalidated key reads as such.
    s.invalidate_api_keys(&["acc-a1".into()], now)
        .await
        .unwrap();
    let (_, k) = s.fleet_agent_and_key("a1", "acc-a1").await.unwrap();
    assert!(k.unwrap().invalidated_at.is_some());
}

pub async fn checkin_reads_give_the_policy_revision_and_pending_actions(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    enrolled(&s, "a", "p").await;
    enrolled(&s, "b", "p").await;
    let revision = s.get_policy("p").await.unwrap().revision;
    // Nothing pending: the revision still comes back.
    assert_eq!(
        s.checkin_reads("a", "p", now, 100).await.unwrap(),
        (Some(revision), vec![])
    );
    let new = |id: &str, agents: &[&str], minutes: i64, expiration| NewAction {
        id: id.into(),
        action_type: ActionType::Settings,
        data: json!({"log_level": "debug", "n": id}),
        created_at: now + chrono::Duration::minutes(minutes),
        expiration,
        agent_ids: agents.iter().map(|a| a.to_string()).collect(),
    };
    s.create_action(&new("x2", &["a"], 2, None)).await.unwrap();
    s.create_action(&new("x1", &["a", "b"], 1, None))
        .await
        .unwrap();
    s.create_action(&new("x3", &["a"], 3, None)).await.unwrap();
    let expired = new("x0", &["a"], 0, Some(now - chrono::Duration::seconds(1)));
    s.create_action(&expired).await.unwrap();
    let (rev, actions) = s.checkin_reads("a", "p", now, 100).await.unwrap();
    assert_eq!(rev, Some(revision));
    assert_eq!(actions, s.pending_actions("a", now, 100).await.unwrap());
    let ids: Vec<&str> = actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["x1", "x2", "x3"], "oldest first, expired left out");
    assert_eq!(actions[0].data["n"], "x1");
    let (_, two) = s.checkin_reads("a", "p", now, 2).await.unwrap();
    assert_eq!(two.len(), 2, "the limit holds");
    // Another policy's revision, and a policy that does not exist.
    s.create_policy(&policy("q", "Q"), now).await.unwrap();
    let (rev_q, for_b) = s.checkin_reads("b", "q", now, 100).await.unwrap();
    assert_eq!(rev_q, Some(s.get_policy("q").await.unwrap().revision));
    assert_eq!(for_b.len(), 1);
    assert_eq!(
        s.checkin_reads("a", "missing", now, 100).await.unwrap().0,
        None
    );
}

/// The check-in's first read is the two it replaces, read together:
/// the agent, the key, its policy's revision and its pending actions.
pub async fn the_checkin_context_is_the_agent_the_key_and_the_checkin_reads(s: S) {
    let now = Utc::now();
    s.create_policy(&policy("p", "P"), now).await.unwrap();
    enrolled(&s, "a", "p").await;
    enrolled(&s, "b", "p").await;
    let separate = |agent: &'static str, key: &'static str| {
        let s = s.clone();
        async move {
            let (a, k) = s.fleet_agent_and_key(agent, key).await.unwrap();
            let (rev, actions) = match &a {
                Some(a) => s
                    .checkin_reads(&a.id, &a.policy_id, now, 100)
                    .await
                    .unwrap(),
                None => (None, vec![]),
            };
            crate::CheckinContext {
                agent: a,
                key: k,
                policy_revision: rev,
                actions,
            }
        }
    };
    let together = |agent: &'static str, key: &'static str| {
        let s = s.clone();
        async move { s.checkin_context(agent, key, now, 100).await.unwrap() }
    };
    // Nothing pending.
    let ctx = together("a", "acc-a").await;
    assert_eq!(ctx, separate("a", "acc-a").await);
    assert!(ctx.agent.is_some() && ctx.key.is_some() && ctx.actions.is_empty());
    assert_eq!(
        ctx.policy_revision,
        Some(s.get_policy("p").await.unwrap().revision)
    );
    // Pending actions (one expired, one another agent's, one confirmed).
    let new = |id: &str, agents: &[&str], minutes: i64, expiration| NewAction {
        id: id.into(),
        action_type: ActionType::Settings,
        data: json!({"log_level": "debug", "n": id}),
        created_at: now + chrono::Duration::minutes(minutes),
        expiration,
        agent_ids: agents.iter().map(|a| a.to_string()).collect(),
    };
    s.create_action(&new("x2", &["a"], 2, None)).await.unwrap();
    s.create_action(&new("x1", &["a", "b"], 1, None))
        .await
        .unwrap();
    s.create_action(&new("xb", &["b"], 1, None)).await.unwrap();
    s.create_action(&new(
        "x0",
        &["a"],
        0,
        Some(now - chrono::Duration::seconds(1)),
    ))
    .await
    .unwrap();
    s.create_action(&new("x3", &["a"], 3, None)).await.unwrap();
    s.mark_delivered("a", &["x3".into()], "tok").await.unwrap();
    s.confirm_delivery("a", "tok").await.unwrap();
    let ctx = together("a", "acc-a").await;
    assert_eq!(ctx, separate("a", "acc-a").await);
    let ids: Vec<&str> = ctx.actions.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        ["x1", "x2"],
        "oldest first; expired, confirmed and others' left out"
    );
    assert_eq!(ctx.actions[1].data["n"], "x2");
    let limited = s.checkin_context("a", "acc-a", now, 1).await.unwrap();
    assert_eq!(limited.actions.len(), 1, "the limit holds");
    // Another agent's key, an unknown key, an unknown agent.
    let ctx = together("a", "acc-b").await;
    assert_eq!(ctx, separate("a", "acc-b").await);
    assert_eq!(ctx.key.unwrap().agent_id.as_deref(), Some("b"));
    let ctx = together("a", "nope").await;
    assert!(ctx.key.is_none() && ctx.agent.is_some());
    let ctx = together("ghost", "acc-a").await;
    assert_eq!(ctx, separate("ghost", "acc-a").await);
    assert!(ctx.agent.is_none() && ctx.actions.is_empty() && ctx.policy_revision.is_none());
}
