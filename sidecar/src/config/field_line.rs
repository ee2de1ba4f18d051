//! Where a field is in a YAML document: the line of a path such as
//! `spec.flags[beta].defaultVariant` or `spec.rules[0].key[1].name`, for errors found in values
//! after parsing (flagd's checks, the CRD's bounds), which serde_yaml's own errors cannot
//! locate. The document is read again with saphyr's event parser, which gives every event's
//! position.

use saphyr_parser::{Event, Parser, Span};

/// A parsed document, with the line (1-based) of each mapping key and sequence item.
enum Node {
    Map(Vec<(String, usize, Node)>),
    Seq(Vec<(usize, Node)>),
    Leaf,
}

/// The line (1-based, within `text`) where `path` is: the line of its last key or item, or of
/// the deepest part found when the rest is absent (a missing field: its parent). `None` when
/// the document does not parse or not even the first part is there.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let mut parser = Parser::new_from_str(text);
    let root = loop {
        match parser.next()?.ok()? {
            (Event::MappingStart(..) | Event::SequenceStart(..), _) => {
                break node(&mut parser, true)?;
            }
            (Event::StreamEnd, _) => return None,
            _ => {}
        }
    };
    let (mut here, mut line) = (&root, None);
    for part in segments(path) {
        let found = match here {
            Node::Map(entries) => entries
                .iter()
                .find(|(key, ..)| *key == part)
                .map(|(_, line, node)| (*line, node)),
            Node::Seq(items) => part
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .map(|(line, node)| (*line, node)),
            Node::Leaf => None,
        };
        let Some((at, node)) = found else { break };
        (here, line) = (node, Some(at));
    }
    line
}

/// The node whose start event was just read (`map`: a mapping, else a sequence).
fn node(parser: &mut Parser<'_, impl saphyr_parser::Input>, map: bool) -> Option<Node> {
    let mut entries = Vec::new();
    let mut items = Vec::new();
    loop {
        let (event, span) = parser.next()?.ok()?;
        match event {
            Event::MappingEnd | Event::SequenceEnd => break,
            _ if map => {
                let key = match event {
                    Event::Scalar(key, ..) => key.into_owned(),
                    _ => String::new(), // a complex key: never on a field path
                };
                let (value, value_span) = parser.next()?.ok()?;
                entries.push((key, line(span), child(parser, value, value_span)?));
            }
            _ => items.push((line(span), child(parser, event, span)?)),
        }
    }
    Some(if map {
        Node::Map(entries)
    } else {
        Node::Seq(items)
    })
}

fn child(
    parser: &mut Parser<'_, impl saphyr_parser::Input>,
    event: Event<'_>,
    _span: Span,
) -> Option<Node> {
    match event {
        Event::MappingStart(..) => node(parser, true),
        Event::SequenceStart(..) => node(parser, false),
        _ => Some(Node::Leaf),
    }
}

fn line(span: Span) -> usize {
    span.start.line()
}

/// `a.b[c.d][0].e` → `a`, `b`, `c.d`, `0`, `e` (a bracketed key may hold dots).
fn segments(path: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '.' => parts.extend((!current.is_empty()).then(|| std::mem::take(&mut current))),
            '[' => {
                parts.extend((!current.is_empty()).then(|| std::mem::take(&mut current)));
                parts.push(chars.by_ref().take_while(|c| *c != ']').collect());
            }
            _ => current.push(c),
        }
    }
    parts.extend((!current.is_empty()).then_some(current));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"apiVersion: bulwark.dev/v1alpha1
kind: FeatureFlag
metadata:
  name: shop
spec:
  flags:
    new.checkout:
      state: ENABLED
      variants: {"on": true, "off": false}
      defaultVariant: maybe
  gates:
  - name: a
    flag: x
  - name: b
    allowedVariants: ["on"]
"#;

    #[test]
    fn the_line_of_a_field_is_its_key_or_item() {
        assert_eq!(
            line_of(DOC, "spec.flags[new.checkout].defaultVariant"),
            Some(10)
        );
        assert_eq!(line_of(DOC, "spec.flags[new.checkout].variants"), Some(9));
        assert_eq!(line_of(DOC, "spec.gates[1].allowedVariants"), Some(15));
        assert_eq!(line_of(DOC, "spec.gates[1]"), Some(14));
    }

    #[test]
    fn a_missing_field_points_at_its_deepest_parent() {
        assert_eq!(line_of(DOC, "spec.gates[1].flag"), Some(14));
        assert_eq!(line_of(DOC, "spec.selector"), Some(5));
        assert_eq!(line_of(DOC, "nothing.here"), None);
        assert_eq!(line_of("just: [unclosed", "just"), None);
    }

    #[test]
    fn paths_split_on_dots_and_brackets() {
        assert_eq!(
            segments("spec.flags[a.b].targeting"),
            ["spec", "flags", "a.b", "targeting"]
        );
        assert_eq!(
            segments("spec.rules[0].key[1].name"),
            ["spec", "rules", "0", "key", "1", "name"]
        );
    }
}
