//! The views as terminal text, for `dockyard ls` and `dockyard show`.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::{ManifestView, RepoDetail, RepoList, TagRow};
use crate::gc::human_bytes;

/// Unix seconds as `2026-11-30 10:53:12 UTC`.
pub fn time(secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

pub fn maybe_time(secs: Option<u64>) -> String {
    secs.map_or_else(|| "-".to_string(), time)
}

/// A digest shortened for a table: `sha256:0123456789ab`.
pub fn short(digest: &str) -> &str {
    let end = digest.find(':').map_or(0, |i| i + 13).min(digest.len());
    &digest[..end]
}

pub fn repo_list(list: &RepoList) -> String {
    let width = list
        .repos
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max("REPOSITORY".len());
    let mut out = format!(
        "{:<width$}  {:>4}  {:>10}  {:>10}  {:<23}  TAGS\n",
        "REPOSITORY", "MANI", "SIZE", "SHARED", "LAST PUSH"
    );
    for r in &list.repos {
        let mut tags = r
            .tags
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if r.tags.len() > 8 {
            let _ = write!(tags, ", … ({} tags)", r.tags.len());
        }
        let _ = writeln!(
            out,
            "{:<width$}  {:>4}  {:>10}  {:>10}  {:<23}  {}",
            r.name,
            r.manifests,
            human_bytes(r.unique_bytes),
            human_bytes(r.shared_bytes),
            maybe_time(r.last_push),
            tags
        );
    }
    let _ = write!(out, "{} repositories", list.total);
    out
}

pub fn manifest(m: &ManifestView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}@{}", m.repo, m.digest);
    let _ = writeln!(out, "  media type: {}", m.media_type);
    if let Some(a) = &m.artifact_type {
        let _ = writeln!(out, "  artifact type: {a}");
    }
    let _ = writeln!(out, "  size: {} (manifest)", human_bytes(m.size));
    if !m.tags.is_empty() {
        let _ = writeln!(out, "  tags: {}", m.tags.join(", "));
    }
    let _ = writeln!(out, "  pushed: {}", time(m.pushed));
    if let Some(s) = &m.subject {
        let _ = writeln!(out, "  subject: {s}");
    }
    if let Some(c) = &m.config {
        let _ = writeln!(out, "config:");
        if let Some(p) = &c.platform {
            let _ = writeln!(out, "  platform: {p}");
        }
        if let Some(t) = &c.created {
            let _ = writeln!(out, "  created: {t}");
        }
        if let Some(a) = &c.author {
            let _ = writeln!(out, "  author: {a}");
        }
        if !c.entrypoint.is_empty() {
            let _ = writeln!(out, "  entrypoint: {:?}", c.entrypoint);
        }
        if !c.cmd.is_empty() {
            let _ = writeln!(out, "  cmd: {:?}", c.cmd);
        }
        for e in &c.env {
            let _ = writeln!(out, "  env: {e}");
        }
        for (k, v) in &c.labels {
            let _ = writeln!(out, "  label: {k}={v}");
        }
    }
    if !m.layers.is_empty() {
        let total: u64 = m.layers.iter().map(|l| l.size).sum();
        let _ = writeln!(out, "layers ({}, {}):", m.layers.len(), human_bytes(total));
        for l in &m.layers {
            let _ = writeln!(
                out,
                "  {}  {:>10}  {}{}",
                short(&l.digest),
                human_bytes(l.size),
                l.media_type,
                l.command
                    .as_deref()
                    .map(|c| format!("  {}", c.trim()))
                    .unwrap_or_default()
            );
        }
    }
    if !m.children.is_empty() {
        let _ = writeln!(out, "platforms:");
        for c in &m.children {
            let _ = writeln!(
                out,
                "  {:<16}  {}  {:>10}",
                c.platform.as_deref().unwrap_or("-"),
                c.digest,
                human_bytes(c.size)
            );
        }
    }
    if !m.referrers.is_empty() {
        let _ = writeln!(out, "referrers:");
        for r in &m.referrers {
            let _ = writeln!(
                out,
                "  {}  {}  {:>10}",
                r.artifact_type.as_deref().unwrap_or(&r.media_type),
                r.digest,
                human_bytes(r.size)
            );
        }
    }
    out.trim_end().to_string()
}

pub fn repository(d: &RepoDetail) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", d.name);
    let _ = writeln!(
        out,
        "  {} manifests, {} only here, {} shared; last push {}, last pull {}",
        d.manifests,
        human_bytes(d.unique_bytes),
        human_bytes(d.shared_bytes),
        maybe_time(d.last_push),
        maybe_time(d.last_pull)
    );
    let rows = |out: &mut String, rows: &[TagRow]| {
        for t in rows {
            let kind = t.artifact_type.as_deref().unwrap_or(&t.media_type);
            let _ = writeln!(
                out,
                "  {:<20}  {}  {:>10}  {}  {}{}",
                t.tag.as_deref().unwrap_or("<none>"),
                short(&t.digest),
                human_bytes(t.size),
                time(t.pushed),
                kind,
                if t.platforms.is_empty() {
                    String::new()
                } else {
                    format!("  [{}]", t.platforms.join(", "))
                }
            );
        }
    };
    let _ = writeln!(out, "tags:");
    rows(&mut out, &d.tags);
    if !d.untagged.is_empty() {
        let _ = writeln!(out, "untagged manifests and referrers:");
        rows(&mut out, &d.untagged);
    }
    out.trim_end().to_string()
}
