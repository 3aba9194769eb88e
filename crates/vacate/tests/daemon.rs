//! The vacate daemon against the testbed: a real API server, kwok nodes and the KubeVirt
//! simulator. Each test owns a namespace and a node set; vacate runs as a child process
//! restricted to that node set.

mod support;

use std::time::Duration;

use kube::ResourceExt;
use support::*;
use vacate::planner::{BlockReason, Phase, VmiOutcome};

const DRAIN: Duration = Duration::from_secs(180);

/// Fast retries so failure paths finish quickly on the testbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_migrates_in_limited_batches_and_uncordons() -> anyhow::Result<()> {
    let env = Env::new("happy", 3).await?;
    let node = env.node(0).to_string();
    env.busy_node(0, 8, 3, 2).await?;

    let (monitor, _watch) = MigrationMonitor::start(&env);
    let vacate = env.vacate(FAST).await?;
    let requested = chrono::Utc::now();
    env.request(&node, Some("true")).await?;
    // Once a migration has finished in the cluster, the drain predicts its end.
    let eta_series = format!("vacate_node_drain_eta_timestamp_seconds{{node=\"{node}\"}}");
    env.wait("a predicted end of the drain", DRAIN, || async {
        Ok(vacate.metric(&eta_series).await? > 0.0)
    })
    .await?;
    let eta = vacate.metric(&eta_series).await?;
    let lead = eta - requested.timestamp() as f64;
    assert!(
        (0.0..300.0).contains(&lead),
        "predicted end {lead:.1} s after the request"
    );
    let state = env.wait_phase(&node, Phase::Drained, DRAIN).await?;

    assert_eq!(state.vmis.len(), 8);
    assert!(
        state
            .vmis
            .values()
            .all(|r| r.outcome == VmiOutcome::Migrated),
        "{state:#?}"
    );
    assert_eq!(
        state.pods_done(),
        3,
        "the Deployment's pods are evicted, the DaemonSet's are not"
    );
    assert!(state.cordoned_by_vacate);
    // The state records the phase first; the drained label follows in the same step.
    env.wait("the drained label", Duration::from_secs(10), || async {
        Ok(has_label(&env.get_node(&node).await?, DRAINED_LABEL))
    })
    .await?;
    let n = env.get_node(&node).await?;
    assert!(is_unschedulable(&n));
    for vmi in env.vmis().await? {
        assert!(vmi.is_running(), "{} is not Running", vmi.name_any());
        assert_ne!(
            vmi.node_name(),
            Some(node.as_str()),
            "{} still on the node",
            vmi.name_any()
        );
    }
    let max = monitor.max_in_flight_on(&node);
    assert!(
        max <= 2,
        "{max} migrations were in flight at once; the limit is 2"
    );
    assert!(max >= 1);
    for (vmi, migrations) in monitor.per_vmi() {
        assert_eq!(migrations.len(), 1, "{vmi} got {migrations:?}");
    }
    // Only the DaemonSet pod is left running on the node: the source virt-launcher pods
    // have finished (KubeVirt does not delete them; they stay `Succeeded` until their VMI goes).
    let left: Vec<_> = env
        .pods_on(&node)
        .await?
        .iter()
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .map(|p| p.name_any())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");

    assert_eq!(
        vacate
            .counter_reaching("vacate_migrations_total{result=\"succeeded\"}", 8.0)
            .await?,
        8.0
    );
    assert_eq!(
        vacate
            .counter_reaching("vacate_drains_total{result=\"drained\"}", 1.0)
            .await?,
        1.0
    );

    env.request(&node, None).await?;
    let n = env.wait_idle(&node, Duration::from_secs(30)).await?;
    assert!(
        !is_unschedulable(&n),
        "vacate cordoned the node, so it uncordons it"
    );
    assert!(!has_label(&n, DRAINED_LABEL));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cordoned_node_stays_cordoned_after_maintenance() -> anyhow::Result<()> {
    let env = Env::new("admin", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        env.create_vm(&Vm::migratable("vm-0")).await?;
        env.wait_vmis_running_on(&node, 1).await
    })
    .await?;
    env.cordon(&node, true).await?;
    let _vacate = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;
    let state = env.wait_phase(&node, Phase::Drained, DRAIN).await?;
    assert!(!state.cordoned_by_vacate);
    env.request(&node, None).await?;
    let n = env.wait_idle(&node, Duration::from_secs(30)).await?;
    assert!(
        is_unschedulable(&n),
        "an administrator's cordon is not vacate's to lift"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_request_mid_drain_cancels_migrations_and_uncordons() -> anyhow::Result<()> {
    let env = Env::new("abort", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        for i in 0..3 {
            let vm = Vm::migratable(format!("stuck-{i}"))
                .annotate("simulator.vacate.io/migration-stall", "true");
            env.create_vm(&vm).await?;
        }
        env.wait_vmis_running_on(&node, 3).await
    })
    .await?;
    let _vacate = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;
    env.wait("two running vacate migrations", DRAIN, || async {
        let unfinished = env
            .vacate_migrations()
            .await?
            .iter()
            .filter(|m| m.is_running())
            .count();
        Ok(unfinished == 2)
    })
    .await?;
    env.request(&node, None).await?;
    let n = env.wait_idle(&node, Duration::from_secs(30)).await?;
    assert!(!is_unschedulable(&n));
    env.wait(
        "vacate's migrations to be cancelled",
        Duration::from_secs(30),
        || async {
            let left = env
                .vacate_migrations()
                .await?
                .iter()
                .filter(|m| m.is_unfinished())
                .count();
            Ok(left == 0)
        },
    )
    .await?;
    for vmi in env.vmis().await? {
        assert_eq!(
            vmi.node_name(),
            Some(node.as_str()),
            "a cancelled migration leaves the VMI"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_migratable_vms_are_evicted_or_restarted() -> anyhow::Result<()> {
    let env = Env::new("fallback", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        // KubeVirt allows this eviction (LiveMigrateIfPossible, not migratable).
        env.create_vm(&Vm::not_migratable("if-possible", "LiveMigrateIfPossible"))
            .await?;
        // KubeVirt refuses this eviction with 429 (LiveMigrate, not migratable): escalated to a restart.
        env.create_vm(&Vm::not_migratable("must-migrate", "LiveMigrate"))
            .await?;
        env.create_vm(&Vm::migratable("fine")).await?;
        env.wait_vmis_running_on(&node, 3).await
    })
    .await?;
    let vacate = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;
    let state = env.wait_phase(&node, Phase::Drained, DRAIN).await?;
    let outcome = |name: &str| state.vmis[&format!("{}/{name}", env.ns.name())].outcome;
    assert_eq!(outcome("fine"), VmiOutcome::Migrated);
    assert_eq!(outcome("if-possible"), VmiOutcome::Evicted);
    assert_eq!(outcome("must-migrate"), VmiOutcome::Restarted);
    assert!(state.vmis[&format!("{}/must-migrate", env.ns.name())].eviction_refused);
    assert_eq!(
        vacate
            .metric("vacate_evictions_total{kind=\"vmi\",result=\"refused\"}")
            .await?,
        1.0
    );
    // Their VirtualMachines start them again on the other node.
    env.wait(
        "the VMs to run again on the other node",
        Duration::from_secs(60),
        || async {
            let vmis = env.vmis().await?;
            Ok(vmis.len() == 3
                && vmis
                    .iter()
                    .all(|v| v.is_running() && v.node_name() == Some(env.node(1))))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_policy_waits_and_times_out_into_failed() -> anyhow::Result<()> {
    let env = Env::new("block", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        env.create_vm(&Vm::not_migratable("pinned", "LiveMigrate"))
            .await?;
        env.wait_vmis_running_on(&node, 1).await
    })
    .await?;
    let vacate = env
        .vacate(&format!(
            "{FAST}\n[non_migratable]\npolicy = \"block\"\n[drain]\ntimeout = \"8s\"\n"
        ))
        .await?;
    env.request(&node, Some("true")).await?;
    let blocked = env.wait_phase(&node, Phase::Migrating, DRAIN).await?;
    let blocker = blocked.blocked.expect("a blocked drain says why");
    assert_eq!(blocker.reason, BlockReason::NonMigratableVmi);
    assert!(
        blocker.message.contains("InterfaceNotLiveMigratable"),
        "{}",
        blocker.message
    );

    let failed = env
        .wait_phase(&node, Phase::Failed, Duration::from_secs(60))
        .await?;
    let reason = failed.failure.unwrap();
    assert!(reason.contains("did not finish within 8s"), "{reason}");
    assert!(reason.contains("pinned"), "{reason}");
    assert!(
        is_unschedulable(&env.get_node(&node).await?),
        "a failed node stays cordoned by default"
    );
    assert_eq!(
        vacate
            .counter_reaching("vacate_drains_total{result=\"failed\"}", 1.0)
            .await?,
        1.0
    );
    // The VMI was left alone.
    assert_eq!(env.vmis().await?[0].node_name(), Some(node.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdb_blocks_then_allows() -> anyhow::Result<()> {
    let env = Env::new("pdb", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        env.create_deployment("guarded", 2, Some(2)).await?;
        env.wait_pods_running_on(&node, 2).await
    })
    .await?;
    let vacate = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;
    env.wait("the PDB to block the drain", DRAIN, || async {
        Ok(match env.state(&node).await? {
            vacate::planner::StateAnnotation::Valid(s) => s
                .blocked
                .is_some_and(|b| b.reason == BlockReason::PodDisruptionBudget),
            _ => false,
        })
    })
    .await?;
    // Retries back off: a handful of refusals, not a hot loop.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let retries = vacate
        .metric("vacate_eviction_retries_total{reason=\"pdb\"}")
        .await?;
    assert!(
        (1.0..=8.0).contains(&retries),
        "{retries} refused evictions in about 5 s"
    );
    env.set_pdb_min_available("guarded", 1).await?;
    let state = env.wait_phase(&node, Phase::Drained, DRAIN).await?;
    assert_eq!(state.pods_done(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_migration_is_retried_then_handed_to_kubevirt() -> anyhow::Result<()> {
    let env = Env::new("retry", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        let vm =
            Vm::migratable("flaky").annotate("simulator.vacate.io/migration-failure-rate", "1");
        env.create_vm(&vm).await?;
        env.wait_vmis_running_on(&node, 1).await
    })
    .await?;
    let uid = env.vmis().await?[0].uid();
    let (monitor, _watch) = MigrationMonitor::start(&env);
    let vacate = env
        .vacate(&format!(
            "{FAST}\n[non_migratable]\non_eviction_refused = \"restart\"\n[drain]\ntimeout = \"40s\"\n"
        ))
        .await?;
    env.request(&node, Some("true")).await?;
    let state = env.wait_phase(&node, Phase::Failed, DRAIN).await?;
    let record = &state.vmis[&format!("{}/flaky", env.ns.name())];
    assert_eq!(record.attempts, 3, "{record:?}");
    assert!(monitor.migrations_of("flaky").len() >= 3);
    assert_eq!(
        vacate
            .counter_reaching("vacate_migrations_total{result=\"failed\"}", 3.0)
            .await?,
        3.0
    );
    // Then the eviction policy: the VMI is LiveMigrate and migratable, so KubeVirt answers the
    // eviction by taking it over for its own evacuation. That is no refusal: the VMI is never
    // deleted, and the drain ends Failed at its timeout, saying what it waited for. KubeVirt's
    // own migration is followed while one is there.
    assert!(
        matches!(
            record.outcome,
            VmiOutcome::Evicting | VmiOutcome::MigratingExternally
        ),
        "{record:?}"
    );
    let failure = state.failure.clone().unwrap_or_default();
    assert!(failure.contains("flaky"), "{failure}");
    let vmis = env.vmis().await?;
    assert_eq!(vmis.len(), 1);
    assert_eq!(vmis[0].uid(), uid, "the VMI was not deleted");
    assert!(vmis[0].metadata.deletion_timestamp.is_none());
    assert_eq!(vacate.metric("vacate_vmi_restarts_total").await?, 0.0);
    // One eviction hands the VMI to KubeVirt's evacuation, which retries its own failed
    // migrations while the VMI stays marked: vacate does not evict it again.
    assert_eq!(
        vacate
            .metric("vacate_evictions_total{kind=\"vmi\",result=\"refused\"}")
            .await?,
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_drain_resumes_without_duplicate_migrations() -> anyhow::Result<()> {
    let env = Env::new("restart", 3).await?;
    let node = env.node(0).to_string();
    env.migratable_vms_on(0, 6, "4Gi").await?;
    let (monitor, _watch) = MigrationMonitor::start(&env);
    let mut first = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;
    env.wait("vacate's first migrations", DRAIN, || async {
        Ok(!env.vacate_migrations().await?.is_empty())
    })
    .await?;
    first.kill();
    let _second = env.vacate(FAST).await?;
    let state = env.wait_phase(&node, Phase::Drained, DRAIN).await?;
    assert!(
        state
            .vmis
            .values()
            .all(|r| r.outcome == VmiOutcome::Migrated),
        "{state:#?}"
    );
    for (vmi, migrations) in monitor.per_vmi() {
        assert_eq!(migrations.len(), 1, "{vmi} got {migrations:?}");
    }
    assert!(monitor.max_in_flight_on(&node) <= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    let env = Env::new("leader", 3).await?;
    let node = env.node(0).to_string();
    env.migratable_vms_on(0, 6, "4Gi").await?;
    let (monitor, _watch) = MigrationMonitor::start(&env);
    let a = env.vacate(FAST).await?;
    let b = env.vacate(FAST).await?;
    env.wait("one leader", Duration::from_secs(30), || async {
        let leaders = a.metric("vacate_leader").await? + b.metric("vacate_leader").await?;
        Ok(leaders == 1.0)
    })
    .await?;
    let (mut leader, standby) = if a.metric("vacate_leader").await? == 1.0 {
        (a, b)
    } else {
        (b, a)
    };
    env.request(&node, Some("true")).await?;
    env.wait("the leader's first migrations", DRAIN, || async {
        Ok(!env.vacate_migrations().await?.is_empty())
    })
    .await?;
    assert_eq!(
        standby.metric("vacate_leader").await?,
        0.0,
        "the standby does not act"
    );
    leader.kill();
    let state = env.wait_phase(&node, Phase::Drained, DRAIN).await?;
    assert_eq!(standby.metric("vacate_leader").await?, 1.0);
    assert!(
        state
            .vmis
            .values()
            .all(|r| r.outcome == VmiOutcome::Migrated),
        "{state:#?}"
    );
    for (vmi, migrations) in monitor.per_vmi() {
        assert_eq!(migrations.len(), 1, "{vmi} got {migrations:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_restarts_vms_that_cannot_migrate() -> anyhow::Result<()> {
    let env = Env::new("restartpolicy", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        env.create_vm(&Vm::not_migratable("legacy", "None")).await?;
        env.wait_vmis_running_on(&node, 1).await
    })
    .await?;
    let vacate = env
        .vacate(&format!("{FAST}\n[non_migratable]\npolicy = \"restart\"\n"))
        .await?;
    env.request(&node, Some("true")).await?;
    let state = env.wait_phase(&node, Phase::Drained, DRAIN).await?;
    assert_eq!(
        state.vmis[&format!("{}/legacy", env.ns.name())].outcome,
        VmiOutcome::Restarted
    );
    assert_eq!(vacate.metric("vacate_vmi_restarts_total").await?, 1.0);
    assert_eq!(
        vacate
            .metric("vacate_evictions_total{kind=\"vmi\",result=\"evicted\"}")
            .await?,
        0.0,
        "restart does not go through the Eviction API"
    );
    env.wait(
        "the VM to run again elsewhere",
        Duration::from_secs(60),
        || async {
            let vmis = env.vmis().await?;
            Ok(vmis.len() == 1 && vmis[0].is_running() && vmis[0].node_name() == Some(env.node(1)))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_state_and_a_deleted_node_are_survived() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{DeleteParams, Patch, PatchParams};
    let env = Env::new("malformed", 3).await?;
    let (garbage, doomed) = (env.node(0).to_string(), env.node(1).to_string());
    let nodes: kube::Api<Node> = kube::Api::all(env.client.clone());
    nodes
        .patch(
            &garbage,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {STATE_ANNOTATION: "{not json"}}}),
            ),
        )
        .await?;
    env.place_on(1, || async {
        let vm = Vm::migratable("stuck").annotate("simulator.vacate.io/migration-stall", "true");
        env.create_vm(&vm).await?;
        env.wait_vmis_running_on(&doomed, 1).await
    })
    .await?;
    let mut vacate = env.vacate(FAST).await?;
    env.request(&doomed, Some("true")).await?;
    env.wait_phase(&doomed, Phase::Migrating, DRAIN).await?;
    // The node disappears in the middle of its drain.
    nodes.delete(&doomed, &DeleteParams::default()).await?;
    // The garbage annotation is reported and replaced by a real drain.
    env.request(&garbage, Some("true")).await?;
    let state = env.wait_phase(&garbage, Phase::Drained, DRAIN).await?;
    assert!(
        state.cordoned_by_vacate,
        "the node was schedulable, so vacate cordoned it"
    );
    assert!(vacate.running(), "vacate survived:\n{}", vacate.log());
    assert_eq!(
        vacate
            .metric("vacate_invalid_state_annotations_total")
            .await?,
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_evicted_while_the_vmis_migrate() -> anyhow::Result<()> {
    let env = Env::new("overlap", 2).await?;
    let node = env.node(0).to_string();
    env.place_on(0, || async {
        for i in 0..4 {
            let mut vm = Vm::migratable(format!("vm-{i}"));
            vm.memory = "2Gi";
            env.create_vm(&vm).await?;
        }
        env.create_deployment("web", 2, None).await?;
        env.wait_vmis_running_on(&node, 4).await?;
        env.wait_pods_running_on(&node, 6).await
    })
    .await?;
    let _vacate = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;

    // The first moment no pod of `web` waits for its eviction, vacate's migrations still run:
    // the pods went alongside the VMIs, not after them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let migrating = env.vacate_migrations().await?.iter().any(|m| !m.is_final());
        let web_waiting = env.pods_on(&node).await?.iter().any(|p| {
            p.labels().get("app").map(String::as_str) == Some("web")
                && p.metadata.deletion_timestamp.is_none()
        });
        if !web_waiting {
            anyhow::ensure!(
                migrating,
                "web's pods were evicted only after every migration had ended"
            );
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "web's pods were never evicted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = env.wait_phase(&node, Phase::Drained, DRAIN).await?;
    assert_eq!(state.vmis_done(), 4, "{state:#?}");
    assert_eq!(state.pods_done(), 2, "{state:#?}");
    Ok(())
}

/// Two drains share one cluster-wide migration slot. The drain waiting for it is woken when
/// the other's migration ends, not by the periodic resync (an hour in these tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_cluster_slot_wakes_the_drain_waiting_for_it() -> anyhow::Result<()> {
    let env = Env::new("slots", 3).await?;
    for target in 0..2 {
        let node = env.node(target).to_string();
        env.place_on(target, || async {
            for i in 0..2 {
                env.create_vm(&Vm::migratable(format!("vm-{target}-{i}")))
                    .await?;
            }
            env.wait_vmis_running_on(&node, 2).await
        })
        .await?;
    }
    let (monitor, _watch) = MigrationMonitor::start(&env);
    let _vacate = env
        .vacate(concat!(
            "[migration]\nbatch_interval = \"1s\"\nmax_in_flight_cluster = 1\n",
            "[fleet]\nmax_draining = 2\n",
        ))
        .await?;
    let (a, b) = (env.node(0).to_string(), env.node(1).to_string());
    env.request(&a, Some("true")).await?;
    env.request(&b, Some("true")).await?;
    for node in [&a, &b] {
        let state = env
            .wait_phase(node, Phase::Drained, Duration::from_secs(120))
            .await?;
        assert_eq!(state.vmis_done(), state.vmis.len(), "{state:#?}");
    }
    assert!(monitor.max_in_flight_on(&a) == 1 && monitor.max_in_flight_on(&b) == 1);
    Ok(())
}

/// A VMI migrating onto the node when its drain begins (its target pod was scheduled before
/// the cordon) keeps the node from being reported drained; once it lands, vacate moves it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmi_migrating_onto_the_node_is_moved_on_once_it_lands() -> anyhow::Result<()> {
    use kube::Api;
    use kube::api::PostParams;
    use kubevirt_api::{VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec};
    use vacate::planner::StateAnnotation;

    let env = Env::new("incoming", 3).await?;
    let (node, source) = (env.node(0).to_string(), env.node(1).to_string());
    env.place_on(1, || async {
        let mut vm = Vm::migratable("big");
        vm.memory = "24Gi";
        env.create_vm(&vm).await?;
        env.wait_vmis_running_on(&source, 1).await
    })
    .await?;
    // Someone migrates it while node 0 is the only place it can go.
    let migrations: Api<VirtualMachineInstanceMigration> =
        Api::namespaced(env.client.clone(), env.ns.name());
    let theirs = env
        .place_on(0, || async {
            let m = VirtualMachineInstanceMigration::new(
                "by-hand",
                VirtualMachineInstanceMigrationSpec {
                    vmi_name: "big".into(),
                    ..Default::default()
                },
            );
            migrations.create(&PostParams::default(), &m).await?;
            env.wait(
                "the migration's target pod on the node to drain",
                Duration::from_secs(60),
                || async {
                    Ok(env.pods_on(&node).await?.iter().any(|p| {
                        p.labels().get("kubevirt.io").map(String::as_str) == Some("virt-launcher")
                    }))
                },
            )
            .await
        })
        .await;
    theirs?;

    let _vacate = env.vacate(FAST).await?;
    env.request(&node, Some("true")).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let m = migrations.get("by-hand").await?;
        if m.is_final() {
            break;
        }
        if let StateAnnotation::Valid(state) = env.state(&node).await? {
            anyhow::ensure!(
                state.phase != Phase::Drained,
                "reported Drained while a VMI was migrating onto the node: {state:#?}"
            );
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the migration onto the node never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.wait_phase(&node, Phase::Drained, DRAIN).await?;
    let big = env
        .vmis()
        .await?
        .into_iter()
        .find(|v| v.name_any() == "big")
        .ok_or_else(|| anyhow::anyhow!("VMI big is gone"))?;
    anyhow::ensure!(
        big.is_running() && big.node_name() != Some(node.as_str()),
        "the VMI runs on {:?}",
        big.node_name()
    );
    anyhow::ensure!(
        env.vacate_migrations()
            .await?
            .iter()
            .any(|m| m.spec.vmi_name == "big"),
        "vacate moved the VMI on once it landed"
    );
    Ok(())
}

/// A node's status heartbeat (a kubelet's, kwok's) changes nothing vacate reads of the node,
/// so it starts no reconciliation: on a fleet of thousands of nodes the heartbeats would
/// otherwise keep vacate busy while it has nothing to do. A label change does start one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_heartbeat_starts_no_reconciliation() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Patch, PatchParams};
    const RECONCILIATIONS: &str = "vacate_reconciliations_total";
    let env = Env::new("heartbeat", 2).await?;
    let node = env.node(0).to_string();
    let vacate = env.vacate(FAST).await?;
    // Every node is looked at once at start; then nothing happens until something changes.
    vacate.counter_reaching(RECONCILIATIONS, 2.0).await?;
    let mut settled = vacate.metric(RECONCILIATIONS).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = vacate.metric(RECONCILIATIONS).await?;
        if now == settled {
            break;
        }
        settled = now;
    }
    let nodes: kube::Api<Node> = kube::Api::all(env.client.clone());
    let version = |n: &Node| n.resource_version().unwrap_or_default();
    let mut last = version(&env.get_node(&node).await?);
    for beat in 0..5 {
        let at = chrono::Utc::now() + chrono::Duration::seconds(beat);
        let patch = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}
        ]}});
        let written = nodes
            .patch_status(&node, &PatchParams::default(), &Patch::Strategic(patch))
            .await?;
        anyhow::ensure!(version(&written) != last, "the heartbeat changed the node");
        last = version(&written);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        vacate.metric(RECONCILIATIONS).await?,
        settled,
        "a heartbeat started a reconciliation:\n{}",
        vacate.log()
    );
    // A change the projection keeps (a label) is looked at.
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"example.com/rack": "r1"}}})),
        )
        .await?;
    vacate
        .counter_reaching(RECONCILIATIONS, settled + 1.0)
        .await?;
    Ok(())
}
