//! Names the operator gives: the tenant's name on its node, and the Kubernetes names and
//! label values of what it creates. Each is a pure function of the custom resource, so a
//! reconcile that runs again finds the same objects.

/// The longest tenant name a node accepts (`[A-Za-z0-9_.-]{1,64}`).
pub const MAX_TENANT_NAME: usize = 64;
/// The longest DNS label (RFC 1123), and the longest label value.
pub const MAX_LABEL: usize = 63;

/// The tenant's name on its node: `NAMESPACE.NAME`, so that objects of the same name in two
/// namespaces never meet on one node. Past 64 characters it is cut and given a hash of the
/// whole, which keeps it unique.
pub fn tenant_name(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    shorten(&full, MAX_TENANT_NAME)
}

/// `base` made a DNS label (RFC 1123, as a Service, a Pod or a label value needs): lowercase
/// letters, digits and `-`, starting with a letter (a Service's name must, RFC 1035), ending
/// with a letter or digit, at most 63 characters; a hash of `base` is added when anything was
/// changed or cut, so that two bases never give one label.
pub fn dns_label(base: &str) -> String {
    let mut s: String = base
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert(0, 'x');
    }
    let clean = s == base && !s.ends_with('-') && s.len() <= MAX_LABEL;
    if clean {
        return s;
    }
    // The hash is of the base as given, so `a.b` and `a-b` stay apart.
    let tail = format!("-{:08x}", crc32fast::hash(base.as_bytes()));
    s.truncate(MAX_LABEL - tail.len());
    let s = s.trim_end_matches('-');
    format!("{s}{tail}")
}

/// `base` with `-suffix`, kept a DNS label.
pub fn dns_label_with(base: &str, suffix: &str) -> String {
    dns_label(&format!("{base}-{suffix}"))
}

/// `s` if it fits in `max` characters, else its start, `-` and a hash of the whole.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let tail = format!("-{:08x}", crc32fast::hash(s.as_bytes()));
    let mut head: String = s.chars().take(max - tail.len()).collect();
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}{tail}")
}

/// Whether `s` is a DNS label as [`dns_label`] makes them.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `s` is a name a node accepts for a tenant.
pub fn is_tenant_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TENANT_NAME
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_clean_names_are_kept() {
        assert_eq!(tenant_name("ml", "mnist"), "ml.mnist");
        assert_eq!(dns_label("mnist"), "mnist");
        assert_eq!(dns_label_with("mnist", "0"), "mnist-0");
    }

    #[test]
    fn changed_names_carry_a_hash_that_keeps_them_apart() {
        let a = dns_label("a.b");
        let b = dns_label("a-b");
        assert_ne!(a, b);
        assert!(a.starts_with("a-b-"), "{a}");
        assert_eq!(dns_label("a-b"), "a-b");
        assert!(dns_label("7up").starts_with("x7up-"));
        let long = "n".repeat(200);
        assert_eq!(dns_label(&long).len(), MAX_LABEL);
        let t = tenant_name("team-a", &long);
        assert_eq!(t.len(), MAX_TENANT_NAME);
        assert_ne!(t, tenant_name("team-b", &long));
    }

    proptest! {
        #[test]
        fn every_name_is_valid(ns in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
                               name in "[a-z0-9]([-.a-z0-9]{0,252})?") {
            prop_assert!(is_tenant_name(&tenant_name(&ns, &name)));
            prop_assert!(is_dns_label(&dns_label(&name)), "{}", dns_label(&name));
            prop_assert!(is_dns_label(&dns_label_with(&name, "15")));
        }
    }
}
