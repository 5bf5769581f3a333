//! The UI's HTML, as maud templates: checked at compile time, and every `(value)` escaped.
//! Pages take views (`crate::views`) and what the visitor may do; they read nothing.

use maud::{html, Markup, DOCTYPE};

use super::session::Viewer;
use crate::auth::users::Action;
use crate::gc::human_bytes;
use crate::views::text::{maybe_time, short, time};
use crate::views::{ManifestView, RepoDetail, RepoList, StorageView, TagRow};

/// What every page's frame needs.
pub struct Frame<'a> {
    pub viewer: &'a Viewer,
    pub csrf: &'a str,
    /// Which top-level section is open: "repos", "storage", "admin", "login".
    pub here: &'a str,
}

pub fn repo_url(name: &str) -> String {
    format!("/ui/r/{name}")
}

pub fn manifest_url(name: &str, digest: &str) -> String {
    format!("/ui/m/{name}@{digest}")
}

pub fn layout(frame: &Frame, title: &str, body: Markup) -> Markup {
    let v = frame.viewer;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Dockyard" }
                link rel="stylesheet" href="/ui/style.css";
            }
            body {
                header {
                    a.brand href="/ui/" { "Dockyard" }
                    a.here[frame.here == "repos"] href="/ui/" { "Repositories" }
                    a.here[frame.here == "storage"] href="/ui/storage" { "Storage" }
                    @if v.auth_on() && v.is_admin() || !v.auth_on() {
                        a.here[frame.here == "admin"] href="/ui/admin" { "Users" }
                    }
                    span.who {
                        @if let Some(user) = &v.user {
                            span { "Signed in as " strong { (user) } }
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(frame.csrf);
                                button type="submit" { "Sign out" }
                            }
                        } @else if v.auth_on() {
                            span.muted { "Anonymous" }
                            a href="/ui/login" { "Sign in" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn message(frame: &Frame, title: &str, text: &str) -> Markup {
    layout(
        frame,
        title,
        html! {
            h1 { (title) }
            p { (text) }
            @if frame.viewer.auth_on() && frame.viewer.user.is_none() {
                p { a href="/ui/login" { "Sign in" } " to see more." }
            }
            p { a href="/ui/" { "All repositories" } }
        },
    )
}

pub fn repo_list(frame: &Frame, list: &RepoList, q: &str) -> Markup {
    let page = list.offset / list.limit.max(1) + 1;
    let pages = list.total.div_ceil(list.limit.max(1)).max(1);
    let link = |p: usize| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("q", q)
            .append_pair("page", &p.to_string())
            .finish();
        format!("/ui/?{q}")
    };
    layout(
        frame,
        "Repositories",
        html! {
            h1 { "Repositories" }
            form.filter method="get" action="/ui/" {
                input type="search" name="q" value=(q) placeholder="Filter by name (a/*, a/**)" aria-label="Filter by name";
                button type="submit" { "Filter" }
            }
            p.muted { (list.total) " repositories" @if !q.is_empty() { " matching " code { (q) } } }
            table #repos {
                thead { tr {
                    th { "Name" } th.num { "Tags" } th.num { "Size" } th.num { "Shared" }
                    th { "Last push" } th { "Last pull" }
                } }
                tbody {
                    @for r in &list.repos {
                        tr {
                            td { a href=(repo_url(&r.name)) { (r.name) } }
                            td.num { (r.tags.len()) }
                            td.num { (human_bytes(r.unique_bytes)) }
                            td.num { (human_bytes(r.shared_bytes)) }
                            td { (maybe_time(r.last_push)) }
                            td { (maybe_time(r.last_pull)) }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pager {
                    @if page > 1 { a href=(link(page - 1)) rel="prev" { "← Previous" } }
                    span.muted { "Page " (page) " of " (pages) }
                    @if page < pages { a href=(link(page + 1)) rel="next" { "Next →" } }
                }
            }
        },
    )
}

fn kind(row: &TagRow) -> String {
    row.artifact_type
        .clone()
        .unwrap_or_else(|| row.media_type.clone())
}

fn tag_rows(frame: &Frame, repo: &str, rows: &[TagRow], may_delete: bool) -> Markup {
    html! {
        @for t in rows {
            tr {
                td {
                    @match &t.tag {
                        Some(tag) => a href=(format!("/ui/m/{repo}:{tag}")) { (tag) },
                        None => span.muted { "untagged" },
                    }
                }
                td.mono { a href=(manifest_url(repo, &t.digest)) title=(t.digest) { (short(&t.digest)) } }
                td { span.mono { (kind(t)) }
                    @if let Some(s) = &t.subject {
                        br; span.muted { "refers to " } a.mono href=(manifest_url(repo, s)) { (short(s)) }
                    }
                }
                td.num { (human_bytes(t.size)) }
                td { @for p in &t.platforms { span.pill { (p) } } }
                td { (time(t.pushed)) }
                @if may_delete {
                    td {
                        @let target = match &t.tag {
                            Some(tag) => format!("{repo}:{tag}"),
                            None => format!("{repo}@{}", t.digest),
                        };
                        a.danger href=(format!("/ui/delete/{target}")) { "Delete" }
                    }
                }
            }
        }
        @let _ = frame;
    }
}

pub fn repo_page(frame: &Frame, d: &RepoDetail, host: &str, tls: bool) -> Markup {
    let may_delete = frame.viewer.may(&d.name, Action::Delete);
    let first_tag = d
        .tags
        .first()
        .and_then(|t| t.tag.clone())
        .unwrap_or_else(|| "latest".to_string());
    let podman_flag = if tls { "" } else { " --tls-verify=false" };
    let tag_page = d.offset / d.limit.max(1) + 1;
    let tag_pages = d.tag_total.div_ceil(d.limit.max(1)).max(1);
    layout(
        frame,
        &d.name,
        html! {
            h1 { (d.name) }
            dl.facts {
                dt { "Manifests" } dd { (d.manifests) }
                dt { "Size" } dd { (human_bytes(d.unique_bytes)) " only here, " (human_bytes(d.shared_bytes)) " shared with other repositories" }
                dt { "Last push" } dd { (maybe_time(d.last_push)) }
                dt { "Last pull" } dd { (maybe_time(d.last_pull)) }
            }
            div.pull {
                input readonly value=(format!("docker pull {host}/{}:{first_tag}", d.name)) aria-label="docker pull command";
                input readonly value=(format!("podman pull{podman_flag} {host}/{}:{first_tag}", d.name)) aria-label="podman pull command";
            }
            h2 { "Tags" }
            table #tags {
                thead { tr {
                    th { "Tag" } th { "Digest" } th { "Type" } th.num { "Size" } th { "Platforms" } th { "Pushed" }
                    @if may_delete { th {} }
                } }
                tbody { (tag_rows(frame, &d.name, &d.tags, may_delete)) }
            }
            @if tag_pages > 1 {
                nav.pager {
                    @if tag_page > 1 { a href=(format!("{}?page={}", repo_url(&d.name), tag_page - 1)) rel="prev" { "← Previous" } }
                    span.muted { "Tags " (d.offset + 1) "–" (d.offset + d.tags.len()) " of " (d.tag_total) }
                    @if tag_page < tag_pages { a href=(format!("{}?page={}", repo_url(&d.name), tag_page + 1)) rel="next" { "Next →" } }
                }
            }
            @if !d.untagged.is_empty() {
                h2 { "Untagged manifests and referrers" }
                table #untagged {
                    thead { tr {
                        th { "Tag" } th { "Digest" } th { "Type" } th.num { "Size" } th { "Platforms" } th { "Pushed" }
                        @if may_delete { th {} }
                    } }
                    tbody { (tag_rows(frame, &d.name, &d.untagged, may_delete)) }
                }
                @if d.untagged_total > d.untagged.len() {
                    p.muted { "The first " (d.untagged.len()) " of " (d.untagged_total) "; " code { "dockyard show " (d.name) } " lists them all." }
                }
            }
        },
    )
}

pub fn manifest_page(frame: &Frame, m: &ManifestView, host: &str, tls: bool) -> Markup {
    let may_delete = frame.viewer.may(&m.repo, Action::Delete);
    let podman_flag = if tls { "" } else { " --tls-verify=false" };
    let pull_ref = format!("{host}/{}@{}", m.repo, m.digest);
    layout(
        frame,
        &format!("{}@{}", m.repo, short(&m.digest)),
        html! {
            h1 { a href=(repo_url(&m.repo)) { (m.repo) } " @ " span.mono { (short(&m.digest)) } }
            dl.facts {
                dt { "Digest" } dd.mono { (m.digest) }
                dt { "Media type" } dd.mono { (m.media_type) }
                @if let Some(a) = &m.artifact_type { dt { "Artifact type" } dd.mono { (a) } }
                dt { "Manifest size" } dd { (human_bytes(m.size)) }
                dt { "Tags" } dd { @for t in &m.tags { span.pill { (t) } } @if m.tags.is_empty() { span.muted { "none" } } }
                dt { "Pushed" } dd { (time(m.pushed)) }
                @if let Some(s) = &m.subject {
                    dt { "Refers to" } dd { a.mono href=(manifest_url(&m.repo, s)) { (s) } }
                }
                @for (k, v) in &m.annotations { dt { "Annotation " code { (k) } } dd { (v) } }
            }
            div.pull {
                input readonly value=(format!("docker pull {pull_ref}")) aria-label="docker pull command";
                input readonly value=(format!("podman pull{podman_flag} {pull_ref}")) aria-label="podman pull command";
            }
            @if may_delete {
                p { a.danger href=(format!("/ui/delete/{}@{}", m.repo, m.digest)) { "Delete this manifest…" } }
            }
            @if let Some(c) = &m.config {
                h2 { "Config" }
                dl.facts #config {
                    @if let Some(p) = &c.platform { dt { "Platform" } dd { (p) } }
                    @if let Some(t) = &c.created { dt { "Created" } dd { (t) } }
                    @if let Some(a) = &c.author { dt { "Author" } dd { (a) } }
                    @if !c.entrypoint.is_empty() { dt { "Entrypoint" } dd.mono { (format!("{:?}", c.entrypoint)) } }
                    @if !c.cmd.is_empty() { dt { "Cmd" } dd.mono { (format!("{:?}", c.cmd)) } }
                    @if let Some(w) = &c.working_dir { dt { "Working dir" } dd.mono { (w) } }
                    @if let Some(u) = &c.user { dt { "User" } dd.mono { (u) } }
                    @for e in &c.env { dt { "Env" } dd.mono { (e) } }
                }
                @if !c.labels.is_empty() {
                    h2 { "Labels" }
                    table #labels {
                        thead { tr { th { "Label" } th { "Value" } } }
                        tbody { @for (k, v) in &c.labels { tr { td.mono { (k) } td { (v) } } } }
                    }
                }
                @if !c.history.is_empty() {
                    h2 { "History" }
                    table #history {
                        thead { tr { th { "Created" } th { "Command" } th { "Layer" } } }
                        tbody { @for h in &c.history { tr {
                            td { (h.created.as_deref().unwrap_or("-")) }
                            td.mono { (h.created_by.as_deref().unwrap_or_default()) @if let Some(cm) = &h.comment { br; span.muted { (cm) } } }
                            td { @if h.empty_layer { span.muted { "no layer" } } @else { "layer" } }
                        } } }
                    }
                }
            } @else if let Some(c) = &m.config_descriptor {
                h2 { "Config" }
                p { span.mono { (c.media_type) } ", " (human_bytes(c.size)) ", " span.mono { (c.digest) } }
            }
            @if !m.layers.is_empty() {
                h2 { "Layers" }
                table #layers {
                    thead { tr { th { "#" } th { "Digest" } th { "Media type" } th.num { "Size" } th { "Made by" } } }
                    tbody { @for (i, l) in m.layers.iter().enumerate() { tr {
                        td { (i + 1) }
                        td.mono title=(l.digest) { (short(&l.digest)) }
                        td.mono { (l.media_type) }
                        td.num { (human_bytes(l.size)) }
                        td.mono { (l.command.as_deref().unwrap_or_default()) }
                    } } }
                }
            }
            @if !m.children.is_empty() {
                h2 { "Platforms" }
                table #platforms {
                    thead { tr { th { "Platform" } th { "Digest" } th { "Media type" } th.num { "Size" } } }
                    tbody { @for c in &m.children { tr {
                        td { (c.platform.as_deref().unwrap_or("-")) }
                        td.mono { @if c.stored { a href=(manifest_url(&m.repo, &c.digest)) { (short(&c.digest)) } } @else { (short(&c.digest)) " " span.muted { "(not stored here)" } } }
                        td.mono { (c.media_type) }
                        td.num { (human_bytes(c.size)) }
                    } } }
                }
            }
            h2 { "Referrers" }
            @if m.referrers.is_empty() {
                p.muted { "No signatures, SBOMs or attestations refer to this manifest." }
            } @else {
                table #referrers {
                    thead { tr { th { "Artifact type" } th { "Digest" } th.num { "Size" } th { "Annotations" } } }
                    tbody { @for r in &m.referrers { tr {
                        td.mono { (r.artifact_type.as_deref().unwrap_or(&r.media_type)) }
                        td.mono { a href=(manifest_url(&m.repo, &r.digest)) { (short(&r.digest)) } }
                        td.num { (human_bytes(r.size)) }
                        td { @for (k, v) in &r.annotations { code { (k) } " = " (v) br; } }
                    } } }
                }
            }
            h2 { "Raw manifest" }
            pre #raw { (m.raw) }
        },
    )
}

pub fn storage_page(frame: &Frame, s: &StorageView) -> Markup {
    let r = &s.reclaimable;
    layout(
        frame,
        "Storage",
        html! {
            h1 { "Storage" }
            dl.facts {
                dt { "Blobs" } dd { (s.blobs) " blobs, " (human_bytes(s.blob_bytes)) }
                dt { "Shared" } dd { (s.shared_blobs) " blobs (" (human_bytes(s.shared_bytes)) ") are linked into more than one repository" }
                dt { "GC would reclaim now" } dd #reclaimable {
                    (human_bytes(r.bytes)) " (" (r.blobs) " blobs, " (r.manifests) " manifests, "
                    (r.uploads) " uploads, " (r.stray_files) " stray files)"
                }
                dt { "Last GC pass" } dd {
                    @match &s.last_gc {
                        Some((at, g)) => { (time(*at)) ": freed " (human_bytes(g.bytes)) " (" (g.blobs) " blobs, " (g.manifests) " manifests) in " (g.elapsed_ms) " ms" },
                        None => span.muted { "none since the server started" },
                    }
                }
            }
            @if !s.quotas.is_empty() {
                h2 { "Quotas" }
                table #quotas {
                    thead { tr { th { "Pattern" } th.num { "Used" } th.num { "Quota" } th.num { "Used %" } } }
                    tbody { @for q in &s.quotas { tr {
                        td.mono { (q.pattern) }
                        td.num { (human_bytes(q.used)) } td.num { (human_bytes(q.quota)) }
                        td.num { (format!("{:.0}%", crate::gc::usage::percent(q.used, q.quota))) }
                    } } }
                }
            }
            h2 { "By repository" }
            table #usage {
                thead { tr { th { "Repository" } th.num { "Manifests" } th.num { "Tags" } th.num { "Blobs" } th.num { "Size" } th.num { "Only here" } } }
                tbody { @for u in &s.repos { tr {
                    td { a href=(repo_url(&u.name)) { (u.name) } }
                    td.num { (u.manifests) } td.num { (u.tags) } td.num { (u.blobs) }
                    td.num { (human_bytes(u.bytes)) } td.num { (human_bytes(u.exclusive_bytes)) }
                } } }
            }
        },
    )
}

pub fn admin_page(frame: &Frame) -> Markup {
    let policy = frame.viewer.policy();
    layout(
        frame,
        "Users",
        html! {
            h1 { "Users and grants" }
            p.muted { "Read-only: change them with " code { "dockyard user" } " and " code { "dockyard acl" } "." }
            @match policy {
                None => p.notice { "Authentication is off (" code { "[auth] mode = \"none\"" } "): everyone may do everything." },
                Some(p) => {
                    h2 { "Users" }
                    table #users {
                        thead { tr { th { "User" } } }
                        tbody { @for u in p.users.keys() { tr { td { (u) } } } }
                    }
                    h2 { "Grants" }
                    table #grants {
                        thead { tr { th { "Subject" } th { "Pattern" } th { "Actions" } } }
                        tbody { @for (subject, grants) in &p.grants { @for g in grants { tr {
                            td { (subject) } td.mono { (g.pattern.as_str()) } td { (g.actions.names().join(", ")) }
                        } } } }
                    }
                }
            }
        },
    )
}

pub fn login_page(frame: &Frame, error: Option<&str>, user: &str) -> Markup {
    layout(
        frame,
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.notice.error { (e) } }
            @if !frame.viewer.auth_on() {
                p.notice { "Authentication is off: there is nothing to sign in to." }
            } @else {
                form.login method="post" action="/ui/login" {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    label { "User" br; input type="text" name="username" value=(user) autocomplete="username" required; }
                    label { "Password" br; input type="password" name="password" autocomplete="current-password" required; }
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

pub fn confirm_delete(frame: &Frame, repo: &str, target: &str, is_tag: bool) -> Markup {
    layout(
        frame,
        "Delete",
        html! {
            h1 { "Delete " span.mono { (target) } "?" }
            @if is_tag {
                p { "The tag goes; the manifest it points at stays (and the GC collects it if nothing else references it)." }
            } @else {
                p { "The manifest goes with every tag pointing at it. Clients pulling it will fail. An index that lists it must be deleted first." }
            }
            form method="post" action=(format!("/ui/delete/{target}")) {
                input type="hidden" name="csrf" value=(frame.csrf);
                button.danger type="submit" { "Delete" }
                " "
                a href=(repo_url(repo)) { "Cancel" }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::http::ui::session::UiState;

    /// Names and tags cannot hold markup (the grammar forbids it), but a page must not rely
    /// on that: whatever it shows is escaped.
    #[test]
    fn markup_in_any_field_renders_as_text() {
        let ui = UiState::new(&Config::default());
        let viewer = ui.viewer(None, None);
        let frame = Frame {
            viewer: &viewer,
            csrf: "token",
            here: "repos",
        };
        let evil = "<script>alert(1)</script>";
        let row = TagRow {
            tag: Some(evil.to_string()),
            digest: format!("sha256:{evil}"),
            media_type: evil.to_string(),
            artifact_type: Some(evil.to_string()),
            size: 1,
            platforms: vec![evil.to_string()],
            pushed: 0,
            subject: Some(evil.to_string()),
        };
        let detail = RepoDetail {
            name: evil.to_string(),
            tags: vec![row.clone()],
            tag_total: 1,
            offset: 0,
            limit: 100,
            untagged: vec![row],
            untagged_total: 1,
            manifests: 1,
            unique_bytes: 0,
            shared_bytes: 0,
            last_push: None,
            last_pull: None,
        };
        let html = repo_page(&frame, &detail, evil, false).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let page = message(&frame, evil, evil).into_string();
        assert!(!page.contains("<script>"));
    }
}
