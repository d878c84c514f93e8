//! `[gateway_artifacts]`: how 3.x gateways in HA share their deployed APIs.

use super::super::walk::Fields;
use super::super::{ArtifactShare, At, GatewayArtifacts};
use crate::diag::Diagnostic;

/// `[gateway_artifacts]`: `share = "sync"`, or `share = "mount"` with `source`, `fstype` and
/// `options`.
pub(super) fn gateway_artifacts(
    root: &mut Fields<'_, '_>,
    out: &mut Vec<Diagnostic>,
) -> Option<GatewayArtifacts> {
    let mut f = root.table("gateway_artifacts", out)?;
    let span = f.span.clone();
    let share = super::choice(
        &mut f,
        "share",
        &[("sync", false), ("mount", true)],
        false,
        out,
    );
    let source = f.string("source", out);
    let fstype = f.string("fstype", out);
    let options = f.string("options", out);
    let share = if share.value {
        let Some(source) = source else {
            f.missing(
                "source",
                out,
                "the shared file system to mount, e.g. source = \"nfs.example.com:/exports/apim-gw\"",
            );
            f.finish(out);
            return None;
        };
        let fstype = fstype.unwrap_or_else(|| At::new("nfs".into(), span.clone()));
        mount_field_checks(&source, &fstype, options.as_ref(), out);
        ArtifactShare::Mount {
            source,
            fstype,
            options,
        }
    } else {
        for (key, v) in [
            ("source", &source),
            ("fstype", &fstype),
            ("options", &options),
        ] {
            if let Some(v) = v {
                out.push(
                    Diagnostic::error(
                        v.span.clone(),
                        format!("`{key}` in [gateway_artifacts] applies to share = \"mount\" only"),
                    )
                    .with_hint("with share = \"sync\" apimctl copies the files itself"),
                );
            }
        }
        ArtifactShare::Sync
    };
    f.finish(out);
    Some(GatewayArtifacts { share, span })
}

/// `mount` takes these as separate arguments: none may be empty, start with `-` or hold
/// whitespace, and a bind mount's source is an absolute path.
fn mount_field_checks(
    source: &At<String>,
    fstype: &At<String>,
    options: Option<&At<String>>,
    out: &mut Vec<Diagnostic>,
) {
    let fields = [
        Some(("source", source)),
        Some(("fstype", fstype)),
        options.map(|o| ("options", o)),
    ];
    for (key, v) in fields.into_iter().flatten() {
        let bad = v.value.is_empty()
            || v.value.starts_with('-')
            || v.value.chars().any(|c| c.is_whitespace() || c.is_control());
        if bad {
            out.push(
                Diagnostic::error(
                    v.span.clone(),
                    format!(
                        "`{key}` in [gateway_artifacts] must be non-empty, must not start with `-` \
                         and must hold no spaces"
                    ),
                )
                .with_hint("it is passed to mount(8) as one argument"),
            );
        }
    }
    if !fstype
        .value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        out.push(
            Diagnostic::error(
                fstype.span.clone(),
                format!(
                    "`fstype` in [gateway_artifacts] is `{}`, not a file system type",
                    fstype.value
                ),
            )
            .with_hint(
                "e.g. nfs, nfs4, cifs, or bind for a folder already shared on every machine",
            ),
        );
    }
    if fstype.value == "bind" && !source.value.starts_with('/') {
        out.push(
            Diagnostic::error(
                source.span.clone(),
                "with fstype = \"bind\", `source` must be an absolute path",
            )
            .with_hint("a folder every gateway machine sees, e.g. /mnt/apim-gw"),
        );
    }
}
