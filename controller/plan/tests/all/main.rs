//! Integration tests of the offline half of apimctl: golden renders against the WSO2 guides'
//! samples, one failing test per validation rule, CLI behaviour, and render properties.
//! (One test binary, to keep link time down on small CI machines.)

mod artifacts;
mod balancers;
mod databases;
mod golden;
mod lint;
mod props;
mod provided;
mod rules;
mod settings;
mod vault;

/// An example plan of deploy/examples with `extra` appended, validated (packs not verified) and
/// rendered when valid; with the report and the text checked.
pub(crate) fn example_with(
    name: &str,
    extra: &str,
) -> (
    Option<apim_plan::render::ClusterRender>,
    apim_plan::diag::Report,
    String,
) {
    let path = apim_testkit::plans::examples_dir().join(name);
    let text = format!("{}{extra}", std::fs::read_to_string(&path).unwrap());
    let env = std::collections::BTreeMap::new();
    let opts = apim_plan::validate::Options {
        verify_packs: false,
    };
    let (plan, report) = apim_plan::validate::check(&path, &text, &env, opts);
    let cluster = plan
        .map(|p| apim_plan::render::render(&p, &env, &apim_plan::pack::PackSet::none()).unwrap());
    (cluster, report, text)
}
