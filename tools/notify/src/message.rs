//! The message itself: a few lines of styled spans, rendered for each channel's markup
//! (Telegram's HTML, email's text and HTML parts, Slack's mrkdwn, Discord's Markdown), and
//! split on line boundaries for channels that cap a message's length.
//!
//! Every renderer escapes what the channel would read as markup, so a commit message with
//! `<`, `>`, `&`, `_` or `*` arrives as it was written.

/// A run of text with one style.
#[derive(Debug, Clone, PartialEq)]
pub enum Span {
    Text(String),
    Bold(String),
    Code(String),
    Link { text: String, url: String },
}

impl Span {
    pub fn text(s: impl Into<String>) -> Span {
        Span::Text(s.into())
    }

    /// The words a person reads, without markup.
    fn plain(&self) -> String {
        match self {
            Span::Text(t) | Span::Bold(t) | Span::Code(t) => t.clone(),
            Span::Link { text, url } if text == url => url.clone(),
            Span::Link { text, .. } => text.clone(),
        }
    }
}

/// A message: lines of spans. No span holds a newline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc {
    pub lines: Vec<Vec<Span>>,
}

impl Doc {
    /// A plain-text message (a user's template): one text span per line.
    pub fn from_text(text: &str) -> Doc {
        Doc {
            lines: text
                .trim_end()
                .lines()
                .map(|l| vec![Span::text(l)])
                .collect(),
        }
    }

    /// Adds a line; spans holding newlines are broken into several lines.
    pub fn push(&mut self, spans: Vec<Span>) {
        let mut line = Vec::new();
        for span in spans {
            let (text, rebuild): (&str, fn(&str) -> Span) = match &span {
                Span::Text(t) => (t, |s| Span::text(s)),
                Span::Bold(t) => (t, |s| Span::Bold(s.into())),
                Span::Code(t) => (t, |s| Span::Code(s.into())),
                Span::Link { .. } => {
                    line.push(span);
                    continue;
                }
            };
            let mut parts = text.split('\n');
            if let Some(first) = parts.next() {
                line.push(rebuild(first.trim_end_matches('\r')));
            }
            for part in parts {
                self.lines.push(std::mem::take(&mut line));
                line.push(rebuild(part.trim_end_matches('\r')));
            }
        }
        self.lines.push(line);
    }

    pub fn plain(&self) -> String {
        self.render(Markup::Plain)
    }

    pub fn render(&self, markup: Markup) -> String {
        self.lines
            .iter()
            .map(|l| markup.line(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The message cut into parts of at most `limit` units (as `measure` counts them, in the
    /// rendered markup), on line boundaries. A line longer than `limit` on its own is sent as
    /// plain text in pieces. Nothing is dropped.
    pub fn split(&self, markup: Markup, limit: usize, measure: fn(&str) -> usize) -> Vec<Doc> {
        let mut lines: Vec<(Vec<Span>, usize)> = Vec::new();
        for line in &self.lines {
            let len = measure(&markup.line(line));
            if len <= limit {
                lines.push((line.clone(), len));
                continue;
            }
            let text: String = line.iter().map(Span::plain).collect();
            for piece in cut(&text, limit, |c| measure(&markup.text(&c.to_string()))) {
                let len = measure(&markup.text(&piece));
                lines.push((vec![Span::Text(piece)], len));
            }
        }
        let mut parts = Vec::new();
        let mut part = Doc::default();
        let mut used = 0;
        for (line, len) in lines {
            let need = if part.lines.is_empty() { len } else { len + 1 };
            if !part.lines.is_empty() && used + need > limit {
                parts.push(std::mem::take(&mut part));
                used = 0;
                part.lines.push(line);
                used += len;
            } else {
                part.lines.push(line);
                used += need;
            }
        }
        if !part.lines.is_empty() {
            parts.push(part);
        }
        parts
    }
}

/// Cuts `text` into pieces whose rendered size stays within `limit`, preferring to break after
/// a space.
fn cut(text: &str, limit: usize, cost: impl Fn(char) -> usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut piece = String::new();
    let mut used = 0;
    let mut last_space: Option<(usize, usize)> = None; // byte index after the space, used there
    for c in text.chars() {
        let n = cost(c);
        if used + n > limit && !piece.is_empty() {
            match last_space {
                Some((at, used_there)) if at < piece.len() => {
                    let rest = piece.split_off(at);
                    pieces.push(std::mem::replace(&mut piece, rest));
                    used -= used_there;
                }
                _ => {
                    pieces.push(std::mem::take(&mut piece));
                    used = 0;
                }
            }
            last_space = None;
        }
        piece.push(c);
        used += n;
        if c == ' ' {
            last_space = Some((piece.len(), used));
        }
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

/// The markup a channel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    Plain,
    /// Telegram's HTML parse mode (also the body of the email's HTML part).
    Html,
    /// Slack's mrkdwn.
    Slack,
    /// Discord's Markdown.
    Discord,
}

impl Markup {
    fn line(self, spans: &[Span]) -> String {
        spans.iter().map(|s| self.span(s)).collect()
    }

    fn span(self, span: &Span) -> String {
        use Markup::*;
        match (self, span) {
            (Plain, s) => s.plain(),
            (_, Span::Text(t)) => self.text(t),
            (Html, Span::Bold(t)) => format!("<b>{}</b>", html(t)),
            (Html, Span::Code(t)) => format!("<code>{}</code>", html(t)),
            (Html, Span::Link { text, url }) => {
                format!("<a href=\"{}\">{}</a>", html_attr(url), html(text))
            }
            (Slack, Span::Bold(t)) => format!("*{}*", slack(t)),
            (Slack, Span::Code(t)) => format!("`{}`", slack(&t.replace('`', "'"))),
            (Slack, Span::Link { text, url }) => {
                format!("<{}|{}>", slack(url), slack(&text.replace('|', "/")))
            }
            (Discord, Span::Bold(t)) => format!("**{}**", discord(t)),
            (Discord, Span::Code(t)) => format!("`{}`", t.replace('`', "'")),
            (Discord, Span::Link { text, url }) => {
                format!(
                    "[{}](<{}>)",
                    discord(text),
                    url.replace(['<', '>', ' '], "")
                )
            }
        }
    }

    /// Plain text escaped for this markup.
    fn text(self, t: &str) -> String {
        match self {
            Markup::Plain => t.to_string(),
            Markup::Html => html(t),
            Markup::Slack => slack(t),
            Markup::Discord => discord(t),
        }
    }
}

/// The three characters Telegram's HTML mode (and HTML itself) reads as markup.
pub fn html(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html_attr(t: &str) -> String {
    html(t).replace('"', "&quot;")
}

/// Slack asks for exactly these three to be escaped; `*` and `_` inside words are left alone
/// by its parser.
fn slack(t: &str) -> String {
    html(t)
}

/// Discord's Markdown: a backslash before any punctuation it could read as markup.
fn discord(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '<' | '[' | ']' | '(' | ')' | '#' | '@'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Telegram counts a message's length in UTF-16 code units.
pub fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Doc {
        let mut d = Doc::default();
        d.push(vec![
            Span::Bold("✅ app deployed".into()),
            Span::text(" — a <b> & c_d *e*"),
        ]);
        d.push(vec![
            Span::text("Run: "),
            Span::Link {
                text: "x".into(),
                url: "https://e.x/?a=1&b=\"2\"".into(),
            },
        ]);
        d
    }

    #[test]
    fn html_escapes_the_three() {
        assert_eq!(
            doc().render(Markup::Html),
            "<b>✅ app deployed</b> — a &lt;b&gt; &amp; c_d *e*\n\
             Run: <a href=\"https://e.x/?a=1&amp;b=&quot;2&quot;\">x</a>"
        );
    }

    #[test]
    fn other_markups() {
        assert_eq!(doc().plain(), "✅ app deployed — a <b> & c_d *e*\nRun: x");
        assert!(doc()
            .render(Markup::Slack)
            .starts_with("*✅ app deployed* — a &lt;b&gt; &amp; c_d *e*"));
        assert!(doc()
            .render(Markup::Discord)
            .starts_with(r"**✅ app deployed** — a \<b\> & c\_d \*e\*"));
    }

    #[test]
    fn newlines_in_spans_become_lines() {
        let mut d = Doc::default();
        d.push(vec![Span::text("a: "), Span::Code("x\ny".into())]);
        assert_eq!(d.lines.len(), 2);
        assert_eq!(d.plain(), "a: x\ny");
    }

    #[test]
    fn split_keeps_everything_on_line_boundaries() {
        let mut d = Doc::default();
        for i in 0..100 {
            d.push(vec![Span::Bold(format!("line {i} <&>"))]);
        }
        let parts = d.split(Markup::Html, 200, utf16_len);
        assert!(parts.len() > 1);
        for p in &parts {
            assert!(utf16_len(&p.render(Markup::Html)) <= 200);
        }
        let joined: Vec<String> = parts.iter().map(Doc::plain).collect();
        assert_eq!(joined.join("\n"), d.plain());
    }

    #[test]
    fn a_line_longer_than_the_limit_is_cut_not_dropped() {
        let long = "word&<> ".repeat(100);
        let d = Doc::from_text(&format!("head\n{long}\ntail"));
        let parts = d.split(Markup::Html, 50, utf16_len);
        let mut text = String::new();
        for p in &parts {
            let rendered = p.render(Markup::Html);
            assert!(utf16_len(&rendered) <= 50, "{rendered}");
            text.push_str(&p.plain());
        }
        assert_eq!(text.replace('\n', ""), format!("head{long}tail"));
    }
}
