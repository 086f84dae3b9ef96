//! Exactly-once, in-order delivery per conversation (guarantee 4, PROTOCOL.md §7.4): drop
//! what was delivered, hold what is past a gap, fetch the gap, and keep the unread count
//! that follows from what the app has been given. No I/O: requests go out through the
//! parent's queues.
use super::*;

/// Per-conversation delivery state (guarantee 4).
#[derive(Debug, Default)]
pub(super) struct ConvState {
    /// Every event up to here has been given to the app, none after.
    pub(super) delivered: Seq,
    /// The highest seq known to exist.
    pub(super) highest_seen: Seq,
    /// Events past a gap, waiting for it to fill.
    pub(super) pending: BTreeMap<Seq, pb::ConversationEvent>,
    pub(super) fetching: bool,
    pub(super) fetch_not_before: Millis,
    /// First seen live at an event that does not begin this member's view of it (with
    /// several nodes, a later event committed on this node can overtake earlier ones from
    /// another): where the view begins is learnt from the first gap page.
    pub(super) start_unknown: bool,
    /// Members' (delivered, read) cursors, where receipts are kept.
    pub(super) receipts: BTreeMap<UserId, (Seq, Seq)>,
    /// This user's read cursor.
    pub(super) read: Seq,
    /// The server's unread count as of `unread_as_of`.
    pub(super) unread_base: u32,
    pub(super) unread_as_of: Seq,
    /// Others' messages delivered after `unread_as_of`.
    pub(super) unread_new: BTreeSet<Seq>,
}

impl ConvState {
    /// Capped like the server's count (`MAX_UNREAD_COUNT`). O(1): `unread_new` holds only
    /// seqs past the read cursor ([`ConvState::advance_read`] drops the rest), so its
    /// length is the count. (Counting a range of it on every event cost a member of a busy
    /// group it never read up to 1,000 steps per message: a third of the benchmark's
    /// client CPU.)
    pub(super) fn unread(&self) -> u32 {
        let cap = crate::limits::MAX_UNREAD_COUNT;
        (self.unread_base.saturating_add(self.unread_new.len() as u32)).min(cap)
    }

    /// Move this user's read cursor forward (never back); what it passes is read.
    pub(super) fn advance_read(&mut self, seq: Seq) {
        if seq > self.read {
            self.read = seq;
            self.unread_new = self.unread_new.split_off(&Seq(seq.0.saturating_add(1)));
        }
    }

    /// Note another's message after the server's count; only the newest `cap + 1` are
    /// kept (older ones could only matter above the cap).
    pub(super) fn add_unread(&mut self, seq: Seq) {
        self.unread_new.insert(seq);
        if self.unread_new.len() > crate::limits::MAX_UNREAD_COUNT as usize + 1 {
            self.unread_new.pop_first();
        }
    }

    /// A fresh count from the server, valid as of `as_of`.
    pub(super) fn set_unread(&mut self, count: u32, as_of: Seq) {
        if as_of >= self.unread_as_of {
            self.unread_base = count;
            self.unread_as_of = as_of;
            self.unread_new.retain(|s| *s > as_of);
        }
    }
}

impl ClientSession {
    pub(super) fn on_gap_page(&mut self, c: ConversationId, result: Result<Res, ServerError>) {
        match result {
            Ok(Res::History(page)) => {
                let mut removed = None;
                if let Some(st) = self.convs.get_mut(&c) {
                    st.fetching = false;
                    st.highest_seen = st.highest_seen.max(Seq(page.last_seq));
                    // Retention removed the events up to `removed_through` (PROTOCOL.md
                    // §5.17): that range is not a gap to wait for. The view goes on after it,
                    // and the app hears of the removal once.
                    let floor = Seq(page.removed_through);
                    if floor > st.delivered {
                        st.delivered = floor;
                        st.start_unknown = false;
                        st.pending.retain(|s, _| *s > floor);
                        removed = Some(floor);
                    }
                    if std::mem::take(&mut st.start_unknown) {
                        // The member's view begins at the page's first event (or, if the
                        // page is empty, at the first event held).
                        let first = page
                            .events
                            .first()
                            .map(|e| Seq(e.seq))
                            .or_else(|| st.pending.keys().next().copied());
                        if let Some(first) = first {
                            st.delivered = st.delivered.max(Seq(first.0.saturating_sub(1)));
                        }
                        if page.events.is_empty() {
                            if let Some((_, held)) = st.pending.pop_first() {
                                self.on_event(held);
                            }
                        }
                    }
                }
                if let Some(through) = removed {
                    self.events.push_back(SessionEvent::HistoryRemoved {
                        conversation_id: c,
                        through,
                    });
                }
                for ev in page.events {
                    if ev.conversation_id == c.0 {
                        self.on_event(ev);
                    }
                }
                if removed.is_some() {
                    self.release_pending(c);
                }
            }
            Err(e)
                if matches!(
                    e.code,
                    pb::ErrorCode::NotMember | pb::ErrorCode::NotFound | pb::ErrorCode::Forbidden
                ) =>
            {
                // No longer ours to read: forget it.
                self.convs.remove(&c);
            }
            _ => {
                let retry = self.deadline(Timer::GapFetchRetry);
                if let Some(st) = self.convs.get_mut(&c) {
                    st.fetching = false;
                    st.fetch_not_before = retry;
                }
            }
        }
    }

    /// Hand the app the held events that now follow on from what it was given.
    fn release_pending(&mut self, c: ConversationId) {
        let mut ready = Vec::new();
        if let Some(st) = self.convs.get_mut(&c) {
            while let Some(next) = st.pending.remove(&st.delivered.next()) {
                st.delivered = st.delivered.next();
                ready.push(next);
            }
        }
        for ev in ready {
            self.deliver(ev);
        }
    }

    /// Guarantee 4: give the app each `(conversation, seq)` once, in order, fetching gaps.
    pub(super) fn on_event(&mut self, ev: pb::ConversationEvent) {
        match &mut self.phase {
            Phase::Ready { .. } => {}
            Phase::Connecting { early, .. } => {
                if early.len() < self.config.max_early_events {
                    early.push(ev);
                }
                return;
            }
            // No connection, so no stream an event could have come on: nothing to hold.
            Phase::Disconnected => return,
        }
        let seq = Seq(ev.seq);
        if seq.0 == 0 {
            return;
        }
        // A conversation seen for the first time live starts at this event if the event
        // begins this member's view (its creation, or this user being added); otherwise
        // what came before is fetched from the start of the view.
        let me = self.identity.as_ref().map(|i| i.0);
        let st = self.convs.entry(ConversationId(ev.conversation_id)).or_insert_with(|| {
            let starts = seq.0 == 1 || begins_membership(&ev, me);
            let base = if starts { Seq(seq.0 - 1) } else { Seq(0) };
            ConvState {
                delivered: base,
                highest_seen: base,
                start_unknown: !starts,
                ..Default::default()
            }
        });
        if seq <= st.delivered {
            return;
        }
        st.highest_seen = st.highest_seen.max(seq);
        let mut ready = Vec::new();
        if seq == st.delivered.next() {
            st.delivered = seq;
            ready.push(ev);
            while let Some(next) = st.pending.remove(&st.delivered.next()) {
                st.delivered = st.delivered.next();
                ready.push(next);
            }
        } else if st.pending.len() < self.config.max_pending_per_conversation {
            st.pending.insert(seq, ev);
        }
        // Anything at or below `delivered` is no longer pending.
        let delivered = st.delivered;
        st.pending.retain(|s, _| *s > delivered);
        for ev in ready {
            self.deliver(ev);
        }
    }

    /// With [`crate::session::SessionConfig::ack_by_app`]: the app is done with
    /// conversation `conv` up to `seq` (what those events changed is written); the
    /// delivery acknowledgement goes out.
    pub fn acknowledge(&mut self, now: Millis, conv: ConversationId, seq: Seq) {
        self.now = now;
        self.ack_later(conv, seq);
        if self.ready() {
            self.flush();
        }
    }

    /// Hand one in-order event to the app, updating what it implies: membership for
    /// receipts, unread counts, and the delivery ack to send.
    pub(super) fn deliver(&mut self, ev: pb::ConversationEvent) {
        use pb::conversation_event::Body;
        let me = self.identity.as_ref().map(|i| i.0);
        let conv = ConversationId(ev.conversation_id);
        let seq = Seq(ev.seq);
        let mut unread_changed = false;
        // Their message ends their typing indicator.
        let sender = UserId(ev.sender_user_id);
        let stopped_typing =
            matches!(ev.body, Some(Body::Message(_))) && self.typing_shown.remove(&(conv, sender)).is_some();
        let typing_stopped = SessionEvent::TypingStopped {
            conversation_id: conv,
            user_id: sender,
        };
        if let Some(st) = self.convs.get_mut(&conv) {
            let mine = me == Some(UserId(ev.sender_user_id));
            let add = |st: &mut ConvState, members: &[pb::Member]| {
                for m in members {
                    st.receipts.entry(UserId(m.user_id)).or_default();
                }
            };
            match &ev.body {
                Some(Body::Message(_)) if mine => {
                    // Sending reads the conversation up to one's own message.
                    st.advance_read(seq);
                    st.set_unread(0, seq);
                    unread_changed = true;
                }
                Some(Body::Message(_)) => {
                    if !self.config.ack_by_app {
                        // `ack_later`, spelt out: `st` holds a borrow of `self.convs`.
                        let e = self.to_ack.entry(conv).or_default();
                        *e = (*e).max(seq);
                        self.ack_due.get_or_insert(self.now.plus(self.config.ack_delay_ms));
                    }
                    if seq > st.unread_as_of && seq > st.read {
                        st.add_unread(seq);
                        unread_changed = true;
                    }
                }
                Some(Body::Created(c)) if c.kind != pb::ConversationKind::Channel as i32 => add(st, &c.members),
                Some(Body::MembersAdded(m)) if !st.receipts.is_empty() => add(st, &m.members),
                Some(Body::MemberRemoved(m)) => {
                    st.receipts.remove(&UserId(m.user_id));
                }
                _ => {}
            }
            if unread_changed {
                let (read_seq, unread_count) = (st.read, st.unread());
                self.events.push_back(SessionEvent::Event(ev));
                self.events.push_back(SessionEvent::Unread {
                    conversation_id: conv,
                    read_seq,
                    unread_count,
                });
                if stopped_typing {
                    self.events.push_back(typing_stopped);
                }
                return;
            }
        }
        self.events.push_back(SessionEvent::Event(ev));
        if stopped_typing {
            self.events.push_back(typing_stopped);
        }
    }
}

/// Whether `ev` is where `me`'s view of its conversation begins: `me` being added.
fn begins_membership(ev: &pb::ConversationEvent, me: Option<UserId>) -> bool {
    use pb::conversation_event::Body;
    match (&ev.body, me) {
        (Some(Body::MembersAdded(m)), Some(me)) => m.members.iter().any(|m| m.user_id == me.0),
        _ => false,
    }
}
