//! Room patterns (PROTOCOL.md §6): `:`-separated segments where `*` matches one
//! whole non-empty segment and a trailing `**` matches one or more segments. Used
//! by tokens' grants and by `DURABLE_ROOMS`.

use crate::Room;

/// A room pattern: `:`-separated segments where `*` matches one whole non-empty
/// segment and a trailing `**` matches one or more segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
    tail: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

impl Pattern {
    /// Parses a pattern; `None` for one that can match nothing (an empty segment,
    /// `**` anywhere but at the end), which is then ignored.
    pub fn parse(pattern: &str) -> Option<Pattern> {
        let mut parts: Vec<&str> = pattern.split(':').collect();
        let tail = parts.last() == Some(&"**");
        if tail {
            parts.pop();
        }
        let segments = parts
            .into_iter()
            .map(|part| match part {
                "*" => Some(Segment::Any),
                "**" => None,
                literal if Room::is_segment(literal) => Some(Segment::Literal(literal.to_owned())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Pattern { segments, tail })
    }

    /// Whether `room` matches.
    pub fn matches(&self, room: &str) -> bool {
        let mut parts = room.split(':');
        let fixed_fit = self.segments.iter().all(|segment| match parts.next() {
            Some(part) if !part.is_empty() => match segment {
                Segment::Any => true,
                Segment::Literal(literal) => literal == part,
            },
            _ => false,
        });
        // What is left: nothing, or with a trailing `**` one or more non-empty segments.
        let mut rest = parts.peekable();
        let rest_fit = if self.tail {
            rest.peek().is_some() && rest.all(|part| !part.is_empty())
        } else {
            rest.next().is_none()
        };
        fixed_fit && rest_fit
    }
}
