//! `.dockerignore` exactly as the docker CLI applies it, so the same files reach the build.
//!
//! A port of what the CLI runs (moby/patternmatcher with its `ignorefile` reader, and the walk
//! of moby's archive package), because no maintained crate implements Docker's semantics, and
//! gitignore's differ (no anchoring to the root, no "last match wins" across `!` lines):
//!
//! - each line is trimmed; a line *starting* with `#` is a comment (`  # x` is a pattern);
//! - a pattern is a cleaned path relative to the context root (`/a`, `./a` and `a/` all mean
//!   `a`); `*` and `?` stop at `/`, `[...]` is a class, `\` escapes, `**` spans directories;
//! - a path is excluded when a pattern matches it or one of its parent directories; the last
//!   matching line decides, so `!` re-includes;
//! - an excluded directory is not descended into unless an exception names a path under it
//!   literally (`!dir/keep`; `!**/keep` does not reopen it, as with the CLI).

use regex::Regex;

/// Why a `.dockerignore` cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPattern {
    pub line: usize,
    pub pattern: String,
    pub reason: String,
}

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {:?}: {}", self.line, self.pattern, self.reason)
    }
}

/// The compiled patterns of one `.dockerignore`.
#[derive(Debug, Default, Clone)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern, without its `!`.
    text: String,
    exclusion: bool,
    kind: Kind,
}

/// How a pattern matches: the patternmatcher's shortcuts are part of its behaviour (a leading
/// `**` without `/` is a plain suffix test), so they are kept rather than turned into regexes.
#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// `foo/**`: the path starts with `foo/`.
    Prefix(String),
    /// `**/foo`: the path ends with `/foo` or is `foo`.
    Suffix(String),
    Regex(Regex),
}

/// What matched a directory: handed to its children so that they need not re-test parents.
#[derive(Debug, Clone, Default)]
pub struct Parent(Vec<bool>);

impl Matcher {
    /// Parses a `.dockerignore`'s text the way the CLI reads it.
    pub fn parse(text: &str) -> Result<Matcher, BadPattern> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.starts_with('#') {
                continue;
            }
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let (exclusion, rest) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let bad = |reason: &str| BadPattern {
                line: i + 1,
                pattern: line.to_string(),
                reason: reason.to_string(),
            };
            if rest.is_empty() {
                return Err(bad("an exception needs a pattern after '!'"));
            }
            let mut text = clean(rest);
            if text.len() > 1 && text.starts_with('/') {
                text.remove(0);
            }
            let kind = compile(&text).map_err(|e| bad(&e))?;
            patterns.push(Pattern {
                text,
                exclusion,
                kind,
            });
        }
        Ok(Matcher { patterns })
    }

    /// Adds an exception for `path` when the patterns exclude it (the CLI does this for the
    /// Dockerfile and `.dockerignore`, which the builder always needs).
    pub fn keep(&mut self, path: &str) {
        if self.excludes(path) {
            self.patterns.push(Pattern {
                text: path.to_string(),
                exclusion: true,
                kind: Kind::Exact,
            });
        }
    }

    /// Whether `path` (relative, `/`-separated) is excluded, testing it and all its parents.
    pub fn excludes(&self, path: &str) -> bool {
        self.check(path, None).0
    }

    /// The CLI's walk step: whether `path` is excluded, given what matched its parent directory
    /// (`None` at the root), and what to hand to its children if it is a directory.
    pub fn check(&self, path: &str, parent: Option<&Parent>) -> (bool, Parent) {
        let mut matched = false;
        let mut info = Parent(vec![false; self.patterns.len()]);
        for (i, p) in self.patterns.iter().enumerate() {
            let mut hit = parent.is_some_and(|parent| parent.0.get(i) == Some(&true));
            if !hit {
                // An inclusion cannot change an excluded path, nor an exception an included one.
                if p.exclusion != matched {
                    continue;
                }
                hit = p.matches(path);
                if !hit && parent.is_none() {
                    hit = parents(path).any(|dir| p.matches(dir));
                }
            }
            info.0[i] = hit;
            if hit {
                matched = !p.exclusion;
            }
        }
        (matched, info)
    }

    /// Whether an exception names something under `dir`, so an excluded `dir` must still be
    /// walked (the CLI's literal prefix test).
    pub fn reopens(&self, dir: &str) -> bool {
        let dir = format!("{dir}/");
        self.patterns
            .iter()
            .any(|p| p.exclusion && format!("{}/", p.text).starts_with(&dir))
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|bare| path == bare)
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }
}

/// `a`, `a/b` for `a/b/c`: the parent directories of a path, shortest first.
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Translates a cleaned pattern, as patternmatcher's `compile` does.
fn compile(pattern: &str) -> Result<Kind, String> {
    #[derive(PartialEq)]
    enum T {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut kind = T::Exact;
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    let mut first = true;
    while let Some(ch) = chars.next() {
        match ch {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    if kind == T::Exact {
                        kind = T::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = T::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = T::Regex;
                }
                if first {
                    kind = T::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = T::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = T::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    re.push('\\');
                    re.push(next);
                    kind = T::Regex;
                }
                None => re.push_str("\\\\"),
            },
            '[' | ']' => {
                re.push(ch);
                kind = T::Regex;
            }
            _ => re.push(ch),
        }
        first = false;
    }
    Ok(match kind {
        T::Exact => Kind::Exact,
        T::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_string()),
        T::Suffix => Kind::Suffix(pattern[2..].to_string()),
        T::Regex => {
            re.push('$');
            Kind::Regex(Regex::new(&re).map_err(|e| format!("not a valid pattern ({e})"))?)
        }
    })
}

/// Go's `filepath.Clean` on a `/`-separated path.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            _ => out.push(part),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> Matcher {
        Matcher::parse(text).unwrap()
    }

    #[test]
    fn cleans_like_go() {
        for (path, want) in [
            ("a//b/./c/", "a/b/c"),
            ("./a", "a"),
            ("/a/../b", "/b"),
            ("a/../../b", "../b"),
            ("", "."),
            ("/..", "/"),
        ] {
            assert_eq!(clean(path), want, "{path}");
        }
    }

    #[test]
    fn patterns_are_rooted_and_cleaned() {
        let ig = m("/target\n./logs/\nnode_modules\n");
        assert!(ig.excludes("target"));
        assert!(ig.excludes("target/debug/app"));
        assert!(ig.excludes("logs/a.log"));
        assert!(ig.excludes("node_modules/x/y.js"));
        assert!(
            !ig.excludes("src/target"),
            "not anchored anywhere but the root"
        );
        assert!(!ig.excludes("src/node_modules/x"));
    }

    #[test]
    fn stars_stop_at_slashes_and_double_stars_do_not() {
        let ig = m("*.log\n**/*.tmp\ndocs/**\n");
        assert!(ig.excludes("a.log"));
        assert!(!ig.excludes("sub/a.log"));
        assert!(ig.excludes("a.tmp"));
        assert!(ig.excludes("x/y/z.tmp"));
        assert!(ig.excludes("docs/a/b"));
        assert!(!ig.excludes("docs"), "docs/** leaves the directory itself");
        let ig = m("a/**/b\n");
        assert!(ig.excludes("a/b"));
        assert!(ig.excludes("a/x/y/b"));
        assert!(!ig.excludes("a/xb"));
    }

    #[test]
    fn last_match_wins_and_exceptions_reinclude() {
        let ig = m("*.md\n!README.md\nREADME*\n");
        assert!(ig.excludes("CHANGES.md"));
        assert!(
            ig.excludes("README.md"),
            "a later pattern excludes it again"
        );
        let ig = m("*.md\n!README.md\n");
        assert!(!ig.excludes("README.md"));
    }

    #[test]
    fn comments_only_at_line_start_and_question_marks() {
        let ig = m("# comment\n  #kept\nfile?.txt\n[ab].c\n");
        assert!(!ig.excludes("comment"));
        assert!(ig.excludes("#kept"));
        assert!(ig.excludes("file1.txt"));
        assert!(!ig.excludes("file10.txt"));
        assert!(ig.excludes("a.c") && !ig.excludes("c.c"));
    }

    #[test]
    fn leading_double_star_without_slash_is_a_suffix_test() {
        // patternmatcher's shortcut: `**foo` is a plain suffix match.
        let ig = m("**foo\n");
        assert!(ig.excludes("barfoo"));
        assert!(ig.excludes("x/yfoo"));
        assert!(m("**\n").excludes("anything/at/all"));
    }

    #[test]
    fn excluded_directories_are_reopened_only_by_literal_exceptions() {
        let ig = m("vendor\n!vendor/keep.txt\n");
        assert!(ig.reopens("vendor"));
        assert!(!ig.excludes("vendor/keep.txt"));
        assert!(ig.excludes("vendor/other.txt"));
        let ig = m("vendor\n!**/keep.txt\n");
        assert!(!ig.reopens("vendor"));
    }

    #[test]
    fn children_use_what_matched_their_parent() {
        // The CLI's walk passes the parent's matches down instead of re-testing parents, so
        // an exception that was skipped for the parent does not apply through it.
        let ig = m("d/*.log\n!d\n");
        let (dir_excluded, info) = ig.check("d", None);
        assert!(!dir_excluded);
        assert!(ig.check("d/x.log", Some(&info)).0);
        assert!(!ig.check("d/x.txt", Some(&info)).0);
    }

    #[test]
    fn keep_adds_an_exception_only_when_needed() {
        let mut ig = m("*\n");
        ig.keep("Dockerfile");
        assert!(!ig.excludes("Dockerfile"));
        assert!(ig.excludes("other"));
        let mut ig = m("tmp\n");
        ig.keep("Dockerfile");
        assert_eq!(ig.patterns.len(), 1);
    }

    #[test]
    fn bad_patterns_name_their_line() {
        let err = Matcher::parse("ok\n!\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = Matcher::parse("[unclosed\n").unwrap_err();
        assert!(err.to_string().starts_with("line 1: \"[unclosed\""));
    }
}
