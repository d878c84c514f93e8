//! Reading what a cluster says: log lines, `apimctl status -o json` documents, and what its
//! nodes left on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::process::{find_files, is_alive, run_ok};
use super::{Result, STARTING_LINE};

/// The log4j timestamps (`2024-05-02 10:11:12,123`, fixed width, so they sort as text) of
/// every line of a simulated server's log that contains `needle`.
pub fn log_times(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            // TID: [-1234] [] [<ts>] LEVEL {logger} - message
            let rest = l.split_once("] [] [")?.1;
            Some(rest.split_once(']')?.0.to_string())
        })
        .collect()
}

/// The hosts a simulated server's log says it could not reach ("Peer host:port unreachable").
pub fn unreachable_peers(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split_once(". Peer ")?.1;
            rest.contains(" unreachable")
                .then(|| rest.split_once(':').map(|(h, _)| h.to_string()))?
        })
        .collect()
}

/// The latest rollout's state in a status JSON.
pub fn rollout_state(status: &serde_json::Value) -> Option<&str> {
    status["rollout"]["state"].as_str()
}

/// Every node object of a status JSON: (machine, node JSON).
pub fn status_nodes(status: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut v = Vec::new();
    for m in status["machines"].as_array().into_iter().flatten() {
        let machine = m["machine"].as_str().unwrap_or_default().to_string();
        for n in m["nodes"].as_array().into_iter().flatten() {
            v.push((machine.clone(), n.clone()));
        }
    }
    v
}

/// The phase of `node` in a status JSON.
pub fn node_phase<'a>(status: &'a serde_json::Value, node: &str) -> Option<&'a str> {
    status["machines"]
        .as_array()?
        .iter()
        .flat_map(|m| m["nodes"].as_array().into_iter().flatten())
        .find(|n| n["node"] == node)?["phase"]
        .as_str()
}

/// Whether every node named in `nodes` is healthy in a status JSON.
pub fn all_healthy(status: &serde_json::Value, nodes: &[String]) -> bool {
    nodes
        .iter()
        .all(|n| node_phase(status, n) == Some("healthy"))
}

impl super::Cluster {
    /// Every `wso2carbon.log` under `node`'s machine's install root, concatenated (oldest
    /// install first), i.e. everything every server of that node ever logged.
    pub fn node_log(&self, node: &str) -> Result<String> {
        let mut files = self.node_files(node, "wso2carbon.log")?;
        files.sort();
        let mut s = String::new();
        for f in files {
            s.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
        }
        Ok(s)
    }

    /// Every file called `name` in `node`'s install dirs (`<install_root>/<install_dir>/<node>/…`).
    pub fn node_files(&self, node: &str, name: &str) -> Result<Vec<PathBuf>> {
        let m = self.machine_of(node)?;
        let mut files: Vec<PathBuf> = find_files(&m.install_root, name)
            .into_iter()
            .filter(|f| {
                f.strip_prefix(&m.install_root)
                    .is_ok_and(|rel| rel.components().any(|c| c.as_os_str() == node))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// How many times a server of `node` was started (its "Starting WSO2 Carbon" lines).
    pub fn start_count(&self, node: &str) -> Result<usize> {
        Ok(self.node_log(node)?.matches(STARTING_LINE).count())
    }

    /// The pids of `node`'s live simulated servers (from their `wso2carbon.pid` files).
    pub fn server_pids(&self, node: &str) -> Result<Vec<u32>> {
        let mut pids: Vec<u32> = self
            .node_files(node, "wso2carbon.pid")?
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
            .filter(|p| is_alive(*p))
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// `node -> the nodes it waits for`, from `apimctl render` of `plan`.
    pub fn dependencies(&self, plan: &Path) -> Result<BTreeMap<String, Vec<String>>> {
        let mut cmd = self.apimctl_cmd();
        cmd.arg("render").arg(plan);
        let out = run_ok(cmd)?;
        let mut deps = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rest) = line.strip_prefix("# ==== node ") {
                current = rest.split_whitespace().next().map(str::to_string);
            } else if let (Some(n), Some(w)) = (&current, line.split_once("waits for "))
                && line.starts_with("# tier")
            {
                let list = if w.1.trim() == "nothing" {
                    Vec::new()
                } else {
                    w.1.split(',').map(|s| s.trim().to_string()).collect()
                };
                deps.insert(n.clone(), list);
            }
        }
        Ok(deps)
    }
}
