//! What a plan would change: per node `deployment.toml` and hosts lines, certificates (provided
//! keystores by digest, never their bytes), restarts.

use apim_proto::v1::{ChangeKind, MachineSpec, NodeChange, NodeSpec};

/// Unified-diff lines (`+`, `-`, ` `) from `old` to `new`, with `context` unchanged lines around
/// each change; empty when equal. An LCS over lines (files are a few hundred lines).
pub fn line_diff(old: &str, new: &str, context: usize) -> Vec<String> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a == b {
        return Vec::new();
    }
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let keep: Vec<bool> = (0..ops.len())
        .map(|k| {
            let lo = k.saturating_sub(context);
            let hi = (k + context + 1).min(ops.len());
            ops[lo..hi].iter().any(|(c, _)| *c != ' ')
        })
        .collect();
    ops.iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|((c, l), _)| format!("{c}{l}"))
        .collect()
}

/// [`line_diff`] with every secret masked (as in a plan's diff): for texts that may hold secret
/// values or secret-named keys, such as a stored plan.
pub fn masked_diff(old: &str, new: &str, context: usize, secrets: &[&str]) -> Vec<String> {
    line_diff(old, new, context)
        .iter()
        .map(|l| mask(l, secrets))
        .collect()
}

/// Keys whose values are secret whatever they hold (`password`, `key_password`, `auth_token`,
/// the secure vault's `[secrets]` entries, ...).
fn secret_key(key: &str) -> bool {
    let k = key.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
    ["password", "secret", "token", "passphrase"]
        .iter()
        .any(|w| k.contains(w))
}

/// A diff line with every secret masked: the value of a secret-named key whatever it is, and
/// every known secret value (the old plan's and the new one's) anywhere in the line.
fn mask(line: &str, secrets: &[&str]) -> String {
    let mut out = line.to_string();
    for s in secrets {
        if !s.is_empty() {
            out = out.replace(s, apim_plan::render::MASK);
        }
    }
    // `+key = value` / `-key = value` / ` key = value`: mask by key.
    let (sign, body) = out.split_at(out.len().min(1));
    if let Some((key, _)) = body.split_once('=')
        && !key.contains(['[', '{'])
        && key.rsplit('.').next().is_some_and(secret_key)
    {
        return format!("{sign}{key}= \"{}\"", apim_plan::render::MASK);
    }
    out
}

/// A whole file with every secret masked, line by line as [`mask`] does for diff lines (what
/// `apimctl show` prints).
pub fn mask_text(text: &str, secrets: &[&str]) -> String {
    let mut out: String = text
        .lines()
        .map(|l| mask(&format!(" {l}"), secrets)[1..].to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn hosts_text(spec: Option<&MachineSpec>) -> String {
    spec.map(|s| {
        s.hosts_block
            .iter()
            .map(|h| format!("{} {}\n", h.address, h.names.join(" ")))
            .collect()
    })
    .unwrap_or_default()
}

/// Whether a node must restart, start or stop to move from `old` to `new` (a target spec says
/// RUNNING or, for a node the operator stopped, STOPPED).
pub fn node_changed(old: Option<&NodeSpec>, new: &NodeSpec) -> bool {
    old.is_none_or(|o| {
        o.config_digest != new.config_digest || o.pack != new.pack || stopped(o) != stopped(new)
    })
}

/// Whether the spec stops the node.
pub fn stopped(n: &NodeSpec) -> bool {
    n.desired() == apim_proto::v1::DesiredRun::Stopped
}

fn chain(n: &NodeSpec) -> Option<&str> {
    n.keystores
        .as_ref()
        .filter(|k| k.provided.is_none())
        .map(|k| k.node_chain_pem.as_str())
}

/// The provided stores' digests of a node: (keystore, truststore); never their bytes.
fn provided(n: &NodeSpec) -> Option<(&str, &str)> {
    let p = n.keystores.as_ref()?.provided.as_ref()?;
    Some((p.keystore_sha256.as_str(), p.truststore_sha256.as_str()))
}

/// What changes in a node's provided stores, by digest, one line per store that changes:
/// `ship provided keystore sha256 NEW to NODE (was OLD)`.
fn provided_changes(old: Option<&NodeSpec>, new: &NodeSpec) -> Vec<String> {
    let Some((keystore, truststore)) = provided(new) else {
        return Vec::new();
    };
    let (old_keystore, old_truststore) = old.and_then(provided).unwrap_or_default();
    [
        ("keystore", keystore, old_keystore),
        ("truststore", truststore, old_truststore),
    ]
    .into_iter()
    .filter(|(_, now, before)| !now.is_empty() && now != before)
    .map(|(what, now, before)| {
        let was = if before.is_empty() {
            String::new()
        } else {
            format!(" (was {before})")
        };
        format!("ship provided {what} sha256 {now} to {}{was}", new.name)
    })
    .collect()
}

/// Per node changes from `baseline` to `targets` (both: machine → spec). `secrets` are the values
/// to mask in the diff lines.
pub fn changes(
    baseline: &std::collections::BTreeMap<String, MachineSpec>,
    targets: &std::collections::BTreeMap<String, MachineSpec>,
    secrets: &[&str],
) -> Vec<NodeChange> {
    let mut out = Vec::new();
    for (machine, target) in targets {
        let old_spec = baseline.get(machine);
        let hosts = line_diff(&hosts_text(old_spec), &hosts_text(Some(target)), 0);
        for node in &target.nodes {
            let old = old_spec.and_then(|s| s.nodes.iter().find(|n| n.name == node.name));
            let old_toml = old.map_or("", |o| o.deployment_toml.as_str());
            let deployment_toml_diff = line_diff(old_toml, &node.deployment_toml, 2)
                .iter()
                .map(|l| mask(l, secrets))
                .collect();
            let mut certificate_changes = provided_changes(old, node);
            if chain(node) != old.and_then(chain) && chain(node).is_some() {
                certificate_changes.push(format!(
                    "{} {} TLS certificate",
                    if old.and_then(chain).is_some() {
                        "re-issue"
                    } else {
                        "issue"
                    },
                    node.name
                ));
            }
            let changed = node_changed(old, node);
            let kind = match old {
                None => ChangeKind::Create,
                Some(o) if changed || o != node || !hosts.is_empty() => ChangeKind::Update,
                Some(_) => ChangeKind::Unchanged,
            };
            out.push(NodeChange {
                machine: machine.clone(),
                node: node.name.clone(),
                kind: kind.into(),
                deployment_toml_diff,
                hosts_diff: hosts.clone(),
                certificate_changes,
                restart: old.is_some() && changed,
                converge: String::new(),
            });
        }
    }
    out.extend(service_changes(baseline, targets, secrets));
    for (machine, old_spec) in baseline {
        for node in &old_spec.nodes {
            let still = targets
                .get(machine)
                .is_some_and(|t| t.nodes.iter().any(|n| n.name == node.name));
            if !still {
                out.push(NodeChange {
                    machine: machine.clone(),
                    node: node.name.clone(),
                    kind: ChangeKind::Delete.into(),
                    deployment_toml_diff: Vec::new(),
                    hosts_diff: Vec::new(),
                    certificate_changes: Vec::new(),
                    restart: false,
                    converge: String::new(),
                });
            }
        }
    }
    out
}

/// Changes of the machines' managed services (a load balancer), one entry each named after the
/// service: the diff of its non-secret files (its configuration), a certificate line when its
/// certificate changes. Applying reloads a service, never restarts it (`restart` false).
fn service_changes(
    baseline: &std::collections::BTreeMap<String, MachineSpec>,
    targets: &std::collections::BTreeMap<String, MachineSpec>,
    secrets: &[&str],
) -> Vec<NodeChange> {
    let mut out = Vec::new();
    let text = |s: Option<&apim_proto::v1::ManagedService>| {
        s.map(|s| {
            s.files
                .iter()
                .filter(|f| !f.secret && !f.path.ends_with(".pem"))
                .map(|f| f.content.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
    };
    let cert = |s: Option<&apim_proto::v1::ManagedService>| {
        s.and_then(|s| s.files.iter().find(|f| f.secret).map(|f| f.content.clone()))
    };
    for (machine, target) in targets {
        let old_spec = baseline.get(machine);
        for svc in &target.services {
            let old = old_spec.and_then(|s| s.services.iter().find(|o| o.name == svc.name));
            let kind = match old {
                None => ChangeKind::Create,
                Some(o) if o.digest != svc.digest => ChangeKind::Update,
                Some(_) => ChangeKind::Unchanged,
            };
            let mut certificate_changes = Vec::new();
            if cert(Some(svc)) != cert(old) {
                certificate_changes.push(format!(
                    "{} {} TLS certificate",
                    if old.is_some() { "re-issue" } else { "issue" },
                    svc.name
                ));
            }
            out.push(NodeChange {
                machine: machine.clone(),
                node: svc.name.clone(),
                kind: kind.into(),
                deployment_toml_diff: line_diff(&text(old), &text(Some(svc)), 2)
                    .iter()
                    .map(|l| mask(l, secrets))
                    .collect(),
                hosts_diff: Vec::new(),
                certificate_changes,
                restart: false,
                converge: String::new(),
            });
        }
    }
    for (machine, old_spec) in baseline {
        for svc in &old_spec.services {
            let still = targets
                .get(machine)
                .is_some_and(|t| t.services.iter().any(|n| n.name == svc.name));
            if !still {
                out.push(NodeChange {
                    machine: machine.clone(),
                    node: svc.name.clone(),
                    kind: ChangeKind::Delete.into(),
                    ..NodeChange::default()
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_lines_with_context() {
        let d = line_diff("a\nb\nc\nd\ne\n", "a\nb\nX\nd\ne\n", 1);
        assert_eq!(d, [" b", "-c", "+X", " d"]);
        assert!(line_diff("same\n", "same\n", 3).is_empty());
        assert_eq!(line_diff("", "new\n", 0), ["+new"]);
    }

    #[test]
    fn provided_stores_show_by_digest_only() {
        use apim_proto::v1::{KeystoreSpec, ProvidedStores};
        let node = |keystore: &[u8], sha: &str| NodeSpec {
            name: "gw-1".into(),
            keystores: Some(KeystoreSpec {
                node_chain_pem: String::new(),
                provided: Some(ProvidedStores {
                    keystore: keystore.to_vec(),
                    keystore_sha256: sha.into(),
                    ..ProvidedStores::default()
                }),
                ..KeystoreSpec::default()
            }),
            ..NodeSpec::default()
        };
        let first = node(b"key-bytes-1", "aa11");
        assert_eq!(
            provided_changes(None, &first),
            ["ship provided keystore sha256 aa11 to gw-1"]
        );
        assert!(provided_changes(Some(&first), &first).is_empty());
        let second = node(b"key-bytes-2", "bb22");
        let lines = provided_changes(Some(&first), &second);
        assert_eq!(
            lines,
            ["ship provided keystore sha256 bb22 to gw-1 (was aa11)"]
        );
        assert!(!lines[0].contains("key-bytes"));
        // Not an issued certificate either: no "re-issue" line for provided stores.
        assert_eq!(chain(&second), None);
    }

    #[test]
    fn whole_files_are_masked_line_by_line() {
        let text = "[super_admin]\nusername = \"admin\"\npassword = \"adm1n\"\n\n[database.apim_db]\nurl = \"jdbc:mysql://db/x?password=db-s3cret\"\n";
        let masked = mask_text(text, &["db-s3cret"]);
        assert_eq!(
            masked,
            "[super_admin]\nusername = \"admin\"\npassword = \"********\"\n\n[database.apim_db]\nurl = \"jdbc:mysql://db/x?password=********\"\n"
        );
        assert_eq!(mask_text("no newline", &[]), "no newline");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            mask("+password = \"s3cret\"", &["s3cret"]),
            "+password = \"********\""
        );
        // By key even when the value is not known (e.g. the old generation's).
        assert_eq!(
            mask("-key_password = \"old-one\"", &[]),
            "-key_password = \"********\""
        );
        assert_eq!(
            mask(" auth_token = 'abc'", &[]),
            " auth_token = \"********\""
        );
        // By value anywhere else.
        assert_eq!(
            mask("+url = \"jdbc:mysql://u:s3cret@db\"", &["s3cret"]),
            "+url = \"jdbc:mysql://u:********@db\""
        );
        assert_eq!(
            mask(" hostname = \"km\"", &["s3cret"]),
            " hostname = \"km\""
        );
    }

    #[test]
    fn a_balancer_change_is_one_entry_named_after_the_service_and_never_a_restart() {
        use apim_proto::v1::{ManagedService, ServiceFile};
        let svc = |conf: &str, key: &str| ManagedService {
            name: "load-balancer".into(),
            files: vec![
                ServiceFile {
                    path: "conf/nginx.conf".into(),
                    content: conf.into(),
                    mode: 0o644,
                    secret: false,
                },
                ServiceFile {
                    path: "conf/tls/lb-key.pem".into(),
                    content: key.into(),
                    mode: 0o600,
                    secret: true,
                },
            ],
            digest: format!("{conf}{key}"),
            ..ManagedService::default()
        };
        let spec = |s: Vec<ManagedService>| MachineSpec {
            machine: "vm-lb".into(),
            services: s,
            ..MachineSpec::default()
        };
        let map = |s: MachineSpec| [("vm-lb".to_string(), s)].into_iter().collect();
        let none = map(spec(vec![]));
        let one = map(spec(vec![svc("server 1;\n", "k1")]));
        let two = map(spec(vec![svc("server 1;\nserver 2;\n", "k1")]));
        let c = changes(&none, &one, &[]);
        assert_eq!(
            (c[0].node.as_str(), c[0].kind()),
            ("load-balancer", ChangeKind::Create)
        );
        assert_eq!(
            c[0].certificate_changes,
            ["issue load-balancer TLS certificate"]
        );
        let c = changes(&one, &two, &[]);
        assert_eq!(c[0].kind(), ChangeKind::Update);
        assert!(!c[0].restart);
        assert!(
            c[0].deployment_toml_diff.iter().any(|l| l == "+server 2;"),
            "{c:?}"
        );
        assert!(c[0].certificate_changes.is_empty());
        assert!(!format!("{c:?}").contains("k1"), "the key is never shown");
        assert_eq!(changes(&two, &two, &[])[0].kind(), ChangeKind::Unchanged);
        assert_eq!(changes(&two, &none, &[])[0].kind(), ChangeKind::Delete);
    }
}
