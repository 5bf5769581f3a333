//! Which tags of one repository a GC pass expires, and the rule that selected each: a pure
//! function of the tags (with push times), the policy and the clock.
//!
//! A tag is kept when any of these holds: it is among the `keep_last` most recently pushed,
//! it was pushed within `keep_within`, it matches `keep_tags`, or it is immutable (an
//! immutable tag is never deleted, by retention or anyone). Everything else is expired. Ties
//! in push time are broken by tag name, greatest first, so the choice is deterministic.

use std::time::Duration;

use super::Policy;
use crate::db::listing::TagInfo;

/// A tag retention deletes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub tag: TagInfo,
    pub rule: String,
}

pub fn expired(tags: &[TagInfo], policy: &Policy, now_ms: u64) -> Vec<Expired> {
    if !policy.has_retention() {
        return Vec::new();
    }
    let mut ranked: Vec<&TagInfo> = tags.iter().collect();
    ranked.sort_by(|a, b| b.pushed_ms.cmp(&a.pushed_ms).then(b.tag.cmp(&a.tag)));
    let mut out = Vec::new();
    for (rank, t) in ranked.into_iter().enumerate() {
        let age = Duration::from_millis(now_ms.saturating_sub(t.pushed_ms));
        let by_rank = policy.keep_last.is_some_and(|n| rank < n);
        let by_age = policy.keep_within.is_some_and(|w| age <= w);
        let by_name = policy.keep_tags.iter().any(|g| g.matches(&t.tag));
        if by_rank || by_age || by_name || policy.is_immutable(&t.tag) {
            continue;
        }
        let age_text = humantime::format_duration(Duration::from_secs(age.as_secs()));
        let rule = match (policy.keep_last, policy.keep_within) {
            (Some(n), Some(w)) => format!(
                "keep_last = {n} (newest #{}) and keep_within = {} (pushed {age_text} ago)",
                rank + 1,
                humantime::format_duration(w)
            ),
            (Some(n), None) => format!("keep_last = {n} (newest #{})", rank + 1),
            (None, Some(w)) => format!(
                "keep_within = {} (pushed {age_text} ago)",
                humantime::format_duration(w)
            ),
            (None, None) => unreachable!("has_retention"),
        };
        out.push(Expired {
            tag: t.clone(),
            rule: format!("policy {}: {rule}", policy.pattern.as_str()),
        });
    }
    out.sort_by(|a, b| a.tag.tag.cmp(&b.tag.tag));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::Pattern;
    use crate::policy::TagGlob;

    const DAY: u64 = 86_400_000;

    fn tags(n: u64, now: u64) -> Vec<TagInfo> {
        // t00 is the newest (pushed today), t29 the oldest (29 days ago).
        (0..n)
            .map(|i| TagInfo {
                tag: format!("t{i:02}"),
                digest: format!("sha256:{i}"),
                pushed_ms: now - i * DAY,
            })
            .collect()
    }

    fn policy(keep_last: Option<usize>, keep_within_days: Option<u64>) -> Policy {
        Policy {
            pattern: Pattern::parse("ci/**").unwrap(),
            keep_last,
            keep_within: keep_within_days.map(|d| Duration::from_secs(d * 86_400)),
            keep_tags: vec![TagGlob::parse("t2*").unwrap()],
            immutable_tags: vec![TagGlob::parse("t15").unwrap()],
            quota: None,
        }
    }

    fn names(e: &[Expired]) -> Vec<&str> {
        e.iter().map(|e| e.tag.tag.as_str()).collect()
    }

    #[test]
    fn keeps_the_union_of_newest_recent_named_and_immutable() {
        let now = 100 * DAY;
        let t = tags(30, now);
        // Newest 5 (t00..t04), within 10 days (t00..t10), t2* (t20..t29), t15 immutable.
        let e = expired(&t, &policy(Some(5), Some(10)), now);
        assert_eq!(
            names(&e),
            ["t11", "t12", "t13", "t14", "t16", "t17", "t18", "t19"]
        );
        assert!(e[0].rule.contains("keep_last = 5"), "{}", e[0].rule);
        assert!(e[0].rule.contains("11days"), "{}", e[0].rule);
        let e = expired(&t, &policy(Some(12), None), now);
        assert_eq!(names(&e), ["t12", "t13", "t14", "t16", "t17", "t18", "t19"]);
        let e = expired(&t, &policy(None, Some(3)), now);
        assert_eq!(names(&e)[0], "t04");
        assert!(expired(&t, &policy(None, None), now).is_empty());
    }

    #[test]
    fn equal_push_times_rank_by_name() {
        let now = 10 * DAY;
        let t: Vec<TagInfo> = ["a", "c", "b"]
            .iter()
            .map(|n| TagInfo {
                tag: n.to_string(),
                digest: "sha256:x".into(),
                pushed_ms: now,
            })
            .collect();
        let mut p = policy(Some(1), None);
        p.keep_tags.clear();
        assert_eq!(names(&expired(&t, &p, now)), ["a", "b"]);
    }
}
