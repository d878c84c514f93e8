//! `[secure_vault]`: what the product's vault can hold (docs/secure-vault.md).

use crate::diag::Diagnostic;
use crate::plan::{Issuer, Plan};
use crate::secrets::{self, EnvSource};

/// The longest secret the vault can hold: one RSA-OAEP (SHA-1) block of a 2048-bit key,
/// k − 2·20 − 2 bytes (the cipher tool encrypts each value with a single `doFinal`).
pub const MAX_SECRET_BYTES: usize = 256 - 2 * 20 - 2;

/// The vault needs a key apimctl knows; each secret must fit one RSA block; `[secrets]` is
/// apimctl's (an override may not write it).
pub(super) fn check(p: &Plan, env: &dyn EnvSource, out: &mut Vec<Diagnostic>) {
    for o in &p.overrides {
        if o.table.contains_key("secrets") {
            out.push(
                Diagnostic::error(
                    o.scope.span.clone(),
                    "an override may not write `[secrets]`: apimctl writes it",
                )
                .with_hint("set `[secure_vault] enabled = true` to encrypt the plan's secrets"),
            );
        }
    }
    let v = &p.secure_vault;
    if !v.enabled {
        return;
    }
    if p.tls.issuer.value == Issuer::PackDefault {
        out.push(
            Diagnostic::error(
                v.span.clone(),
                "the secure vault encrypts with the primary keystore's certificate, and with \
                 `issuer = \"pack-default\"` that is the pack's own shipped keystore",
            )
            .with_hint("use `[tls] issuer = \"cluster-ca\"` (or \"provided\")"),
        );
    }
    for (what, s) in p.secret_refs() {
        if let Ok(value) = secrets::resolve(&s.value, &p.base_dir, env)
            && value.len() > MAX_SECRET_BYTES
        {
            out.push(Diagnostic::error(
                s.span.clone(),
                format!(
                    "{what} is {} bytes: the secure vault holds at most {MAX_SECRET_BYTES} (one \
                     RSA-2048 OAEP block)",
                    value.len()
                ),
            ));
        }
    }
}
