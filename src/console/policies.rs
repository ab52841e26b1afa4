//! The Policies page: the effective class table and rules of every tenant,
//! the files they come from, and for admins an editor that validates an
//! edited file against the whole directory (errors with file and line)
//! before it replaces the old one, reloads the policy and logs the change.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::accounts::Role;
use super::pages::{layout, text};
use super::query::internal;
use super::session::{ChangeForm, Checked, Lang, refuse};
use super::state::{Console, User};
use crate::message::{QueueId, RiskClass};
use crate::policy::rules::{Policy, PolicySet};
use crate::util::rfc3339;

/// The largest policy file the editor takes.
const MAX_FILE: usize = 256 * 1024;

pub(super) async fn page(State(console): State<Arc<Console>>, user: User, lang: Lang) -> Response {
    let set = console.policies.current();
    let files = if user.scope().is_some() {
        // A tenant's customer sees what applies to it, not the files of
        // the MSP and of its other customers.
        Vec::new()
    } else {
        match read_files(&set.files) {
            Ok(f) => f,
            Err(e) => return internal(e),
        }
    };
    render(
        lang,
        &user,
        &set,
        &files,
        console.policies.dir().is_some(),
        None,
    )
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct Edit {
    #[serde(default)]
    csrf: String,
    file: String,
    text: String,
}

impl ChangeForm for Edit {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub(super) async fn save(
    State(console): State<Arc<Console>>,
    lang: Lang,
    Checked(user, edit): Checked<Edit>,
) -> Response {
    if user.account.role != Role::Admin {
        return refuse(StatusCode::FORBIDDEN, "only an admin changes the policy");
    }
    let Some(dir) = console.policies.dir().map(FsPath::to_path_buf) else {
        return refuse(
            StatusCode::CONFLICT,
            "the built-in policy is in force: set [policy] dir to edit policy files",
        );
    };
    let set = console.policies.current();
    // Only a file the policy was read from: the form cannot name a path.
    let Some(target) = set
        .files
        .iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(edit.file.as_str()))
        .cloned()
    else {
        return refuse(StatusCode::BAD_REQUEST, "no such policy file");
    };
    // Browsers send CR LF from a textarea; the files are written with LF.
    let new_text = edit.text.replace("\r\n", "\n");
    if new_text.len() > MAX_FILE {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a policy file is at most 256 KiB",
        );
    }
    let mut files = match read_files(&set.files) {
        Ok(f) => f,
        Err(e) => return internal(e),
    };
    for f in &mut files {
        if f.0 == target {
            f.1 = new_text.clone();
        }
    }
    // The whole directory as it would be: a conflict with another file
    // counts as much as a syntax error.
    if let Err(e) = PolicySet::from_files(files.clone()) {
        let page = render(lang, &user, &set, &files, true, Some(&e.to_string()));
        return (StatusCode::UNPROCESSABLE_ENTITY, page).into_response();
    }
    if let Err(e) = write_atomically(&dir, &target, &new_text) {
        return internal(format!("{}: {e}", target.display()));
    }
    let detail = match console.policies.reload() {
        Ok(_) => format!(
            "saved; SHA-256 {}",
            crate::util::hex(&Sha256::digest(new_text.as_bytes()))
        ),
        Err(e) => return internal(format!("saved, but the reload failed: {e}")),
    };
    tracing::info!(account = %user.account.name, file = %target.display(), "policy changed in the console");
    let tenant = user
        .scope()
        .map_or_else(|| console.config.default_tenant.clone(), str::to_string);
    console
        .record(
            &user,
            &tenant,
            QueueId::UNSPOOLED,
            "policy",
            Some(edit.file),
            Some(detail),
        )
        .await;
    Redirect::to("/policies").into_response()
}

fn read_files(paths: &[PathBuf]) -> std::io::Result<Vec<(PathBuf, String)>> {
    paths
        .iter()
        .map(|p| {
            // The built-in policy has no file on disk.
            let text = match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(_) if !p.is_absolute() && !p.exists() => {
                    crate::policy::rules::BUILTIN.to_string()
                }
                Err(e) => return Err(e),
            };
            Ok((p.clone(), text))
        })
        .collect()
}

/// Written beside the old file and renamed over it: a reader sees the old
/// file or the new one, never half.
fn write_atomically(dir: &FsPath, target: &FsPath, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(target).map_err(|e| e.error)?;
    Ok(())
}

fn render(
    lang: Lang,
    user: &User,
    set: &PolicySet,
    files: &[(PathBuf, String)],
    editable: bool,
    error: Option<&str>,
) -> Markup {
    let t = |k| text(lang, k);
    let now = crate::util::now();
    let own;
    let policies: Vec<(Option<&str>, &Policy)> = match user.scope() {
        Some(tenant) => {
            own = set.for_tenant(tenant);
            vec![(Some(tenant), &*own)]
        }
        None => set.all(),
    };
    let admin = user.account.role == Role::Admin && editable;
    layout(
        lang,
        Some(user),
        t("policies"),
        "policies",
        html! {
            @if let Some(e) = error { p.error role="alert" id="policy-error" { (e) } }
            @for (tenant, p) in &policies {
                section.record {
                    h2 { (tenant.map_or_else(|| t("general-policy").to_string(), |x| format!("{} {x}", t("tenant")))) }
                    table {
                        tr { th { (t("class")) } th { "Required" } th { "Fallback" } th { "Revocation unavailable" } }
                        @for class in RiskClass::ALL {
                            @let rule = p.class_rule(class);
                            tr {
                                td { (class.name()) @if class == p.default_class { " (default)" } }
                                td { (rule.required.to_string()) }
                                td { (format!("{:?}", rule.fallback).to_lowercase()) }
                                td { (if rule.accept_revocation_unavailable { "accepted" } else { "refused" }) }
                            }
                        }
                    }
                    @if !p.rules.is_empty() {
                        h3 { "Rules" }
                        p { @for r in &p.rules { code { (r.name) } " → " (r.class.name()) "; " } }
                    }
                    @if !p.domains.is_empty() {
                        h3 { (t("domains")) }
                        table {
                            tr { th { "Pattern" } th { "At least class" } th { "At least level" } th { "Note" } }
                            @for d in &p.domains {
                                tr {
                                    td { (d.pattern) }
                                    td { (d.min_class.map_or("", |c| c.name())) }
                                    td { (d.required.map_or("", |l| l.name())) }
                                    td.small { (d.note.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                    @if !p.exceptions.is_empty() {
                        h3 { "Exceptions" }
                        table {
                            tr { th { "Pattern" } th { (t("level")) } th { "Classes" } th { "Reason" } th { "Approved by" } th { "Expires" } }
                            @for x in &p.exceptions {
                                tr {
                                    td { (x.pattern) }
                                    td { (x.level.name()) }
                                    td { (x.classes.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")) }
                                    td.small { (x.reason) }
                                    td { (x.approved_by) }
                                    td { (rfc3339(x.expires)) @if x.expires <= now { " " span.bad { "expired" } } }
                                }
                            }
                        }
                    }
                }
            }
            @for (path, body) in files {
                @let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                section.record {
                    h2 { code { (path.display().to_string()) } }
                    @if admin {
                        form.editor method="post" action="/policies" {
                            input type="hidden" name="csrf" value=(user.csrf.as_deref().unwrap_or(""));
                            input type="hidden" name="file" value=(name);
                            textarea name="text" rows="18" spellcheck="false" { (body) }
                            button type="submit" { (t("validate-save")) }
                        }
                    } @else {
                        pre { (body) }
                    }
                }
            }
        },
    )
}
