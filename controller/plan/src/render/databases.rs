//! What a node needs of its databases besides `deployment.toml`: the JDBC driver of each server
//! database it uses, where each listens (the agent's pre-flight), and, on one node per
//! database with `init = "if-empty"`, the pack's scripts that create its schema.

use std::collections::BTreeMap;

use super::{NodeDatabase, NodeDbInit, NodeLib, Sensitive};
use crate::catalogue::DbType;
use crate::catalogue::database::{DRIVER_DIR, schema_scripts};
use crate::plan::{Database, DbInit, Node, Plan};

/// The databases `node` uses: the shared database always, API Manager's where its role needs it.
fn used_by<'p>(plan: &'p Plan, node: &Node) -> impl Iterator<Item = &'p Database> {
    let needs_apim = plan.cluster.product.value.needs_apim_db(node.role.value);
    plan.shared_db
        .iter()
        .chain(plan.apim_db.iter().filter(move |_| needs_apim))
}

/// For each database with `init = "if-empty"`, the node that creates its schema: the first in
/// plan order that uses it (every pack ships `dbscripts/`, docs/databases.md).
pub(super) fn initialisers(plan: &Plan) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for node in &plan.nodes {
        for db in used_by(plan, node) {
            if db.init.value == DbInit::IfEmpty && db.db_type.value.init_supported() {
                out.entry(db.id).or_insert_with(|| node.name.value.clone());
            }
        }
    }
    out
}

/// `node`'s drivers and databases; `password` gives a database's password by its id.
pub(super) fn node_databases(
    plan: &Plan,
    node: &Node,
    initialisers: &BTreeMap<&'static str, String>,
    password: &dyn Fn(&str) -> String,
) -> (Vec<NodeLib>, Vec<NodeDatabase>) {
    let mut libs: Vec<NodeLib> = Vec::new();
    let mut databases = Vec::new();
    for db in used_by(plan, node) {
        let t = db.db_type.value;
        if t == DbType::H2 {
            continue;
        }
        if let Some(d) = plan.drivers.get(&t)
            && !libs
                .iter()
                .any(|l| l.sha256 == d.sha256.value.to_ascii_lowercase())
        {
            libs.push(NodeLib {
                file_name: d.file_name(),
                sha256: d.sha256.value.to_ascii_lowercase(),
                dir: DRIVER_DIR.to_string(),
            });
        }
        let Some((host, port, name)) = db.endpoint() else {
            continue;
        };
        let init = (initialisers.get(db.id) == Some(&node.name.value)).then(|| NodeDbInit {
            db_type: t,
            database: name,
            username: db.username.value.clone(),
            password: Sensitive(password(db.id)),
            scripts: schema_scripts(db.id, t),
        });
        databases.push(NodeDatabase {
            id: db.id.to_string(),
            host,
            port,
            init,
        });
    }
    (libs, databases)
}
