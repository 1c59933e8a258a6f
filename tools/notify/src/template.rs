//! Users' own messages: plain text with `{{name}}` placeholders and two kinds of sections,
//! `{{#name}}…{{/name}}` (shown when `name` is not empty) and `{{^name}}…{{/name}}` (shown
//! when it is), as in Mustache. Nothing else, so a template cannot fail halfway through a
//! deploy: it is checked against the known names before anything is sent.

use std::collections::BTreeMap;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Value(String),
    Section {
        name: String,
        inverted: bool,
        body: Vec<Node>,
    },
}

impl Template {
    /// Parses `text`, refusing unknown names, unclosed sections and stray `{{`.
    pub fn parse(text: &str, known: &[&str]) -> Result<Template, String> {
        let mut stack: Vec<(String, bool, Vec<Node>)> = Vec::new();
        let mut nodes = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                nodes.push(Node::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!("'{{{{' without '}}}}' near {:?}", snippet(&rest[open..]))
            })?;
            let tag = after[..close].trim();
            rest = &after[close + 2..];
            let (kind, name) = match tag.chars().next() {
                Some(c @ ('#' | '^' | '/')) => (Some(c), tag[1..].trim()),
                _ => (None, tag),
            };
            if !known.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{{{name}}}}}; known: {}",
                    known.join(", ")
                ));
            }
            match kind {
                None => nodes.push(Node::Value(name.to_string())),
                Some('/') => {
                    let (open_name, inverted, outer) = stack
                        .pop()
                        .ok_or_else(|| format!("{{{{/{name}}}}} closes no section"))?;
                    if open_name != name {
                        return Err(format!(
                            "{{{{/{name}}}}} closes {{{{{}{open_name}}}}}",
                            if inverted { '^' } else { '#' }
                        ));
                    }
                    let body = std::mem::replace(&mut nodes, outer);
                    nodes.push(Node::Section {
                        name: open_name,
                        inverted,
                        body,
                    });
                }
                Some(c) => {
                    let outer = std::mem::take(&mut nodes);
                    stack.push((name.to_string(), c == '^', outer));
                }
            }
        }
        if !rest.is_empty() {
            nodes.push(Node::Text(rest.to_string()));
        }
        if let Some((name, inverted, _)) = stack.pop() {
            return Err(format!(
                "{{{{{}{name}}}}} is never closed with {{{{/{name}}}}}",
                if inverted { '^' } else { '#' }
            ));
        }
        Ok(Template { nodes })
    }

    /// Fills in the values; a name without a value is empty.
    pub fn render(&self, values: &BTreeMap<&str, String>) -> String {
        let mut out = String::new();
        render(&self.nodes, values, &mut out);
        out
    }
}

fn render(nodes: &[Node], values: &BTreeMap<&str, String>, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Value(name) => out.push_str(values.get(name.as_str()).map_or("", |v| v)),
            Node::Section {
                name,
                inverted,
                body,
            } => {
                let set = values.get(name.as_str()).is_some_and(|v| !v.is_empty());
                if set != *inverted {
                    render(body, values, out);
                }
            }
        }
    }
}

fn snippet(text: &str) -> String {
    text.chars().take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["service", "failed", "error"];

    fn values(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn placeholders_and_sections() {
        let t = Template::parse(
            "{{service}}: {{#failed}}FAILED ({{ error }}){{/failed}}{{^failed}}ok{{/failed}}",
            KNOWN,
        )
        .unwrap();
        assert_eq!(
            t.render(&values(&[
                ("service", "app"),
                ("failed", "yes"),
                ("error", "x")
            ])),
            "app: FAILED (x)"
        );
        assert_eq!(t.render(&values(&[("service", "app")])), "app: ok");
    }

    #[test]
    fn mistakes_are_named() {
        let err = Template::parse("{{servise}}", KNOWN).unwrap_err();
        assert!(
            err.starts_with("unknown placeholder {{servise}}; known: service"),
            "{err}"
        );
        assert!(Template::parse("{{#failed}}x", KNOWN)
            .unwrap_err()
            .contains("never closed"));
        assert!(Template::parse("{{#failed}}x{{/error}}", KNOWN)
            .unwrap_err()
            .contains("closes {{#failed}}"));
        assert!(Template::parse("a {{service", KNOWN)
            .unwrap_err()
            .contains("without"));
    }
}
