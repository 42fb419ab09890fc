//! [`View`]: a presence room's members on every server as this server has told its
//! recipients, so that news is told only when it changes something, and what this
//! server missed (its pub/sub link was down) is told after one read of the room.

use std::{collections::HashMap, sync::Arc};

use super::{Member, PresenceKind};

/// The most news held while a read of the room is out. Past it the held news is
/// dropped and the room is read again once the read out comes back: the second read
/// has what the dropped news said.
pub(crate) const MAX_HELD: usize = 8192;

/// A change to tell the room's recipients.
pub(crate) type News = (PresenceKind, Arc<Member>);

/// What one server knows of a presence room's members. A pure type: the broker feeds
/// it news from the backplane and the answers of its reads, and tells what it returns.
#[derive(Debug, Default)]
pub(crate) struct View {
    members: HashMap<Arc<str>, Arc<Member>>,
    /// The room was read once: news is measured against `members`. Before that,
    /// news is held for the first read.
    known: bool,
    /// A read is out; news waits in `held`.
    reading: bool,
    held: Vec<News>,
    /// Held news past [`MAX_HELD`] was dropped: nothing more is held for this read.
    overflowed: bool,
    /// Read again once the read out comes back: news was dropped, or a read was
    /// wanted while this one was out.
    reread: bool,
}

impl View {
    /// Whether a read should be sent now: one is wanted (the first, or after a lost
    /// link) and none is out. Marks it out. When one is out already, another follows
    /// it: the one out may have run before what made this one wanted.
    pub(crate) fn start_read(&mut self) -> bool {
        if self.reading {
            self.reread = true;
            return false;
        }
        self.reading = true;
        true
    }

    /// Whether a read is out (news is held for it).
    pub(crate) fn is_reading(&self) -> bool {
        self.reading
    }

    /// Whether the room was read once.
    pub(crate) fn is_known(&self) -> bool {
        self.known
    }

    /// A join or leave from the backplane: what to tell now (nothing when it changes
    /// nothing: a join of a member already known, a leave of one not known).
    pub(crate) fn news(&mut self, kind: PresenceKind, member: Arc<Member>) -> Option<News> {
        if self.reading || !self.known {
            if self.held.len() >= MAX_HELD {
                self.held.clear();
                self.overflowed = true;
                self.reread = true;
            }
            if !self.overflowed {
                self.held.push((kind, member));
            }
            return None;
        }
        self.apply(kind, member)
    }

    fn apply(&mut self, kind: PresenceKind, member: Arc<Member>) -> Option<News> {
        let changed = match kind {
            PresenceKind::Join => self
                .members
                .insert(member.client().clone(), member.clone())
                .is_none(),
            PresenceKind::Leave => self.members.remove(member.client()).is_some(),
        };
        changed.then_some((kind, member))
    }

    /// A read came back with the room's members: what changed since the last view
    /// (nothing on the first read: recipients ask `presence` after they join), then
    /// the news held meanwhile, each told only if it still changes something.
    /// Answers the news to tell, and whether to read again.
    pub(crate) fn read(&mut self, members: Vec<Arc<Member>>) -> (Vec<News>, bool) {
        let fresh: HashMap<Arc<str>, Arc<Member>> = members
            .into_iter()
            .map(|m| (m.client().clone(), m))
            .collect();
        let mut told = Vec::new();
        if self.known {
            for (client, member) in &self.members {
                if !fresh.contains_key(client) {
                    told.push((PresenceKind::Leave, member.clone()));
                }
            }
            for (client, member) in &fresh {
                if !self.members.contains_key(client) {
                    told.push((PresenceKind::Join, member.clone()));
                }
            }
        }
        self.members = fresh;
        self.known = true;
        self.reading = false;
        self.overflowed = false;
        for (kind, member) in std::mem::take(&mut self.held) {
            told.extend(self.apply(kind, member));
        }
        (told, std::mem::take(&mut self.reread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::MemberInfo;

    fn member(client: &str) -> Arc<Member> {
        let info = MemberInfo {
            client: client.into(),
            user: None,
            info: None,
        };
        Arc::new(Member::new(&info, "s"))
    }

    fn clients(news: &[News]) -> Vec<(PresenceKind, String)> {
        let mut named: Vec<_> = news
            .iter()
            .map(|(kind, m)| (*kind, m.client().to_string()))
            .collect();
        named.sort_by(|a, b| a.1.cmp(&b.1));
        named
    }

    use PresenceKind::{Join, Leave};

    #[test]
    fn news_is_told_once_and_only_when_it_changes_the_view() {
        let mut view = View::default();
        assert!(
            view.news(Join, member("early")).is_none(),
            "held for the first read"
        );
        assert!(view.start_read());
        let (told, reread) = view.read(vec![member("a")]);
        assert_eq!(
            clients(&told),
            [(Join, "early".into())],
            "the first read tells only held news"
        );
        assert!(!reread);
        assert!(
            view.news(Join, member("a")).is_none(),
            "a second join of a known member"
        );
        assert!(
            view.news(Leave, member("b")).is_none(),
            "a leave of an unknown member"
        );
        assert!(view.news(Leave, member("a")).is_some());
        assert!(view.news(Leave, member("a")).is_none());
    }

    #[test]
    fn a_read_after_a_lost_link_tells_what_was_missed_and_held_news_in_turn() {
        let mut view = View::default();
        view.start_read();
        view.read(vec![member("a"), member("b")]);
        // The link is lost: b left and c joined meanwhile, unseen. The read is out
        // when d joins and b's leave comes late.
        assert!(view.start_read());
        assert!(
            !view.start_read(),
            "one read out at a time (and another after it)"
        );
        assert!(view.news(Join, member("d")).is_none());
        assert!(view.news(Leave, member("b")).is_none());
        let (told, _) = view.read(vec![member("a"), member("c")]);
        assert_eq!(
            clients(&told),
            [(Leave, "b".into()), (Join, "c".into()), (Join, "d".into())],
            "b's late leave is not told twice"
        );
    }

    #[test]
    fn held_news_past_the_bound_makes_the_room_read_again() {
        let mut view = View::default();
        view.start_read();
        for n in 0..=MAX_HELD {
            view.news(Join, member(&n.to_string()));
        }
        let (told, reread) = view.read(Vec::new());
        assert!(told.is_empty() && reread, "dropped news: read again");
        view.start_read();
        let (told, reread) = view.read(vec![member("0")]);
        assert_eq!(clients(&told), [(Join, "0".into())]);
        assert!(!reread);
    }
}
