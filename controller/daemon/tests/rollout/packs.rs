//! `ListArtifacts` and `PruneArtifacts` over the plan history: what each stored generation
//! names, which generations are retained (restorable, current, the baseline's, in flight), and
//! a prune that removes only what none of them (nor a machine's spec) needs.

use std::collections::BTreeMap;

use apim_proto::v1::{ArtifactInfo, ListArtifactsRequest, PruneArtifactsRequest};
use apim_testkit::controller::Controller;
use apim_testkit::plans::{mysql_driver_jar, pack_with, plan_v3, tiny_pack};
use tonic::Code;

use super::history::wait_succeeded;
use super::start_agents;

async fn list(c: &Controller) -> (BTreeMap<String, ArtifactInfo>, u64) {
    let r = c
        .operator()
        .await
        .list_artifacts(ListArtifactsRequest::default())
        .await
        .expect("list artifacts")
        .into_inner();
    (
        r.artifacts
            .into_iter()
            .map(|a| (a.sha256.clone(), a))
            .collect(),
        r.current_generation,
    )
}

async fn prune(
    c: &Controller,
    sha256: &[&str],
    dry_run: bool,
) -> Result<Vec<String>, tonic::Status> {
    let r = c
        .operator()
        .await
        .prune_artifacts(PruneArtifactsRequest {
            sha256: sha256.iter().map(|s| s.to_string()).collect(),
            dry_run,
        })
        .await?
        .into_inner();
    let mut removed: Vec<String> = r.removed.into_iter().map(|a| a.sha256).collect();
    removed.sort();
    Ok(removed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_lists_what_each_generation_names_and_prune_keeps_the_retained_history() {
    // One generation's secrets kept (and the baseline's): generation 1 falls out of the history.
    let c = Controller::start_keeping(1, |_| {}).await;
    let (_agents, _log) = start_agents(&c);
    let a = c.store_pack(&tiny_pack("wso2am-3.2.0"));
    let b = c.store_pack(&pack_with("wso2am-3.2.0", &[("README".into(), "b".into())]));
    let p3 = c.store_pack(&pack_with("wso2am-3.2.0", &[("README".into(), "c".into())]));
    let orphan = c.store_pack(b"uploaded, never applied");
    let driver = apim_plan::digest(&mysql_driver_jar());
    for (sha, n) in [(&a, 1), (&b, 2), (&p3, 3)] {
        let (generation, id) = c
            .apply(&plan_v3(sha, "", "halt", "30s"))
            .await
            .expect("apply");
        assert_eq!(generation, n);
        wait_succeeded(&c, &id).await;
    }

    let (all, current) = list(&c).await;
    assert_eq!(current, 3);
    assert_eq!(all.len(), 5, "{all:#?}");
    let info = |sha: &str| all[sha].clone();
    let pa = info(&a);
    assert_eq!(
        (
            pa.kind.as_str(),
            pa.name.as_str(),
            pa.generations.as_slice()
        ),
        ("pack", "wso2am-3.2.0.zip", &[1][..]),
        "{pa:?}"
    );
    assert!(
        pa.retained_by.is_empty() && !pa.current && !pa.in_spec,
        "{pa:?}"
    );
    let pb = info(&b);
    assert_eq!(
        pb.retained_by,
        [2],
        "the baseline's generation when 3 was stored: {pb:?}"
    );
    assert!(
        pb.in_spec,
        "the spec generation 3 replaced: a rollback fetches it"
    );
    let pc = info(&p3);
    assert!(pc.current && pc.in_spec && pc.retained_by == [3], "{pc:?}");
    let pd = info(&driver);
    assert_eq!(
        (
            pd.kind.as_str(),
            pd.generations.as_slice(),
            pd.retained_by.as_slice()
        ),
        ("driver", &[1, 2, 3][..], &[2, 3][..])
    );
    let po = info(&orphan);
    assert!(
        po.kind.is_empty() && po.generations.is_empty() && !po.in_spec,
        "{po:?}"
    );

    // A pack the retained history needs is refused by name, and nothing is removed.
    let err = prune(&c, &[&b], false).await.expect_err("retained");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let details = apim_proto::error_details(&err).expect("details");
    assert_eq!(details.errors[0].code, "artifact.retained");
    assert!(
        err.message()
            .contains("generation 2 of the retained history"),
        "{err:?}"
    );
    let unknown = "0".repeat(64);
    let err = prune(&c, &[&unknown], false).await.expect_err("not stored");
    assert_eq!(err.code(), Code::NotFound);

    // A dry run says what would go; the prune removes exactly that.
    let mut want = vec![a.clone(), orphan.clone()];
    want.sort();
    assert_eq!(prune(&c, &[], true).await.expect("dry run"), want);
    assert!(
        c.state.artifacts().path_for(&a).unwrap().exists(),
        "a dry run removes nothing"
    );
    assert_eq!(prune(&c, &[], false).await.expect("prune"), want);
    for sha in &want {
        assert!(!c.state.artifacts().path_for(sha).unwrap().exists());
    }
    let (left, _) = list(&c).await;
    assert_eq!(left.keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec![b.clone(), p3.clone(), driver.clone()];
        v.sort();
        v
    });
    assert_eq!(
        prune(&c, &[], false).await.expect("again"),
        Vec::<String>::new()
    );
    // The pruned pack is gone for good: its plan needs an upload again.
    let err = c
        .apply(&plan_v3(&a, "", "halt", "30s"))
        .await
        .expect_err("pack pruned");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("is not stored"), "{err:?}");
}
