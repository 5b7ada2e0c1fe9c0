//! What this replica knows of sessions other replicas hold (`[cluster]`): their `hello`
//! (labels and verbs, so scopes, selectors and schemas work here) and which session is
//! current (so the event stream reports its end once).

use agentmesh_protocol::HelloFrame;

use super::Registry;

impl Registry {
    /// The `hello` of a session another replica holds (`[cluster]`): label scopes and
    /// selectors here match its labels, and its verbs' schemas are known before a command is
    /// routed. Only for agents this replica knows (enrolled), and never over a session held
    /// here unless `superseding` (that session is being closed for the newer one). With
    /// `session_id` (an `attached` announcement, not a fleet gather) the event stream here
    /// says `agent_connected` too. Returns whether it was applied.
    pub fn set_remote_hello(
        &self,
        mut hello: HelloFrame,
        superseding: bool,
        session_id: Option<&str>,
    ) -> bool {
        let mut agents = self.lock();
        let Some(record) = agents.get_mut(&hello.agent_id) else {
            return false;
        };
        if record.session.is_some() && !superseding {
            return false;
        }
        // What only the holder needs.
        hello.pending_results = Vec::new();
        hello.nonce = None;
        if let Some(session) = session_id {
            record.remote_session = Some(session.to_owned());
            self.events
                .agent_connected(Some(&hello), &record.merged_labels(), "");
        }
        record.hello = Some(hello);
        true
    }

    /// A fleet gather found `id` held elsewhere in session `session_id`: remembered (without
    /// an event) so that session's end is reported here, if no session is known yet.
    pub fn note_remote_session(&self, id: &str, session_id: &str) {
        if let Some(record) = self.lock().get_mut(id) {
            if record.session.is_none() && record.remote_session.is_none() {
                record.remote_session = Some(session_id.to_owned());
            }
        }
    }

    /// Another replica announced the end of its session `session_id` of `id`: the event
    /// stream here says `agent_disconnected`, unless a newer session (here or elsewhere)
    /// was announced since.
    pub fn remote_detached(&self, id: &str, session_id: &str) {
        let mut agents = self.lock();
        let Some(record) = agents.get_mut(id) else {
            return;
        };
        if record.session.is_none() && record.remote_session.as_deref() == Some(session_id) {
            record.remote_session = None;
            self.events.agent_disconnected(id, "session_closed");
        }
    }

    /// The last `hello` of `id` (for announcing it to other replicas).
    pub fn hello(&self, id: &str) -> Option<HelloFrame> {
        self.lock().get(id).and_then(|r| r.hello.clone())
    }
}
