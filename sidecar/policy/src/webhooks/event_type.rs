//! Which event types an endpoint receives: exact names (`invoice.paid`), a trailing wildcard
//! (`invoice.*`: `invoice.paid`, `invoice.line.added`, not `invoice` itself) or `*` for all.
//! An empty list means every type, as in Svix.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventTypes {
    /// Exact names.
    exact: Vec<String>,
    /// Wildcard prefixes, kept with their trailing dot (`invoice.`).
    prefixes: Vec<String>,
    all: bool,
}

impl EventTypes {
    /// `patterns` as the CRD's schema admits them (checked there; anything else is exact).
    pub fn new(patterns: &[String]) -> Self {
        let mut types = Self {
            all: patterns.is_empty(),
            ..Self::default()
        };
        for pattern in patterns {
            if pattern == "*" {
                types.all = true;
            } else if let Some(prefix) = pattern.strip_suffix('*') {
                types.prefixes.push(prefix.to_owned());
            } else {
                types.exact.push(pattern.clone());
            }
        }
        types
    }

    pub fn matches(&self, event_type: &str) -> bool {
        self.all
            || self.exact.iter().any(|e| e == event_type)
            || self
                .prefixes
                .iter()
                .any(|p| event_type.len() > p.len() && event_type.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(patterns: &[&str]) -> EventTypes {
        EventTypes::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn empty_and_star_match_everything() {
        assert!(types(&[]).matches("anything.at.all"));
        assert!(types(&["invoice.paid", "*"]).matches("user.created"));
    }

    #[test]
    fn exact_names_match_only_themselves() {
        let t = types(&["invoice.paid"]);
        assert!(t.matches("invoice.paid"));
        assert!(!t.matches("invoice.paid.late"));
        assert!(!t.matches("invoice"));
    }

    #[test]
    fn a_wildcard_matches_below_its_prefix_only() {
        let t = types(&["invoice.*"]);
        assert!(t.matches("invoice.paid"));
        assert!(t.matches("invoice.line.added"));
        assert!(!t.matches("invoice"));
        assert!(!t.matches("invoice."));
        assert!(!t.matches("invoices.paid"));
    }
}
