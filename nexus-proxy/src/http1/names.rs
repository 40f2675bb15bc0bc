//! Header names parsed once per connection.
//!
//! A peer sends the same field names in the same order, message after message (a client's
//! `Host`, `User-Agent`, `Accept`…; an upstream's `Content-Type`, `Content-Length`…). A name
//! spelled exactly as the one at the same place in the previous head is taken from there:
//! comparing the bytes costs a fraction of parsing the name again.

use http::header::{HeaderName, InvalidHeaderName};

/// The field names of the previous head on a connection, as sent and as parsed.
#[derive(Debug, Default)]
pub(crate) struct FieldNames {
    names: Vec<(Box<[u8]>, HeaderName)>,
}

impl FieldNames {
    /// The name of the field at place `i` of a head, spelled `raw`. Within a head, call it
    /// for places 0, 1, 2… in order.
    pub(crate) fn name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        if let Some((seen, name)) = self.names.get(i)
            && **seen == *raw
        {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw)?;
        let entry = (Box::from(raw), name.clone());
        let len = self.names.len();
        if i < len {
            self.names[i] = entry;
        } else if i == len {
            // Places before `i` all have an entry (called in order), so this one is next;
            // out of order, it is simply not kept.
            self.names.push(entry);
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_head_not_the_cache() {
        let mut names = FieldNames::default();
        let head = |names: &mut FieldNames, fields: &[&str]| -> Vec<String> {
            fields.iter().enumerate().map(|(i, f)| names.name(i, f.as_bytes()).unwrap().to_string()).collect()
        };
        assert_eq!(head(&mut names, &["Host", "X-A", "Accept"]), ["host", "x-a", "accept"]);
        assert_eq!(head(&mut names, &["HOST", "X-B", "Accept", "X-C"]), ["host", "x-b", "accept", "x-c"]);
        assert_eq!(head(&mut names, &["x-c"]), ["x-c"]);
        // Out of order: answered, not kept.
        assert_eq!(names.name(9, b"X-Far").unwrap(), "x-far");
        assert_eq!(head(&mut names, &["x-c", "X-B"]), ["x-c", "x-b"]);
    }
}
