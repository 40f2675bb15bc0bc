//! Request path normalisation (SPEC §8): percent-encoded unreserved characters
//! decoded, dot-segments removed (RFC 3986 §5.2.4), repeated slashes merged.
//! `%2F` and `%5C` stay encoded. A path that climbs above `/`, or has a `%` that is not
//! followed by two hex digits, is an error (400).
//!
//! ```
//! use nexus_core::path::normalize;
//! assert_eq!(normalize("/api//v1/./users/../items").unwrap(), "/api/v1/items");
//! assert_eq!(normalize("/%7Euser/a%2Fb").unwrap(), "/~user/a%2Fb");
//! assert!(normalize("/../etc/passwd").is_err());
//! ```

use std::borrow::Cow;

/// The path cannot be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// `..` segments climb above the root.
    #[error("path climbs above '/'")]
    AboveRoot,
    /// A `%` not followed by two hex digits. Kept, it could join with what follows once
    /// that is decoded (`/%%36%31dmin` would become `/%61dmin`, which the upstream reads as
    /// `/admin` while the route was chosen for another path): refused, as nginx does.
    #[error("invalid percent-encoding")]
    BadEscape,
}

/// Normalise a request path; borrows when it is already normal (the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    remove_dots(&decoded).map(Cow::Owned)
}

fn is_normal(p: &[u8]) -> bool {
    let mut prev_slash = false;
    let mut i = 0;
    while i < p.len() {
        let b = p[i];
        match b {
            b'%' => return false,
            b'/' => {
                if prev_slash {
                    return false;
                }
                prev_slash = true;
            }
            b'.' if prev_slash => {
                // "/." or "/.." followed by '/' or end.
                let rest = &p[i..];
                if rest == b"." || rest.starts_with(b"./") || rest == b".." || rest.starts_with(b"../") {
                    return false;
                }
                prev_slash = false;
            }
            _ => prev_slash = false,
        }
        i += 1;
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let p = path.as_bytes();
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%'
            && i + 2 < p.len()
            && let (Some(h), Some(l)) = (hex(p[i + 1]), hex(p[i + 2]))
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(c as char);
            } else {
                // Keep reserved and other octets encoded, with upper-case hex (RFC 3986 §6.2.2.1).
                out.push('%');
                out.push(char::from(p[i + 1]).to_ascii_uppercase());
                out.push(char::from(p[i + 2]).to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        if p[i] == b'%' {
            return Err(PathError::BadEscape);
        }
        // Safe: we only split at ASCII bytes, so whole UTF-8 sequences are copied.
        let start = i;
        i += 1;
        while i < p.len() && p[i] != b'%' {
            i += 1;
        }
        out.push_str(&path[start..i]);
    }
    Ok(out)
}

fn remove_dots(path: &str) -> Result<String, PathError> {
    let mut stack: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" | "." => trailing_slash = i == last,
            ".." => {
                if stack.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                stack.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &stack {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stray_percent_is_refused_so_decoding_cannot_forge_an_escape() {
        // Found by `fuzz/path_normalize`: "/%%37A%55/" became "/%7AU/", which decodes again to "/zU/".
        for bad in ["/%%37A%55/", "/%%36%31dmin", "/a%", "/a%4", "/%zz", "/%%"] {
            assert_eq!(normalize(bad), Err(PathError::BadEscape), "{bad}");
        }
        assert_eq!(normalize("/a%25b").unwrap(), "/a%25b", "an encoded '%' stays encoded");
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/api/v1/users", "/a/b/", "/.well-known/x", "/a.b/c..d", "/a/.hidden"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn rfc3986_dot_segments_and_slashes() {
        let cases = [
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/../../c", "/c"),
            ("/a/%2e%2E/b", "/b"),
            ("/%41%62c", "/Abc"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%5Cb", "/a%5Cb"),
            // A stray '%' is refused (see `a_stray_percent_is_refused...`).
            ("/50%", ""),
            ("/%zz", ""),
            ("/é/%C3%A9", "/é/%C3%A9"),
            ("/..", ""),
        ];
        for (input, want) in cases {
            match normalize(input) {
                Ok(got) => assert_eq!(got, want, "{input}"),
                Err(e) => assert_eq!(want, "", "{input}: {e}"),
            }
        }
    }

    #[test]
    fn climbing_above_root_is_an_error() {
        assert_eq!(normalize("/a/../../b"), Err(PathError::AboveRoot));
        assert_eq!(normalize("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }
}
