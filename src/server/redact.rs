//! Paths out of messages: error texts from the filesystem name server paths that are nobody's business
//! outside the server; the server's state, handlers and jobs pass messages through [`redact_paths`].

/// Replaces absolute server paths in a message by short placeholders (`<state>/…`, `<data>/…`): error texts
/// from the filesystem name paths that are nobody's business outside the server.
pub fn redact_paths(message: &str, roots: &[(&std::path::Path, &str)]) -> String {
    let mut out = message.to_string();
    for (root, name) in roots {
        let r = root.to_string_lossy();
        if r.len() > 1 {
            out = out.replace(r.as_ref(), name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_redacted() {
        let roots = [(std::path::Path::new("/srv/state"), "<state>")];
        assert_eq!(
            redact_paths("cannot read /srv/state/tmp/x/config.json", &roots),
            "cannot read <state>/tmp/x/config.json"
        );
    }
}
